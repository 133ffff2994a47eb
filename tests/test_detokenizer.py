"""Detokenizer parity against diffusers (FSQ get_output_from_indices + AceStepAudioTokenDetokenizer)."""
import numpy as np
import pytest
import torch
from _text_gguf import dit_side_models, parity, write_dit
from conftest import COS_INT8, REL_INT8, fresh_seed

import acestep_ggml

# F32 weights: only summation order and the attention kernel differ from PyTorch.
COS_F32, REL_F32 = 0.9999, 1e-3
# BF16 weights vs the float32 reference: weight rounding to 8 mantissa bits.
COS_BF16, REL_BF16 = 0.999, 5e-2


def _file(tmp_path, seed, bf16):
    cond, tok, detok = dit_side_models(seed)
    write_dit(tmp_path / "dit.gguf", cond, tok, detok, window=cond.config.sliding_window, bf16=bf16)
    return tok, detok


@pytest.mark.parametrize("bf16", [False, True])
def test_detokenizer_matches_reference(tmp_path, bf16, device, f32_rel):
    seed = fresh_seed()
    tok, detok = _file(tmp_path, seed, bf16)
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 64000, size=int(rng.integers(1, 40)))
    codes[0] = 63999  # the largest code: every FSQ digit at its top level
    with torch.no_grad():
        q = tok.quantizer.get_output_from_indices(torch.from_numpy(codes)[None])
        ref = detok(q)[0].numpy()
    d = acestep_ggml.Detokenizer(tmp_path / "dit.gguf", device=device, n_threads=2)
    assert d.codebook_size == 64000
    out = d.decode(codes.tolist())
    assert out.shape == (5 * len(codes), 8)
    cos, rel = parity(out, ref)
    cmin, rmax = (COS_BF16, REL_BF16) if bf16 else (COS_F32, f32_rel(REL_F32))
    assert cos >= cmin and rel <= rmax, f"seed {seed}: cos {cos:.6f} rel {rel:.2e}"


def test_detokenizer_int8_matches_reference(tmp_path, int8, device):
    """ACESTEP_GGML_INT8: the same parity, at the int8 bars (conftest.COS_INT8, REL_INT8)."""
    seed = fresh_seed()
    tok, detok = _file(tmp_path, seed, False)
    if not int8:
        with pytest.raises(acestep_ggml.DeviceError, match="ACESTEP_GGML_INT8"):
            acestep_ggml.Detokenizer(tmp_path / "dit.gguf", device=device, n_threads=2)
        return
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 64000, size=int(rng.integers(1, 40)))
    with torch.no_grad():
        ref = detok(tok.quantizer.get_output_from_indices(torch.from_numpy(codes)[None]))[0].numpy()
    cos, rel = parity(acestep_ggml.Detokenizer(tmp_path / "dit.gguf", device=device, n_threads=2).decode(codes.tolist()), ref)
    print(f"int8 detokenizer: seed {seed} cos {cos:.6f} rel {rel:.2e}")
    assert cos >= COS_INT8 and rel <= REL_INT8, f"seed {seed}: cos {cos:.6f} rel {rel:.2e}"


def test_detokenizer_rejects_bad_codes(tmp_path):
    _file(tmp_path, 0, False)
    d = acestep_ggml.Detokenizer(tmp_path / "dit.gguf", n_threads=1)
    with pytest.raises(acestep_ggml.InputError, match="64000 at index 2"):
        d.decode([1, 2, 64000])
    with pytest.raises(acestep_ggml.InputError, match="-1 at index 0"):
        d.decode(np.array([-1, 5]))
    with pytest.raises(acestep_ggml.InputError, match="2.5 at index 1"):
        d.decode([1, 2.5])
    with pytest.raises(acestep_ggml.InputError, match="'7' at index 0"):
        d.decode(["7"])
    with pytest.raises(acestep_ggml.InputError, match="empty"):
        d.decode([])
