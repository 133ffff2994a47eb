"""Tiny random reference models of the text side and GGUF files written from their state dicts
with the names, keys and types of the published files."""
from __future__ import annotations

import json

import gguf
import numpy as np
import torch

# diffusers' attention names -> the original checkpoint's names
_DIFFUSERS_TO_ORIGINAL = [(".to_q.", ".q_proj."), (".to_k.", ".k_proj."), (".to_v.", ".v_proj."),
                          (".to_out.0.", ".o_proj."), (".norm_q.", ".q_norm."), (".norm_k.", ".k_norm.")]


def original_name(name: str) -> str:
    for a, b in _DIFFUSERS_TO_ORIGINAL:
        name = name.replace(a, b)
    return name


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial weights everywhere (norms near 1, matrices scaled by fan-in)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return model.eval()


def _bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, rounded to nearest even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def _add(w: gguf.GGUFWriter, name: str, t: torch.Tensor, bf16: bool) -> None:
    a = t.detach().float().numpy()
    if bf16 and name != "silence_latent":
        w.add_tensor(name, _bf16_bits(a), raw_dtype=gguf.GGMLQuantizationType.BF16)
    else:
        w.add_tensor(name, a)


def _finish(w: gguf.GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def qwen3_writer(path, arch: str, c) -> gguf.GGUFWriter:
    """A GGUFWriter holding the standard Qwen3 keys of a transformers config, as the published files have them."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_uint32(f"{arch}.block_count", c.num_hidden_layers)
    w.add_uint32(f"{arch}.embedding_length", c.hidden_size)
    w.add_uint32(f"{arch}.feed_forward_length", c.intermediate_size)
    w.add_uint32(f"{arch}.attention.head_count", c.num_attention_heads)
    w.add_uint32(f"{arch}.attention.head_count_kv", c.num_key_value_heads)
    w.add_uint32(f"{arch}.attention.key_length", c.head_dim)
    w.add_uint32(f"{arch}.vocab_size", c.vocab_size)
    w.add_uint32(f"{arch}.context_length", c.max_position_embeddings)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", c.rms_norm_eps)
    w.add_float32(f"{arch}.rope.freq_base", float(c.rope_parameters["rope_theta"]))
    w.add_string("acestep.config_json", c.to_json_string(use_diff=False))
    return w


def write_text_encoder(path, model, bf16: bool = False, tokenizer_json: str | None = None,
                       tokens=None, merges=None) -> None:
    """A transformers Qwen3Model as an ``acestep-text-enc`` GGUF."""
    c = model.config
    w = qwen3_writer(path, "acestep-text-enc", c)
    if tokens is not None:
        w.add_string("tokenizer.ggml.model", "gpt2")
        w.add_array("tokenizer.ggml.tokens", list(tokens))
        w.add_array("tokenizer.ggml.merges", list(merges))
    if tokenizer_json is not None:
        w.add_string("tokenizer.huggingface.json", tokenizer_json)
    for name, t in model.state_dict().items():
        _add(w, name, t, bf16)
    _finish(w)


def write_dit(path, cond, tokenizer, detok, window: int, bf16: bool = False, eps: float = 1e-6,
              theta: float = 1e6) -> None:
    """diffusers' condition encoder, audio tokenizer and detokenizer as (part of) an
    ``acestep-dit`` GGUF with the original checkpoint's tensor names."""
    arch = "acestep-dit"
    w = gguf.GGUFWriter(str(path), arch)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", eps)
    w.add_float32(f"{arch}.rope.freq_base", theta)
    w.add_uint32("acestep.sliding_window", window)
    w.add_array("acestep.fsq_input_levels", list(tokenizer.config.fsq_input_levels or [8, 8, 8, 5, 5, 5]))
    w.add_string("acestep.config_json", json.dumps(dict(cond.config), separators=(",", ":"), default=str))
    for name, t in cond.state_dict().items():
        if name == "silence_latent":
            _add(w, name, t[0], bf16)  # (1, T, C) -> (T, C)
        elif name == "null_condition_emb":
            _add(w, name, t, bf16)
        else:
            _add(w, "encoder." + original_name(name), t, bf16)
    # Only the FSQ output projection: ggml's GGUF reader takes names of at most 63 bytes, and
    # tokenizer.attention_pooler.layers.N.post_attention_layernorm.weight is longer.
    for name, t in tokenizer.quantizer.project_out.state_dict().items():
        _add(w, "tokenizer.quantizer.project_out." + name, t, bf16)
    for name, t in detok.state_dict().items():
        _add(w, "detokenizer." + original_name(name), t, bf16)
    _finish(w)


def parity(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(cosine similarity, relative L2 error) over all values."""
    a = np.asarray(ours, dtype=np.float64).ravel()
    b = np.asarray(ref, dtype=np.float64).ravel()
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
    rel = float(np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-30))
    return cos, rel


TINY_DIT = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                sliding_window=8, rope_theta=1e6, rms_norm_eps=1e-6)


def dit_side_models(seed: int, text_hidden_dim: int = 32, timbre_hidden_dim: int = 8, lyric_layers: int = 3,
                    timbre_layers: int = 2, detok_layers: int = 2, with_cond: bool = True, **dims):
    """Random diffusers condition encoder (None unless with_cond), audio tokenizer and
    detokenizer of one config (TINY_DIT unless dims override it)."""
    from diffusers.pipelines.ace_step.modeling_ace_step import (
        AceStepAudioTokenDetokenizer,
        AceStepAudioTokenizer,
        AceStepConditionEncoder,
    )
    d = {**TINY_DIT, **dims}
    torch.manual_seed(seed)
    cond = AceStepConditionEncoder(text_hidden_dim=text_hidden_dim, timbre_hidden_dim=timbre_hidden_dim,
                                   num_lyric_encoder_hidden_layers=lyric_layers,
                                   num_timbre_encoder_hidden_layers=timbre_layers, **d) if with_cond else None
    tok = AceStepAudioTokenizer(audio_acoustic_hidden_dim=timbre_hidden_dim, fsq_dim=d["hidden_size"],
                                num_attention_pooler_hidden_layers=1, **d)
    detok = AceStepAudioTokenDetokenizer(audio_acoustic_hidden_dim=timbre_hidden_dim,
                                         num_attention_pooler_hidden_layers=detok_layers, **d)
    for i, m in enumerate((cond, tok, detok)):
        if m is not None:
            randomize(m, seed + i)
    if cond is not None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            cond.silence_latent.copy_(torch.randn(cond.silence_latent.shape, generator=g))
    return cond, tok, detok
