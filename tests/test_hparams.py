"""The typed hyperparameter readers of the core (src/cpp/core/hparams.cpp): one per file kind, each key
read by one policy (the GGUF key, else config.json's, else the key's fallback), checked against the
tensors when a file is opened, so that a file that contradicts itself is a ModelFileError naming
the key and the tensor rather than a crash inside ggml; every model built from one open GGUFFile."""
from __future__ import annotations

import json
import math
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from _lm_gguf import tiny_lm, write_lm
from _text_gguf import randomize, write_text_encoder
from conftest import fresh_seed
from fixtures import AUDIO_CODES, FSQ_LEVELS, QWEN3_VOCAB
from transformers import Qwen3Config, Qwen3Model

from acestep_ggml import InputError, ModelFileError, _core

V = gguf.GGUFValueType


def _files(folder: Path) -> dict[str, Path]:
    """{architecture: path} of a folder of converted GGUFs."""
    return {_core.GGUFFile(str(p)).architecture: p for p in sorted(Path(folder).glob("*.gguf"))}


def _rewrite(src: Path, dst: Path, drop=(), keys=None, config=None, tensors=None) -> Path:
    """A copy of the F32 GGUF `src` without the metadata keys in `drop`, with `keys` set
    ({key: (value, GGUFValueType)}), its config.json passed through `config` (dict -> dict) and
    the tensors in `tensors` ({name: array}) replaced."""
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), r.fields["general.architecture"].contents())
    keys = dict(keys or {})
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", *drop) or name in keys:
            continue
        value = f.contents()
        if name == "acestep.config_json" and config is not None:
            value = json.dumps(config(json.loads(value)))
        w.add_key_value(name, value, f.types[0], sub_type=f.types[-1] if f.types[0] == V.ARRAY else None)
    for name, (value, vtype) in keys.items():
        w.add_key_value(name, value, vtype, sub_type=V.INT32 if vtype == V.ARRAY else None)
    for t in r.tensors:
        w.add_tensor(t.name, np.ascontiguousarray((tensors or {}).get(t.name, t.data)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


@pytest.fixture(scope="module")
def synth(synth_models):
    """(torch models, {architecture: F32 GGUF path})."""
    models, _, out, _ = synth_models
    return models, _files(out["f32"])


def _text_file(path: Path) -> Path:
    seed = fresh_seed("text encoder")
    cfg = Qwen3Config(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
                      rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    torch.manual_seed(seed)
    write_text_encoder(path, randomize(Qwen3Model(cfg), seed))
    return path


def _lm_file(path: Path) -> Path:
    write_lm(path, tiny_lm(fresh_seed("lm"), vocab=300), tokenizer=False)
    return path


def test_each_kind_reads_its_keys_from_one_table():
    kinds = {"acestep-dit": "acestep-dit.", "acestep-text-enc": "acestep-text-enc.", "acestep-lm": "acestep-lm.",
             "acestep-vae": None}
    for kind, prefix in kinds.items():
        table = _core.hparam_keys(kind)
        assert table, kind
        for gguf_key, type_name, config_key, fallback, value in table:
            assert type_name in ("u32", "f32", "bool", "int_array", "str_list")
            assert gguf_key or config_key
            assert gguf_key is None or gguf_key.startswith((prefix or "-", "acestep."))
            assert fallback in ("default", "derived", "absent")
            assert (value is None) == (fallback == "absent")
    dit = {k[2]: k for k in _core.hparam_keys("acestep-dit")}
    # acestep.cpp writes acestep.is_turbo only when true: absent is false.
    assert dit["is_turbo"] == ("acestep.is_turbo", "bool", "is_turbo", "default", False)
    assert dit["fsq_input_levels"][4] == FSQ_LEVELS
    assert dit["hidden_size"][:2] == ("acestep-dit.embedding_length", "u32")
    assert {k[2] for k in _core.hparam_keys("acestep-vae")} >= {"sampling_rate", "downsampling_ratios"}
    with pytest.raises(InputError, match="acestep-dit, acestep-text-enc"):
        _core.hparam_keys("llama")


def test_hparams_of_converted_files_are_their_configs(synth):
    models, files = synth
    cfg = models.dit_config
    h = _core.GGUFFile(str(files["acestep-dit"])).hparams
    assert isinstance(h, _core.DiTHParams)
    assert (h.is_turbo, h.shift) == (True, None)
    assert h.has_decoder and h.has_encoder and h.has_tokenizer and h.has_detokenizer
    assert (h.hidden_size, h.intermediate_size, h.num_hidden_layers) == (
        cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"])
    assert (h.num_attention_heads, h.num_key_value_heads, h.head_dim) == (
        cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"])
    assert (h.sliding_window, h.layer_types) == (cfg["sliding_window"], cfg["layer_types"])
    assert (h.num_lyric_encoder_hidden_layers, h.num_timbre_encoder_hidden_layers) == (
        cfg["num_lyric_encoder_hidden_layers"], cfg["num_timbre_encoder_hidden_layers"])
    assert (h.in_channels, h.audio_acoustic_hidden_dim, h.latent_channels, h.patch_size) == (192, 64, 64, 2)
    assert (h.fsq_input_levels, h.codebook_size, h.pool_window_size) == (FSQ_LEVELS, math.prod(FSQ_LEVELS), 5)
    assert h.num_attention_pooler_hidden_layers == h.num_detokenizer_hidden_layers == cfg[
        "num_attention_pooler_hidden_layers"]
    assert (h.rms_norm_eps, h.rope_theta) == (pytest.approx(1e-6), 1e6)
    assert h.encoder_hidden_size == h.hidden_size and h.timbre_fix_frame == 750 and h.silence_frames == 15000

    v = _core.GGUFFile(str(files["acestep-vae"])).hparams
    assert (v.sampling_rate, v.downsampling_ratios, v.hop_length, v.latents_per_second) == (200, [2, 4], 8, 25.0)
    assert (v.latent_channels, v.audio_channels, v.has_encoder) == (64, 2, True)

    t = _core.GGUFFile(str(files["acestep-text-enc"])).hparams
    assert isinstance(t, _core.TextEncHParams) and not isinstance(t, _core.LMHParams)
    assert (t.vocab_size, t.hidden_size) == (QWEN3_VOCAB, cfg["text_hidden_dim"])
    lm = _core.GGUFFile(str(files["acestep-lm"])).hparams
    assert lm.vocab_size == QWEN3_VOCAB + AUDIO_CODES
    assert lm.tie_word_embeddings == models.lm.config.tie_word_embeddings
    assert lm.num_hidden_layers == models.lm.config.num_hidden_layers


def test_every_model_is_built_from_one_open_file(synth):
    _, files = synth
    dit, text = _core.GGUFFile(str(files["acestep-dit"])), _core.GGUFFile(str(files["acestep-text-enc"]))
    models = [_core.DiT(dit), _core._ConditionEncoder(dit, text, "cpu", 1), _core._Detokenizer(dit, "cpu", 1),
              _core._AudioTokenizer(dit, "cpu", 1)]
    for m in models:
        assert m.hparams.layer_types == dit.hparams.layer_types
    assert models[1].text_hparams.vocab_size == text.hparams.vocab_size
    assert _core._TextEncoder(text, "cpu", 1).hparams.hidden_size == text.hparams.hidden_size
    assert _core.VAE(_core.GGUFFile(str(files["acestep-vae"]))).hparams.hop_length == 8
    lm = _core.GGUFFile(str(files["acestep-lm"]))
    assert _core._LM(lm, "cpu", 1).hparams.vocab_size == lm.hparams.vocab_size
    # The same numbers from the shared file as from the path.
    codes = np.random.default_rng(fresh_seed()).integers(0, math.prod(FSQ_LEVELS), 3)
    np.testing.assert_array_equal(models[2].decode(codes),
                                  _core._Detokenizer(str(files["acestep-dit"]), "cpu", 1).decode(codes))


def test_keys_a_file_leaves_out_fall_back_as_the_table_says(synth, tmp_path):
    _, files = synth
    src = files["acestep-dit"]
    full = _core.GGUFFile(str(src)).hparams
    keys = [k for k in _core.GGUFFile(str(src)).metadata() if k.startswith(("acestep.", "acestep-dit."))]
    bare = _core.GGUFFile(str(_rewrite(src, tmp_path / "bare.gguf", drop=keys))).hparams
    assert (bare.is_turbo, bare.sliding_window, bare.pool_window_size, bare.fsq_input_levels) == (
        False, 128, 5, FSQ_LEVELS)
    assert bare.layer_types == ["sliding_attention" if i % 2 == 0 else "full_attention"
                                for i in range(full.num_hidden_layers)]
    for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "in_channels", "patch_size", "text_hidden_dim",
                 "timbre_hidden_dim", "num_lyric_encoder_hidden_layers", "fsq_dim"):
        assert getattr(bare, name) == getattr(full, name), name
    _core.DiT(str(tmp_path / "bare.gguf"))  # builds from the tensors alone
    # As acestep.cpp writes it: no acestep.is_turbo when false; config.json says nothing more.
    plain = _rewrite(src, tmp_path / "plain.gguf", drop=["acestep.is_turbo"],
                     config=lambda c: {k: v for k, v in c.items() if k != "is_turbo"})
    assert _core.GGUFFile(str(plain)).hparams.is_turbo is False


@pytest.mark.parametrize("key, value, config_drop, tensor", [
    ("acestep-dit.attention.head_count", 8, (), "decoder.layers.0.self_attn.q_proj.weight"),
    ("acestep-dit.feed_forward_length", 160, (), "decoder.layers.0.mlp.gate_proj.weight"),
    ("acestep-dit.block_count", 5, ("layer_types",), "decoder.layers.4.self_attn.q_proj.weight"),
    ("acestep.text_hidden_dim", 48, (), "encoder.text_projector.weight"),
    ("acestep.fsq_input_levels", [8, 8, 8, 5, 5], (), "tokenizer.quantizer.project_in.weight"),
])
def test_a_key_its_tensors_contradict_names_both(synth, tmp_path, key, value, config_drop, tensor):
    _, files = synth
    vtype = V.ARRAY if isinstance(value, list) else V.UINT32
    path = _rewrite(files["acestep-dit"], tmp_path / "bad.gguf", keys={key: (value, vtype)},
                    config=lambda c: {k: v for k, v in c.items() if k not in config_drop})
    with pytest.raises(ModelFileError) as e:
        _ = _core.GGUFFile(str(path)).hparams
    assert key in str(e.value) and tensor in str(e.value) and str(path) in str(e.value)
    # Before any weight is loaded or graph built, from every model of the file.
    with pytest.raises(ModelFileError, match=tensor):
        _core._Detokenizer(str(path), "cpu", 1)


def test_a_stated_encoder_width_its_tensors_contradict_names_both(synth, tmp_path):
    """XL states the condition encoder's width (acestep.encoder_hidden_size); tensors of another
    width are a file error naming the key and a tensor, before any weight loads."""
    _, files = synth
    path = _rewrite(files["acestep-dit"], tmp_path / "xl.gguf", keys={"acestep.encoder_hidden_size": (32, V.UINT32)})
    with pytest.raises(ModelFileError, match=r"acestep\.encoder_hidden_size") as e:
        _core.DiT(str(path))
    assert "tensor '" in str(e.value) and str(path) in str(e.value)


def test_a_stated_encoder_width_turns_on_the_timbre_cls_token(synth, tmp_path):
    """As acestep.cpp (0308fa5, src/cond-enc.h) tells XL: by a stated encoder_hidden_size; 2B
    files hold encoder.timbre_encoder.special_token too, unused."""
    _, files = synth
    assert _core.GGUFFile(str(files["acestep-dit"])).hparams.timbre_cls is False
    width = _core.GGUFFile(str(files["acestep-dit"])).hparams.encoder_hidden_size
    path = _rewrite(files["acestep-dit"], tmp_path / "xl.gguf",
                    keys={"acestep.encoder_hidden_size": (width, V.UINT32)})
    assert _core.GGUFFile(str(path)).hparams.timbre_cls is True
    # Then the CLS token must have the encoder's width.
    bad = _rewrite(files["acestep-dit"], tmp_path / "bad.gguf", keys={"acestep.encoder_hidden_size": (width, V.UINT32)},
                   tensors={"encoder.timbre_encoder.special_token": np.zeros((1, 1, 7), np.float32)})
    with pytest.raises(ModelFileError, match=r"tensor 'encoder\.timbre_encoder\.special_token' has shape"):
        _ = _core.GGUFFile(str(bad)).hparams


@pytest.mark.parametrize("kind", ["text", "lm"])
@pytest.mark.parametrize("key, value", [("attention.layer_norm_rms_epsilon", float("nan")),
                                        ("attention.layer_norm_rms_epsilon", -1e-6),
                                        ("rope.freq_base", float("inf")), ("rope.freq_base", 0.0)])
def test_non_finite_or_non_positive_eps_and_rope_base_are_file_errors(tmp_path, kind, key, value):
    # A NaN epsilon aborted the text encoder and hung the LM.
    src = _text_file(tmp_path / "text.gguf") if kind == "text" else _lm_file(tmp_path / "lm.gguf")
    arch = _core.GGUFFile(str(src)).architecture
    path = _rewrite(src, tmp_path / "bad.gguf", keys={f"{arch}.{key}": (value, V.FLOAT32)})
    make = _core._TextEncoder if kind == "text" else _core._LM
    with pytest.raises(ModelFileError, match=f"{arch}.{key}"):
        make(str(path), "cpu", 1)


def test_qwen3_sizes_must_match_the_tensors(tmp_path):
    src = _lm_file(tmp_path / "lm.gguf")
    path = _rewrite(src, tmp_path / "vocab.gguf", keys={"acestep-lm.vocab_size": (301, V.UINT32)})
    with pytest.raises(ModelFileError, match="model.embed_tokens.weight.*acestep-lm.vocab_size"):
        _core._LM(str(path), "cpu", 1)
    path = _rewrite(src, tmp_path / "heads.gguf", keys={"acestep-lm.attention.head_count_kv": (3, V.UINT32)})
    with pytest.raises(ModelFileError, match="acestep-lm.attention.head_count = 4 is not a multiple of "
                                             "acestep-lm.attention.head_count_kv = 3"):
        _core._LM(str(path), "cpu", 1)
    src = _text_file(tmp_path / "text.gguf")
    path = _rewrite(src, tmp_path / "layers.gguf", keys={"acestep-text-enc.block_count": (1, V.UINT32)})
    with pytest.raises(ModelFileError, match="acestep-text-enc.block_count = 1, but tensor 'layers.1.self_attn"):
        _core._TextEncoder(str(path), "cpu", 1)


def test_vae_config_must_match_its_convolutions(synth, tmp_path):
    _, files = synth
    src = files["acestep-vae"]
    path = _rewrite(src, tmp_path / "channels.gguf", config=lambda c: {**c, "decoder_channels": 16})
    with pytest.raises(ModelFileError, match="decoder.conv1.weight.*config.json's decoder_channels"):
        _core.VAE(str(path))
    # Without a config the defaults (ACE-Step 1.5's VAE) are what the tensors must match.
    path = _rewrite(src, tmp_path / "bare.gguf", drop=["acestep.config_json"])
    with pytest.raises(ModelFileError, match="decoder.conv1"):
        _ = _core.GGUFFile(str(path)).hparams
    path = _rewrite(src, tmp_path / "odd.gguf", config=lambda c: {**c, "downsampling_ratios": [2, 5]})
    with pytest.raises(ModelFileError, match="ratios must be even"):
        _core.VAE(str(path))


def test_a_file_of_another_kind_has_no_hparams(tmp_path):
    path = tmp_path / "llama.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("x", np.zeros(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelFileError, match="no hyperparameters for general.architecture 'llama'"):
        _ = _core.GGUFFile(str(path)).hparams
    with pytest.raises(ModelFileError, match="expected 'acestep-lm'"):
        _core._LM(_core.GGUFFile(str(path)), "cpu", 1)


def test_token_ids_are_checked_alike_by_every_binding(tmp_path):
    text = _core._TextEncoder(str(_text_file(tmp_path / "text.gguf")), "cpu", 1)
    lm = _core._LM(str(_lm_file(tmp_path / "lm.gguf")), "cpu", 1)
    lm.reset(1, 8)
    for call in (text.encode, text.embed, lambda ids: lm.prefill(0, ids)):
        with pytest.raises(InputError, match=r"token ids\[1\] = -1 is outside the vocabulary \[0, 300\)"):
            call(np.array([1, -1]))
        with pytest.raises(InputError, match=r"\[0\] = 300 is outside"):
            call([300])
        with pytest.raises(InputError, match=r"\[0\] = 4294967297 is outside"):  # no wrap to 1
            call(np.array([2**32 + 1]))
        with pytest.raises(InputError, match="must be integers"):
            call(np.array([1.0]))
        with pytest.raises(InputError, match="1-D"):
            call(np.zeros((1, 1), np.int64))
    with pytest.raises(InputError, match=r"tokens\[0\] = -5"):
        lm.decode([-5])
