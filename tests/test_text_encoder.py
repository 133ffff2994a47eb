"""Text encoder parity against transformers' Qwen3Model with random weights."""
import numpy as np
import pytest
import torch
from _text_gguf import parity, randomize, write_text_encoder
from conftest import COS_INT8_QWEN3, REL_INT8_QWEN3, fresh_seed
from transformers import Qwen3Config, Qwen3Model

import acestep_ggml

# F32 weights: only summation order and the F32 attention kernel differ from PyTorch.
COS_F32, REL_F32 = 0.9999, 1e-3
# BF16 weights vs the float32 reference: weight rounding to 8 mantissa bits (~0.4 % per weight).
COS_BF16, REL_BF16 = 0.999, 5e-2


def _model(seed):
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
                      rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    return randomize(Qwen3Model(cfg), seed)


@pytest.mark.parametrize("bf16", [False, True])
def test_text_encoder_matches_qwen3model(tmp_path, bf16, device, f32_rel):
    seed = fresh_seed()
    model = _model(seed)
    path = tmp_path / "text.gguf"
    write_text_encoder(path, model, bf16=bf16)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 300, size=int(rng.integers(20, 90)))
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids)[None]).last_hidden_state[0].numpy()
    enc = acestep_ggml.TextEncoder(path, device=device, n_threads=2)
    out = enc.encode(ids)
    assert out.shape == ref.shape
    cos, rel = parity(out, ref)
    cmin, rmax = (COS_BF16, REL_BF16) if bf16 else (COS_F32, f32_rel(REL_F32))
    assert cos >= cmin and rel <= rmax, f"seed {seed}: cos {cos:.6f} rel {rel:.2e}"
    emb = enc.embed(ids[:7])
    cos, rel = parity(emb, model.embed_tokens.weight.detach().numpy()[ids[:7]])
    assert cos >= cmin and rel <= rmax, f"seed {seed}: embedding cos {cos:.6f} rel {rel:.2e}"


def test_text_encoder_int8_matches_qwen3model(tmp_path, int8, device):
    """ACESTEP_GGML_INT8: the same parity, at the text encoder's int8 bars (conftest.py)."""
    seed = fresh_seed()
    model = _model(seed)
    path = tmp_path / "text.gguf"
    write_text_encoder(path, model)
    if not int8:
        with pytest.raises(acestep_ggml.DeviceError, match="ACESTEP_GGML_INT8"):
            acestep_ggml.TextEncoder(path, device=device, n_threads=2)
        return
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 300, size=int(rng.integers(20, 90)))
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids)[None]).last_hidden_state[0].numpy()
    cos, rel = parity(acestep_ggml.TextEncoder(path, device=device, n_threads=2).encode(ids), ref)
    print(f"int8 text encoder: seed {seed} cos {cos:.6f} rel {rel:.2e}")
    assert cos >= COS_INT8_QWEN3 and rel <= REL_INT8_QWEN3, f"seed {seed}: cos {cos:.6f} rel {rel:.2e}"


def test_text_encoder_rejects_bad_ids(tmp_path):
    path = tmp_path / "text.gguf"
    write_text_encoder(path, _model(0))
    enc = acestep_ggml.TextEncoder(path, n_threads=1)
    with pytest.raises(acestep_ggml.InputError, match=r"\[2\] = 300"):
        enc.encode([1, 2, 300])
    with pytest.raises(acestep_ggml.InputError, match="empty"):
        enc.encode([])
    with pytest.raises(acestep_ggml.InputError, match="1.5 at index 1"):
        enc.encode([1.0, 1.5])
    with pytest.raises(acestep_ggml.ModelFileError):
        acestep_ggml.TextEncoder(tmp_path / "missing.gguf")
