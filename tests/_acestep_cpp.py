"""Model folders as acestep.cpp's converter (its convert.py, ServeurpersoCom/acestep.cpp) writes
them from an original-layout checkpoint: the files users download.  Written here with the
gguf package from that converter's documented behaviour:

* the kind from the folder name (acestep-5Hz-lm*, acestep-v15*, Qwen3-Embedding*, vae), one
  ``<folder>-BF16.gguf`` each, ``general.architecture`` acestep-lm / -dit / -text-enc / -vae;
* the llama.cpp-style keys of config.json under the architecture, the DiT's acestep.* sizes,
  ``acestep.is_turbo`` and ``acestep.tie_word_embeddings`` only when true, the whole config as
  ``acestep.config_json``;
* the LM's and text encoder's tokenizer from vocab.json and merges.txt alone;
* tensors under their checkpoint names (the LM's prefixed ``model.`` where missing), BF16 and
  F16 as stored, F32 truncated to BF16; the DiT's silence latent as F32 [15000, 64].
"""
from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch
from fixtures import add_published_tokenizer
from safetensors import safe_open

ARCH = {"lm": "acestep-lm", "dit": "acestep-dit", "text-enc": "acestep-text-enc", "vae": "acestep-vae"}
DIT_KEYS = ("in_channels", "audio_acoustic_hidden_dim", "patch_size", "sliding_window", "fsq_dim", "text_hidden_dim",
            "timbre_hidden_dim", "num_lyric_encoder_hidden_layers", "num_timbre_encoder_hidden_layers",
            "num_audio_decoder_hidden_layers", "num_attention_pooler_hidden_layers", "encoder_hidden_size",
            "encoder_intermediate_size", "encoder_num_attention_heads", "encoder_num_key_value_heads")


def _kind(name: str) -> str | None:
    for prefix, kind in (("acestep-5Hz-lm", "lm"), ("acestep-v15", "dit"), ("Qwen3-Embedding", "text-enc")):
        if name.startswith(prefix):
            return kind
    return "vae" if name == "vae" else None


def _weights(folder: Path) -> list[Path]:
    for single in ("model.safetensors", "diffusion_pytorch_model.safetensors"):
        if (folder / single).exists():
            return [folder / single]
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    return [folder / f for f in sorted(set(index["weight_map"].values()))]


def _metadata(w: gguf.GGUFWriter, cfg: dict, kind: str) -> None:
    for key, add in (("num_hidden_layers", w.add_block_count), ("hidden_size", w.add_embedding_length),
                     ("intermediate_size", w.add_feed_forward_length), ("num_attention_heads", w.add_head_count),
                     ("num_key_value_heads", w.add_head_count_kv), ("head_dim", w.add_key_length),
                     ("vocab_size", w.add_vocab_size), ("max_position_embeddings", w.add_context_length),
                     ("rms_norm_eps", w.add_layer_norm_rms_eps)):
        if key in cfg:
            add(cfg[key])
    # Real checkpoints carry rope_theta at the top; transformers 5 saves it in rope_parameters.
    rope = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta")
    if rope:
        w.add_rope_freq_base(float(rope))
    if kind == "lm" and cfg.get("tie_word_embeddings"):
        w.add_bool("acestep.tie_word_embeddings", True)
    if kind == "dit":
        for key in DIT_KEYS:
            if key in cfg:
                w.add_uint32(f"acestep.{key}", cfg[key])
        if cfg.get("is_turbo"):
            w.add_bool("acestep.is_turbo", True)
        if cfg.get("fsq_input_levels"):
            w.add_array("acestep.fsq_input_levels", cfg["fsq_input_levels"])
    w.add_string("acestep.config_json", json.dumps(cfg, separators=(",", ":")))


def _add_tensors(w: gguf.GGUFWriter, path: Path, kind: str) -> None:
    with safe_open(str(path), framework="pt") as f:
        for name in sorted(f.keys()):
            t = f.get_tensor(name)
            out = "model." + name if kind == "lm" and not name.startswith("model.") else name
            if t.dtype == torch.bfloat16:
                w.add_tensor(out, t.view(torch.int16).numpy().view(np.uint16), raw_dtype=gguf.GGMLQuantizationType.BF16)
            elif t.dtype == torch.float16:
                w.add_tensor(out, t.numpy())
            else:  # F32: the upper 16 bits, a truncation to BF16
                bits = (t.float().contiguous().numpy().view(np.uint32) >> 16).astype(np.uint16)
                w.add_tensor(out, bits, raw_dtype=gguf.GGMLQuantizationType.BF16)


def convert_like_acestep_cpp(root: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        kind = _kind(folder.name)
        if kind is None or not (folder / "config.json").exists():
            continue
        cfg = json.loads((folder / "config.json").read_text())
        path = out / f"{folder.name}-BF16.gguf"
        w = gguf.GGUFWriter(str(path), ARCH[kind])
        w.add_name(folder.name)
        _metadata(w, cfg, kind)
        if kind in ("lm", "text-enc"):
            add_published_tokenizer(w, folder)
        for f in _weights(folder):
            _add_tensors(w, f, kind)
        if kind == "dit":
            latent = torch.load(folder / "silence_latent.pt").float().reshape(64, -1)
            w.add_tensor("silence_latent", np.ascontiguousarray(latent.T.numpy()))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        written.append(path)
    return written


def to_bf16_checkpoint(root: Path) -> None:
    """Every floating safetensors weight under ``root`` stored as BF16, in place: from such a
    checkpoint both converters write identical weights (no F32 truncation against rounding)."""
    from safetensors.torch import load_file, save_file

    for path in Path(root).rglob("*.safetensors"):
        state = load_file(str(path))
        save_file({k: v.bfloat16() if v.is_floating_point() else v for k, v in state.items()}, str(path),
                  metadata={"format": "pt"})
