"""Condition encoder parity against diffusers' AceStepConditionEncoder with random weights."""

import contextlib

import numpy as np
import pytest
import torch
from _text_gguf import dit_side_models, parity, randomize, write_dit, write_text_encoder
from conftest import COS_INT8, REL_INT8, fresh_seed
from transformers import Qwen3Config, Qwen3Model

import acestep_ggml

# F32 weights: only summation order and the attention kernel differ from PyTorch.
COS_F32, REL_F32 = 0.9999, 1e-3
# BF16 weights vs the float32 reference: weight rounding to 8 mantissa bits through 3 stacks.
COS_BF16, REL_BF16 = 0.999, 5e-2
VOCAB, TEXT_DIM, TIMBRE_DIM = 300, 32, 8


def _files(tmp_path, seed, bf16):
    cond, tok, detok = dit_side_models(seed, text_hidden_dim=TEXT_DIM, timbre_hidden_dim=TIMBRE_DIM)
    text = randomize(Qwen3Model(Qwen3Config(vocab_size=VOCAB, hidden_size=TEXT_DIM, intermediate_size=64,
                                            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                            head_dim=16)), seed)
    write_dit(tmp_path / "dit.gguf", cond, tok, detok, window=cond.config.sliding_window, bf16=bf16)
    write_text_encoder(tmp_path / "text.gguf", text, bf16=bf16)
    return cond, text


@pytest.mark.parametrize("bf16,padded,reference", [(False, False, False), (False, True, True), (True, True, False)])
def test_condition_encoder_matches_reference(tmp_path, bf16, padded, reference, device, f32_rel):
    seed = fresh_seed()
    cond, text = _files(tmp_path, seed, bf16)
    rng = np.random.default_rng(seed)
    tt, tl = int(rng.integers(5, 30)), int(rng.integers(20, 60))
    text_h = rng.standard_normal((tt, TEXT_DIM)).astype(np.float32)
    lyric_ids = rng.integers(0, VOCAB, size=tl)
    text_mask = np.ones(tt, bool)
    lyric_mask = np.ones(tl, bool)
    if padded:  # trailing padding, as a batch padded to its longest prompt has
        text_mask[tt - int(rng.integers(1, tt)):] = False
        lyric_mask[tl - int(rng.integers(1, tl - 1)):] = False
    refer = rng.standard_normal((int(rng.integers(10, 40)), TIMBRE_DIM)).astype(np.float32) if reference else None

    with torch.no_grad():
        lyric_h = text.embed_tokens(torch.from_numpy(lyric_ids)[None])
        ref_in = torch.from_numpy(refer)[None] if reference else cond.silence_latent[:, :750, :]
        states, mask = cond(text_hidden_states=torch.from_numpy(text_h)[None],
                            text_attention_mask=torch.from_numpy(text_mask)[None],
                            lyric_hidden_states=lyric_h, lyric_attention_mask=torch.from_numpy(lyric_mask)[None],
                            refer_audio_acoustic_hidden_states_packed=ref_in,
                            refer_audio_order_mask=torch.zeros(1, dtype=torch.long))

    enc = acestep_ggml.ConditionEncoder(tmp_path / "dit.gguf", tmp_path / "text.gguf", device=device, n_threads=2)
    out, out_mask = enc.encode(text_h, lyric_ids, refer, text_mask if padded else None,
                               lyric_mask if padded else None)
    assert out.shape == (tl + 1 + tt, cond.config.hidden_size), f"seed {seed}"
    np.testing.assert_array_equal(out_mask, mask[0].numpy(), err_msg=f"seed {seed}")
    cmin, rmax = (COS_BF16, REL_BF16) if bf16 else (COS_F32, f32_rel(REL_F32))
    # Rows the mask marks as padding are compared only where defined alike: a padded lyric
    # query whose whole sliding window is padding attends uniformly in PyTorch (finite dtype-min
    # mask) and over its raw scores here; the DiT never reads those rows as valid tokens.
    cos, rel = parity(out[out_mask], states[0].numpy()[out_mask])
    assert cos >= cmin and rel <= rmax, f"seed {seed}: packed states cos {cos:.6f} rel {rel:.2e}"
    tol = 1e-2 if bf16 else 0  # BF16 files round the table, F32 files hold it exactly
    np.testing.assert_allclose(enc.null_condition_emb, cond.null_condition_emb.detach().numpy().ravel(),
                               rtol=tol, atol=tol, err_msg=f"seed {seed}")
    np.testing.assert_array_equal(enc.silence_latent, cond.silence_latent[0].numpy())


def test_condition_encoder_int8_matches_reference(tmp_path, int8, device):
    """ACESTEP_GGML_INT8: the parity above (padded, with a timbre reference) at the int8 bars."""
    seed = fresh_seed()
    cond, text = _files(tmp_path, seed, False)
    if not int8:
        with pytest.raises(acestep_ggml.DeviceError, match="ACESTEP_GGML_INT8"):
            acestep_ggml.ConditionEncoder(tmp_path / "dit.gguf", tmp_path / "text.gguf", device=device, n_threads=2)
        return
    rng = np.random.default_rng(seed)
    tt, tl = int(rng.integers(5, 30)), int(rng.integers(20, 60))
    text_h = rng.standard_normal((tt, TEXT_DIM)).astype(np.float32)
    lyric_ids = rng.integers(0, VOCAB, size=tl)
    refer = rng.standard_normal((int(rng.integers(10, 40)), TIMBRE_DIM)).astype(np.float32)
    with torch.no_grad():
        states, mask = cond(text_hidden_states=torch.from_numpy(text_h)[None],
                            text_attention_mask=torch.ones(1, tt, dtype=torch.bool),
                            lyric_hidden_states=text.embed_tokens(torch.from_numpy(lyric_ids)[None]),
                            lyric_attention_mask=torch.ones(1, tl, dtype=torch.bool),
                            refer_audio_acoustic_hidden_states_packed=torch.from_numpy(refer)[None],
                            refer_audio_order_mask=torch.zeros(1, dtype=torch.long))
    enc = acestep_ggml.ConditionEncoder(tmp_path / "dit.gguf", tmp_path / "text.gguf", device=device, n_threads=2)
    out, out_mask = enc.encode(text_h, lyric_ids, refer)
    np.testing.assert_array_equal(out_mask, mask[0].numpy(), err_msg=f"seed {seed}")
    cos, rel = parity(out, states[0].numpy())
    print(f"int8 condition encoder: seed {seed} cos {cos:.6f} rel {rel:.2e}")
    assert cos >= COS_INT8 and rel <= REL_INT8, f"seed {seed}: cos {cos:.6f} rel {rel:.2e}"


