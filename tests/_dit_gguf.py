"""Tiny random ACE-Step DiTs (diffusers' AceStepTransformer1DModel) and their acestep-dit GGUFs.

The GGUF is written with gguf-py the way the published files are: original checkpoint names
(``decoder.*``), standard keys under ``acestep-dit.``, extras under ``acestep.`` and the
checkpoint's config.json as ``acestep.config_json``.
"""
from __future__ import annotations

import json

import gguf
import numpy as np
import torch
from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel

ARCH = "acestep-dit"

# Small but structurally real: alternating sliding/full layers, GQA, patch 2, 192 input
# channels, 64 audio channels; a window of 4 patches so that T > 2·window patches exercises it.
TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, in_channels=192, audio_acoustic_hidden_dim=64,
            patch_size=2, rope_theta=1000000.0, rms_norm_eps=1e-6, sliding_window=4)

_RENAMES = [(".to_q.", ".q_proj."), (".to_k.", ".k_proj."), (".to_v.", ".v_proj."), (".to_out.0.", ".o_proj."),
            (".norm_q.", ".q_norm."), (".norm_k.", ".k_norm."), ("proj_in_conv.", "proj_in.1."),
            ("proj_out_conv.", "proj_out.1.")]


def original_name(diffusers_name: str) -> str:
    name = "." + diffusers_name
    for a, b in _RENAMES:
        name = name.replace(a, b)
    return "decoder" + name


def tiny_dit(seed: int, **overrides) -> AceStepTransformer1DModel:
    """A tiny DiT whose every parameter is random (norm gains around 1, not exactly 1)."""
    cfg = dict(TINY, **overrides)
    cfg["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention"
                          for i in range(cfg["num_hidden_layers"])]
    torch.manual_seed(seed)
    model = AceStepTransformer1DModel(**cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or ".norm_" in name or "_norm." in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias") or "scale_shift_table" in name:
                p.copy_(0.2 * torch.randn_like(p))
    return model


def _bf16_bits(a: np.ndarray) -> np.ndarray:
    # Truncation, as the published files were made from F32 sources.
    return (np.ascontiguousarray(a, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


def bf16_round(a: np.ndarray) -> np.ndarray:
    """The float32 values a BF16 file holds for ``a``."""
    return (_bf16_bits(a).astype(np.uint32) << 16).view(np.float32)


def write_dit_gguf(model: AceStepTransformer1DModel, path: str, weight_type: str = "f32",
                   quantize=None) -> None:
    """Writes ``model`` as an acestep-dit GGUF.

    weight_type: "f32", "bf16" (every tensor BF16, like the published files) or a ggml
    quantized type name such as "q8_0" for the matmul weights (then ``quantize(array, type)``
    must return the encoded bytes, e.g. ``acestep_ggml._core.quantize``).
    """
    c = model.config
    config_json = {
        "model_type": "acestep", "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim, "in_channels": c.in_channels,
        "audio_acoustic_hidden_dim": c.audio_acoustic_hidden_dim, "patch_size": c.patch_size,
        "rope_theta": c.rope_theta, "rms_norm_eps": c.rms_norm_eps, "sliding_window": c.sliding_window,
        "layer_types": list(model.layer_types), "is_turbo": True,
    }
    w = gguf.GGUFWriter(path, ARCH)
    w.add_block_count(c.num_hidden_layers)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(c.head_dim)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_theta)
    w.add_string("acestep.config_json", json.dumps(config_json, separators=(",", ":")))
    for key in ("in_channels", "audio_acoustic_hidden_dim", "patch_size", "sliding_window"):
        w.add_uint32(f"acestep.{key}", int(getattr(c, key)))
    w.add_bool("acestep.is_turbo", True)

    for name, t in model.state_dict().items():
        a = t.detach().float().numpy()
        out = original_name(name)
        is_matmul = a.ndim == 2 and "layers." in name and "scale_shift" not in name
        if weight_type == "bf16":
            w.add_tensor(out, _bf16_bits(a), raw_shape=a.shape, raw_dtype=gguf.GGMLQuantizationType.BF16)
        elif weight_type != "f32" and is_matmul:
            qtype = gguf.GGMLQuantizationType[weight_type.upper()]
            raw = np.asarray(quantize(a, weight_type), dtype=np.uint8).reshape(a.shape[0], -1)
            w.add_tensor(out, raw, raw_dtype=qtype)
        else:
            w.add_tensor(out, np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
