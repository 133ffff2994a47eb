"""Checkpoint -> GGUF conversion: the original ACE-Step 1.5 layout, a diffusers pipeline,
or one component folder of either, to one GGUF per component in the published layout
(acestep.cpp's file names, metadata and original tensor names).

Every tensor is planned from the safetensors headers first, then converted and written
one chunk at a time, so memory stays near one chunk whatever the checkpoint size.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import _core
from ..errors import InputError, ModelFileError, ModelsNotFound
from .checkpoint import FLOAT_SOURCE_DTYPES, SafetensorsFile, as_f32, f32_to_bf16_bits, load_torch_tensor
from .gguf_writer import GGUFWriter, iter_rows
from .quantize import FLOAT_TYPES, QUANT_DTYPES, parallel_chunks, plan_types

# --dtype -> file name suffix.  The quantized types follow one table: quantize.plan_types.
DTYPES = {"bf16": "BF16", "f16": "F16", "f32": "F32"} | {k: v[0] for k, v in QUANT_DTYPES.items()}

ARCHITECTURES = {"dit": "acestep-dit", "vae": "acestep-vae", "text-enc": "acestep-text-enc", "lm": "acestep-lm"}

# Written as acestep.<key> (uint32) when the DiT config has them; the encoder_* keys
# only exist for the XL models, whose condition encoder is narrower than the DiT.
# diffusers splits the original AceStepConditionGenerationModel into sub-models; each
# gets back its original prefix.
DIFFUSERS_DIT_PARTS = {
    "transformer": "decoder",
    "condition_encoder": "encoder",
    "audio_tokenizer": "tokenizer",
    "audio_token_detokenizer": "detokenizer",
}
_ATTENTION_RENAMES = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out.0": "o_proj",
                      "norm_q": "q_norm", "norm_k": "k_norm"}
_ATTENTION_RE = re.compile(r"\.(self_attn|cross_attn)\.(to_q|to_k|to_v|to_out\.0|norm_q|norm_k)\.")

# A diffusers pipeline's text_encoder/ is ACE-Step's Qwen3-Embedding-0.6B; the GGUF
# keeps the published file name.
DIFFUSERS_TEXT_ENCODER = "Qwen3-Embedding-0.6B"


def original_dit_name(part: str, name: str) -> str:
    """The original checkpoint name of tensor `name` of diffusers sub-model `part`."""
    if part == "condition_encoder" and name in ("null_condition_emb", "silence_latent"):
        return name
    if part == "transformer":
        name = re.sub(r"^proj_in_conv\.", "proj_in.1.", name)
        name = re.sub(r"^proj_out_conv\.", "proj_out.1.", name)
    name = _ATTENTION_RE.sub(lambda m: f".{m.group(1)}.{_ATTENTION_RENAMES[m.group(2)]}.", "." + name)[1:]
    return f"{DIFFUSERS_DIT_PARTS[part]}.{name}"


# ---------------------------------------------------------------------------
# Components found in a source directory

@dataclass
class _Tensor:
    name: str  # in the GGUF
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]  # raw values: float, or uint16 BF16 bits


@dataclass
class Component:
    kind: str  # dit | vae | text-enc | lm
    name: str  # file stem and general.name, e.g. acestep-v15-turbo
    config: dict
    tensors: list[_Tensor] = field(default_factory=list)
    tokenizer_dirs: list[Path] = field(default_factory=list)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelsNotFound(f"{path}: missing") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ModelFileError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: not a JSON object")
    return data


def _weight_files(folder: Path) -> list[SafetensorsFile]:
    for stem in ("model", "diffusion_pytorch_model"):
        single = folder / f"{stem}.safetensors"
        if single.exists():
            return [SafetensorsFile(single)]
        index = folder / f"{stem}.safetensors.index.json"
        if index.exists():
            shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
            if not shards:
                raise ModelFileError(f"{index}: weight_map lists no shards")
            return [SafetensorsFile(folder / s) for s in shards]
    raise ModelsNotFound(f"{folder}: no model.safetensors, diffusion_pytorch_model.safetensors or sharded index")


def _tensors(files: list[SafetensorsFile], rename: Callable[[str], str]) -> list[_Tensor]:
    out = []
    for f in files:
        for name in sorted(f.entries, key=lambda n: f.entries[n][2]):
            if f.dtype(name) not in FLOAT_SOURCE_DTYPES:
                raise ModelFileError(f"{f.path}: tensor {name} has dtype {f.dtype(name)}; only float tensors convert")
            out.append(_Tensor(rename(name), f.shape(name), lambda f=f, name=name: f.raw(name)))
    return out


def _silence_latent(values: np.ndarray, channels_first: bool, source: Path) -> _Tensor:
    """(1, C, T) from silence_latent.pt or (1, T, C) from diffusers -> (T, C) float32."""
    if values.ndim != 3 or values.shape[0] != 1:
        raise ModelFileError(f"{source}: silence_latent has shape {values.shape}, expected (1, C, T) or (1, T, C)")
    sl = np.ascontiguousarray(values[0].T if channels_first else values[0], dtype=np.float32)
    return _Tensor("silence_latent", sl.shape, lambda: sl)


def _classify(folder: Path, config: dict) -> str | None:
    name = folder.name
    cls = config.get("_class_name", "")
    if cls == "AutoencoderOobleck":
        return "vae"
    if cls.startswith("AceStep"):
        raise InputError(f"{folder} is one part of a diffusers pipeline ({cls}); the DiT file needs "
                         f"transformer/ and condition_encoder/ together: pass the pipeline directory {folder.parent}")
    if name.startswith("acestep-5Hz-lm"):
        return "lm"
    if name.startswith("acestep-v15"):
        return "dit"
    if name.startswith("Qwen3-Embedding"):
        return "text-enc"
    if config.get("model_type") == "acestep" or "fsq_input_levels" in config:
        return "dit"
    if config.get("model_type") == "qwen3":
        return "lm" if "Qwen3ForCausalLM" in config.get("architectures", []) else "text-enc"
    return None


def _component(folder: Path, kind: str, name: str, config: dict) -> Component:
    files = _weight_files(folder)
    comp = Component(kind, name, config, tokenizer_dirs=[folder])
    if kind == "lm":
        comp.tensors = _tensors(files, lambda n: n if n.startswith(("model.", "lm_head.")) else "model." + n)
    elif kind == "text-enc":
        comp.tensors = _tensors(files, lambda n: n[len("model."):] if n.startswith("model.") else n)
    else:
        comp.tensors = _tensors(files, lambda n: n)
    if kind == "dit":
        pt = folder / "silence_latent.pt"
        if not pt.exists():
            raise ModelsNotFound(f"{pt}: missing; the DiT file needs the silence latent")
        comp.tensors.append(_silence_latent(load_torch_tensor(pt), True, pt))
    return comp


def _diffusers_dit_config(parts: dict[str, dict]) -> dict:
    """The original-style config.json of the DiT, rebuilt from the sub-model configs."""
    drop = ("_class_name", "_diffusers_version", "_name_or_path")
    t, c = parts["transformer"], parts["condition_encoder"]
    cfg = {"model_type": "acestep"}
    for part in ("audio_token_detokenizer", "audio_tokenizer", "condition_encoder", "transformer"):
        cfg.update({k: v for k, v in parts.get(part, {}).items() if k not in drop and v is not None})
    # The sub-configs disagree only where the XL condition encoder is narrower than the DiT; then
    # all four encoder_* sizes are stated, as the original XL config.json states them.
    sizes = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")
    xl = c.get("hidden_size", t["hidden_size"]) != t["hidden_size"]
    for key in sizes:
        cfg[key] = t[key]
        if xl:
            cfg[f"encoder_{key}"] = c.get(key, t[key])
    if not xl:
        cfg.pop("encoder_hidden_size", None)
    cfg["num_audio_decoder_hidden_layers"] = t["num_hidden_layers"]
    cfg["use_sliding_window"] = "sliding_attention" in (t.get("layer_types") or ["sliding_attention"])
    cfg["is_turbo"] = bool(t.get("is_turbo", False) or t.get("model_version") == "turbo")
    return cfg


def _diffusers_components(root: Path) -> list[Component]:
    index = _read_json(root / "model_index.json")
    comps: list[Component] = []
    parts = {p: _read_json(root / p / "config.json") for p in DIFFUSERS_DIT_PARTS if p in index and (root / p).is_dir()}
    if "transformer" in parts or "condition_encoder" in parts:
        missing = [p for p in ("transformer", "condition_encoder") if p not in parts]
        if missing:
            raise ModelsNotFound(f"{root}: diffusers pipeline lacks {', '.join(missing)}/ needed for the DiT")
        try:
            cfg = _diffusers_dit_config(parts)
        except KeyError as e:
            raise ModelFileError(f"{root / 'transformer' / 'config.json'}: no {e.args[0]}") from None
        version = str(cfg.get("model_version") or ("turbo" if cfg["is_turbo"] else "base"))
        if "encoder_hidden_size" in cfg and not version.startswith("acestep-") and "xl" not in version:
            version = f"xl-{version}"  # the published name of the XL shape: acestep-v15-xl-turbo
        comp = Component("dit", version if version.startswith("acestep-") else f"acestep-v15-{version}", cfg)
        for part in parts:
            files = _weight_files(root / part)
            tensors = _tensors(files, lambda n, part=part: original_dit_name(part, n))
            for t in tensors:
                if t.name == "silence_latent":
                    t = _silence_latent(as_f32(t.load()), False, root / part)
                comp.tensors.append(t)
        if not any(t.name == "silence_latent" for t in comp.tensors):
            raise ModelFileError(f"{root / 'condition_encoder'}: no silence_latent tensor; the DiT file needs it")
        comps.append(comp)
    if "vae" in index and (root / "vae").is_dir():
        comps.append(_component(root / "vae", "vae", "vae", _read_json(root / "vae" / "config.json")))
    if "text_encoder" in index and (root / "text_encoder").is_dir():
        comp = _component(root / "text_encoder", "text-enc", DIFFUSERS_TEXT_ENCODER,
                          _read_json(root / "text_encoder" / "config.json"))
        comp.tokenizer_dirs.append(root / "tokenizer")
        comps.append(comp)
    return comps


def find_components(src: str | Path) -> list[Component]:
    """Every convertible component under `src` (any of the three layouts)."""
    src = Path(src)
    if not src.exists():
        raise ModelsNotFound(f"{src}: no such directory")
    if not src.is_dir():
        raise InputError(f"{src}: not a directory; pass a checkpoint directory")
    if (src / "model_index.json").exists():
        comps = _diffusers_components(src)
    elif (src / "config.json").exists():
        config = _read_json(src / "config.json")
        kind = _classify(src, config)
        if kind is None:
            raise ModelFileError(f"{src / 'config.json'}: not an ACE-Step DiT, VAE, text encoder or 5 Hz LM config")
        in_pipeline = (src.parent / "model_index.json").exists()
        name = DIFFUSERS_TEXT_ENCODER if in_pipeline and kind == "text-enc" else src.name
        comps = [_component(src, kind, name, config)]
        if in_pipeline:  # a diffusers text_encoder/ keeps its tokenizer in the sibling tokenizer/
            comps[0].tokenizer_dirs.append(src.parent / "tokenizer")
    else:
        comps = []
        for sub in sorted(p for p in src.iterdir() if p.is_dir()):
            if not (sub / "config.json").exists():
                continue
            config = _read_json(sub / "config.json")
            kind = _classify(sub, config)
            if kind is not None:
                comps.append(_component(sub, kind, sub.name, config))
    if not comps:
        raise ModelFileError(f"{src}: no ACE-Step checkpoint found (expected acestep-v15-*/, vae/, Qwen3-Embedding-*/, "
                         f"acestep-5Hz-lm-*/ folders with config.json, a diffusers pipeline with model_index.json, "
                         f"or one such folder)")
    return comps


# ---------------------------------------------------------------------------
# Metadata

def _rope_theta(cfg: dict):
    return cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta")


def _add_metadata(w: GGUFWriter, comp: Component) -> None:
    """The hyperparameters under the GGUF keys the core reads them from: its own key table
    (``_core.hparam_keys``), so that the writer and the reader cannot drift apart."""
    cfg, arch = comp.config, ARCHITECTURES[comp.kind]
    w.add_string("general.name", comp.name)
    values = dict(cfg, rope_theta=_rope_theta(cfg))
    if comp.kind == "dit":
        values["is_turbo"] = bool(cfg.get("is_turbo", False))  # acestep.cpp writes it only when true
    if comp.kind == "lm" and values.get("tie_word_embeddings") is None:
        values["tie_word_embeddings"] = not any(t.name == "lm_head.weight" for t in comp.tensors)
    add = {"u32": w.add_uint32, "f32": w.add_float32, "bool": lambda k, v: w.add_bool(k, bool(v)),
           "int_array": w.add_int32_array}
    for key, kind, config_key, _fallback, _value in _core.hparam_keys(arch):
        v = values.get(config_key) if key and config_key else None
        if v is None or (kind in ("u32", "f32") and isinstance(v, bool)) or (kind == "int_array" and not v):
            continue
        add[kind](key, v)
    w.add_string("acestep.config_json", json.dumps(cfg, separators=(",", ":")))
    if comp.kind in ("lm", "text-enc"):
        _add_tokenizer(w, comp)


def _merge_text(m) -> str:
    return m if isinstance(m, str) else " ".join(m)


def _add_tokenizer(w: GGUFWriter, comp: Component) -> None:
    """GPT-2 style BPE tokenizer, with every added token at its id (index = token id)."""
    folder = next((d for d in comp.tokenizer_dirs if (d / "tokenizer.json").exists()), None)
    hf_json = None
    if folder is not None:
        try:
            hf_json = (folder / "tokenizer.json").read_text(encoding="utf-8")
            data = json.loads(hf_json)
            vocab, merges = data["model"]["vocab"], [_merge_text(m) for m in data["model"].get("merges", [])]
            added = [(a["id"], a["content"], bool(a.get("special"))) for a in data.get("added_tokens", [])]
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # ValueError: not UTF-8, not JSON
            raise ModelFileError(f"{folder / 'tokenizer.json'}: not a BPE tokenizer ({e.__class__.__name__}: {e})") \
                from None
    else:
        folder = next((d for d in comp.tokenizer_dirs if (d / "vocab.json").exists() and (d / "merges.txt").exists()), None)
        if folder is None:
            raise ModelsNotFound(f"{comp.tokenizer_dirs[0]}: no tokenizer.json (or vocab.json + merges.txt); "
                                    f"the {comp.kind} file carries the tokenizer")
        vocab = _read_json(folder / "vocab.json")
        merges = [line for line in (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
                  if line and not line.startswith("#version")]
        decoder = _read_json(folder / "tokenizer_config.json").get("added_tokens_decoder", {}) \
            if (folder / "tokenizer_config.json").exists() else {}
        added = [(int(i), a["content"], bool(a.get("special"))) for i, a in decoder.items()]
    n = max([*vocab.values(), *(i for i, _, _ in added)]) + 1
    tokens: list[str | None] = [None] * n
    types = np.ones(n, dtype=np.int32)  # 1 normal
    for tok, i in vocab.items():
        tokens[i] = tok
    for i, content, special in added:
        tokens[i] = content
        types[i] = 3 if special else 4  # control / user-defined
    for i, tok in enumerate(tokens):
        if tok is None:
            tokens[i], types[i] = f"[PAD{i}]", 5  # unused
    ids = {tok: i for i, tok in enumerate(tokens)}
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "qwen2")
    w.add_string_array("tokenizer.ggml.tokens", tokens)
    w.add_int32_array("tokenizer.ggml.token_type", types.tolist())
    w.add_string_array("tokenizer.ggml.merges", merges)
    tok_cfg = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").exists() else {}
    for role in ("bos", "eos", "unk", "pad"):
        tok = tok_cfg.get(f"{role}_token")
        tok = tok.get("content") if isinstance(tok, dict) else tok
        if tok in ids:
            w.add_uint32(f"tokenizer.ggml.{role}_token_id", ids[tok])
    if hf_json is not None:
        w.add_string("tokenizer.huggingface.json", hf_json)


# ---------------------------------------------------------------------------
# Tensor types and data

def tensor_types(kind: str, tensors: list[tuple[str, tuple[int, ...]]], dtype: str) -> dict[str, str]:
    """The GGUF type of every tensor (name, shape) of one component under the requested --dtype:
    the quantized types by quantize.plan_types, where what is not quantized is BF16."""
    def float_type(name: str) -> str:
        return "F32" if name == "silence_latent" else "BF16"

    if dtype in QUANT_DTYPES:
        return plan_types(kind, tensors, dtype, float_type)
    return {name: "F32" if name == "silence_latent" else DTYPES[dtype] for name, _ in tensors}


def tensor_type(kind: str, name: str, shape: tuple[int, ...], dtype: str) -> str:
    """The GGUF type of one tensor seen alone (the _M mixes need the whole file: `tensor_types`)."""
    return tensor_types(kind, [(name, shape)], dtype)[name]


def _encode(values: np.ndarray, type_name: str) -> bytes:
    if type_name == "BF16" and values.dtype == np.uint16:
        return np.ascontiguousarray(values).tobytes()
    f = np.ascontiguousarray(as_f32(values))
    if type_name == "BF16":
        return f32_to_bf16_bits(f).tobytes()
    if type_name == "F16":
        return f.astype("<f2").tobytes()
    if type_name == "F32":
        return f.tobytes()
    return _core.quantize(f, type_name).tobytes()


def _producer(t: _Tensor, type_name: str):
    def produce():
        raw = t.load()
        rows = raw.reshape(-1, raw.shape[-1]) if raw.ndim else raw.reshape(1, 1)
        slices = iter_rows(rows.shape[0], rows.shape[1])
        if type_name in FLOAT_TYPES:
            for sl in slices:
                yield _encode(rows[sl], type_name)
        else:
            yield from parallel_chunks(lambda sl: _encode(rows[sl], type_name), slices)
    return produce


def plan(comp: Component, dtype: str) -> GGUFWriter:
    """A writer holding the component's metadata and every tensor's type and size."""
    w = GGUFWriter(ARCHITECTURES[comp.kind])
    _add_metadata(w, comp)
    types = tensor_types(comp.kind, [(t.name, t.shape) for t in comp.tensors], dtype)
    for t in comp.tensors:
        w.add_tensor(t.name, t.shape, types[t.name], _producer(t, types[t.name]))
    return w


def convert(src: str | Path, out_dir: str | Path, dtype: str = "bf16", quiet: bool = False) -> list[Path]:
    """Converts every component found under `src` into `out_dir/<name>-<DTYPE>.gguf`.

    Returns the written paths.  A failure never leaves a partial .gguf behind.
    """
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    comps = find_components(src)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for comp in comps:
        w = plan(comp, dtype)
        path = out_dir / f"{comp.name}-{DTYPES[dtype]}.gguf"
        if quiet:
            w.write(path)
        else:
            from tqdm import tqdm
            total = sum(nbytes for *_, nbytes in w.tensors)
            with tqdm(total=total, unit="B", unit_scale=True, desc=path.name) as bar:
                w.write(path, progress=lambda t: bar.update(t.nbytes))
        written.append(path)
    return written