def test_condition_encoder_rejects_bad_input(tmp_path):
    _files(tmp_path, 0, False)
    enc = acestep_ggml.ConditionEncoder(tmp_path / "dit.gguf", tmp_path / "text.gguf", n_threads=1)
    text_h = np.zeros((4, TEXT_DIM), np.float32)
    with pytest.raises(acestep_ggml.InputError, match=r"\[T, 32\]"):
        enc.encode(np.zeros((4, 7), np.float32), [1, 2])
    with pytest.raises(acestep_ggml.InputError, match=r"lyric token ids\[1\] = 999"):
        enc.encode(text_h, [1, 999])
    with pytest.raises(acestep_ggml.InputError, match="every token"):
        enc.encode(text_h, [1, 2], lyric_mask=[0, 0])
    with pytest.raises(acestep_ggml.InputError, match="reference latent"):
        enc.encode(text_h, [1, 2], refer_latent=np.zeros((5, 3), np.float32))
    with pytest.raises(acestep_ggml.ModelFileError, match="wrong kind"):
        acestep_ggml.ConditionEncoder(tmp_path / "text.gguf", tmp_path / "text.gguf")


@pytest.mark.parametrize("reference", [False, True], ids=["silence", "reference"])
def test_xl_condition_encoder_prepends_the_timbre_cls_token(synth_xl_models, reference, device, f32_rel):
    """XL: the condition encoder at its own width (narrower than the DiT) and the timbre encoder's
    learned CLS token as upstream's XL code prepends it.  diffusers 0.42.1 never prepends it, so
    the reference is diffusers' module wrapped to do what upstream does (fixtures.upstream_xl_timbre
    cites the upstream lines); unwrapped diffusers must then disagree on the timbre token, or the
    test would not see the CLS at all."""
    import fixtures

    models, _, folders, seed = synth_xl_models
    rng = np.random.default_rng(fresh_seed())
    cond, text = models.condition_encoder, models.text_encoder
    tt, tl = int(rng.integers(5, 30)), int(rng.integers(20, 60))
    text_h = rng.standard_normal((tt, text.config.hidden_size)).astype(np.float32)
    lyric_ids = rng.integers(0, 1000, size=tl)
    # Longer than the sliding window (16) so the CLS's sliding layers see only part of it.
    refer = rng.standard_normal((int(rng.integers(20, 60)), 64)).astype(np.float32) if reference else None

    def run(xl):
        with torch.no_grad(), (fixtures.upstream_xl_timbre(cond) if xl else contextlib.nullcontext()):
            ref_in = torch.from_numpy(refer)[None] if reference else cond.silence_latent[:, :750, :]
            states, _ = cond(text_hidden_states=torch.from_numpy(text_h)[None],
                             text_attention_mask=torch.ones(1, tt, dtype=torch.long),
                             lyric_hidden_states=text.embed_tokens(torch.from_numpy(lyric_ids)[None]),
                             lyric_attention_mask=torch.ones(1, tl, dtype=torch.long),
                             refer_audio_acoustic_hidden_states_packed=ref_in,
                             refer_audio_order_mask=torch.zeros(1, dtype=torch.long))
        return states[0].numpy()

    want, diffusers_plain = run(True), run(False)
    dit = next(folders["f32"].glob("acestep-v15-xl*.gguf"))
    assert acestep_ggml.GGUFFile(dit).hparams.timbre_cls
    enc = acestep_ggml.ConditionEncoder(dit, next(folders["f32"].glob("Qwen3-Embedding*.gguf")), device=device)
    out, _ = enc.encode(text_h, lyric_ids, refer)
    width = models.dit_config["encoder_hidden_size"]
    assert out.shape == (tl + 1 + tt, width) and width < models.dit_config["hidden_size"], f"seed {seed}"
    timbre = tl  # packed order: lyric, timbre, text (all valid)
    cos, rel = parity(out, want)
    # F32 on both sides: summation order only (as test_condition_encoder_matches_reference).
    assert cos >= COS_F32 and rel <= f32_rel(REL_F32), f"seed {seed}: cos {cos:.6f} rel {rel:.2e}"
    cos_t, rel_t = parity(out[timbre], want[timbre])
    assert cos_t >= COS_F32 and rel_t <= f32_rel(REL_F32), f"seed {seed}: timbre cos {cos_t:.6f} rel {rel_t:.2e}"
    _, rel_plain = parity(out[timbre], diffusers_plain[timbre])
    # Without the CLS the timbre token is another vector altogether (random weights: relative
    # difference of order 1); 0.1 is far above the F32 noise above.
    assert rel_plain > 0.1, f"seed {seed}: ours matches diffusers' CLS-less timbre token ({rel_plain:.2e})"
