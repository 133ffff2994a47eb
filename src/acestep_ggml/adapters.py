"""Adapters on the DiT: LoRA, rsLoRA, DoRA and LyCORIS LoKr, as the trainers in the wild write them.

Recognised by content (never by file name):

* a PEFT folder (upstream's trainer): ``adapter_config.json`` + ``adapter_model.safetensors``,
  keys ``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight`` (``lora_magnitude_vector``
  for DoRA), modules relative to the decoder; ``r``, ``lora_alpha`` (a float too), ``use_rslora``,
  ``rank_pattern``, ``alpha_pattern``, ``use_dora`` are honoured;
* a single ``.safetensors`` with ``lora_down`` / ``lora_up`` / ``alpha`` (ComfyUI, kohya, LyCORIS
  LoRA), prefix ``diffusion_model.``, ``diffusion_model.decoder.``, ``lycoris_``, ``lora_unet_`` or none;
* diffusers naming (``transformer.``, ``to_q`` / ``to_k`` / ``to_v`` / ``to_out.0``), its config in
  ``__metadata__["lora_adapter_metadata"]`` when diffusers wrote it;
* LyCORIS LoKr (upstream's ``lokr_weights.safetensors``): ``lycoris_<module with '.' -> '_'>.lokr_w1``
  (or ``lokr_w1_a``/``_b``), ``lokr_w2`` (or ``lokr_w2_a``/``_b``), ``alpha``, optional ``dora_scale``,
  the config in ``__metadata__["lokr_config"]``.

Every module maps to a Linear weight of the DiT GGUF (``decoder.<module>.weight``): attention,
MLP, condition embedder, time embeddings.  The math (docs/adapters.md, with sources):

* LoRA: ΔW = s·B A with s = α/r (α/√r with rsLoRA), per module r/α from the patterns;
* PEFT DoRA: W' = g ⊙_row (W + s·B A), g = m / ‖W + s·B A‖_row (no ε);
* LoKr: ΔW = σ·(w1 ⊗ w2), σ = alpha / dim of the decomposed factor (1 when both are full, √dim
  with ``rs_lora``); with ``dora_scale`` LyCORIS' W' = (W + ΔW) ⊙_row [μ(m/(‖W + ΔW‖_row + ε) − 1) + 1].

The user scale S multiplies s (PEFT, ComfyUI), or is LyCORIS' multiplier μ (LoKr).  Several
adapters add: W' = W + Σ_k [(g_k − 1) ⊙_row W + g_k ⊙_row S_k ΔW_k] (g_k = 1 without DoRA).
"""
from __future__ import annotations

import functools
import json
import logging
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from .errors import AdapterError, InputError

try:  # the regex parser, to look at rank_pattern / alpha_pattern keys before matching them
    from re import _parser as _sre_parse  # Python 3.11+
except ImportError:  # Python 3.9, 3.10
    import sre_parse as _sre_parse

log = logging.getLogger("acestep_ggml.adapters")

MODES = ("merge", "runtime")

# Suffixes of the tensors of one module, per family.
_LORA_A = (".lora_A.weight", ".lora_A.default.weight", ".lora_down.weight")
_LORA_B = (".lora_B.weight", ".lora_B.default.weight", ".lora_up.weight")
_MAGNITUDE = (".lora_magnitude_vector", ".lora_magnitude_vector.weight", ".lora_magnitude_vector.default",
              ".lora_magnitude_vector.default.weight")
_LOKR = (".lokr_w1", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2", ".lokr_w2_a", ".lokr_w2_b", ".lokr_t2")
_OTHER = (".alpha", ".dora_scale", ".lora_B.bias", ".lora_up.bias")
# LyCORIS algorithms and formats we do not apply: an error naming the key, not a silent skip.
_UNSUPPORTED = (".hada_", ".oft_", ".oft_blocks", ".a1.weight", ".a2.weight", ".b1.weight", ".b2.weight", ".diff",
                ".diff_b", ".lokr_t1", ".boft_")
# Diffusers' attention names -> the original ones (as convert.py renames them).
_DIFFUSERS = ((".to_q", ".q_proj"), (".to_k", ".k_proj"), (".to_v", ".v_proj"), (".to_out.0", ".o_proj"))
# The patch convolutions: known modules, but not Linears (LyCORIS wraps proj_in, normally with ΔW = 0).
_CONVS = ("proj_in.1", "proj_out.1", "proj_in_conv", "proj_out_conv")
_DTYPE_EPS = {"F32": float(np.finfo(np.float32).eps), "F16": float(np.finfo(np.float16).eps), "BF16": 2.0 ** -7,
              "F64": float(np.finfo(np.float32).eps)}


@dataclass
class Module:
    """One adapted Linear: ``target`` the DiT weight, ``key`` its stem in the file."""

    key: str
    target: str
    kind: str  # "lora" (a = A [r, in], b = B [out, r]) or "kron" (a = w1, b = w2: ΔW = w1 ⊗ w2)
    a: np.ndarray
    b: np.ndarray
    scale: float  # s or σ, before the user scale
    rank: int | str
    dora: Optional[str] = None  # None, "peft" or "lycoris"
    magnitude: Optional[np.ndarray] = None  # [out]
    eps: float = 0.0

    def delta(self) -> np.ndarray:
        """ΔW (out, in) in float32, without s/σ."""
        return self.b @ self.a if self.kind == "lora" else np.kron(self.a, self.b)

    def is_zero(self) -> bool:
        return not (np.any(self.a) and np.any(self.b))


@dataclass
class Adapter:
    """An adapter file read and mapped onto one DiT."""

    path: str
    format: str
    modules: list[Module]
    unmatched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        ranks = sorted({str(m.rank) for m in self.modules}, key=lambda r: (len(r), r))
        kinds = sorted({m.target.split(".")[-2] if ".layers." in m.target else m.target[len("decoder."):-len(
            ".weight")] for m in self.modules})
        live = sum(not m.is_zero() for m in self.modules)
        dora = " + DoRA" if any(m.dora for m in self.modules) else ""
        text = (f"{self.path}: {self.format}{dora}, {len(self.modules)} modules ({live} non-zero: "
                f"{', '.join(kinds)}), rank {'/'.join(ranks)}")
        return "; ".join([text] + self.notes)


# -- reading safetensors ---------------------------------------------------------------------------
class _File:
    """A safetensors file's keys, metadata and tensors as float32 (BF16 too, which numpy lacks)."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = path
        try:
            self._f = safe_open(str(path), "np")
            self.keys = list(self._f.keys())
            self.metadata = self._f.metadata() or {}
        except Exception as e:  # noqa: BLE001 (safetensors raises its own and OS errors)
            raise AdapterError(f"{path}: not a readable safetensors file ({e})") from None
        self._header: Optional[tuple[int, dict]] = None

    def dtype(self, key: str) -> str:
        return self._f.get_slice(key).get_dtype()

    def get(self, key: str) -> np.ndarray:
        dtype = self.dtype(key)
        if dtype not in _DTYPE_EPS:  # before reading: numpy lacks some (F8_*), safetensors' reader fails on them
            raise AdapterError(f"{self.path}: tensor '{key}' has dtype {dtype}, not a float type this reads "
                               f"({', '.join(sorted(_DTYPE_EPS))})")
        a = self._bf16(key) if dtype == "BF16" else np.asarray(self._f.get_tensor(key))
        with np.errstate(over="ignore"):  # F64 beyond F32's range: infinity, refused below
            a = a.astype(np.float32)
        if not np.all(np.isfinite(a)):
            raise AdapterError(f"{self.path}: tensor '{key}' contains NaN or infinity")
        return a

    def _bf16(self, key: str) -> np.ndarray:
        if self._header is None:
            with open(self.path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                self._header = (8 + n, json.loads(f.read(n)))
        base, header = self._header
        info = header[key]
        start, end = info["data_offsets"]
        raw = np.fromfile(self.path, dtype="<u2", count=(end - start) // 2, offset=base + start)
        return (raw.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])


# -- mapping keys onto the DiT ---------------------------------------------------------------------
def _split(key: str) -> tuple[str, str]:
    """(module stem, suffix) of a key, or (key, "") when no known suffix ends it."""
    for suffixes in (_LORA_A, _LORA_B, _MAGNITUDE, _LOKR, _OTHER):
        for s in suffixes:
            if key.endswith(s):
                return key[:-len(s)], s
    return key, ""


class _Names:
    """Stems of every naming family -> decoder module path (original names), from the DiT's own list."""

    def __init__(self, targets: dict[str, tuple[int, int]]):
        self.targets = targets
        self.paths = {t[len("decoder."):-len(".weight")] for t in targets}
        self.flat = {p.replace(".", "_"): p for p in self.paths}
        self.flat.update({c.replace(".", "_"): c for c in _CONVS[:2]})

    def path(self, stem: str) -> Optional[str]:
        s = stem
        for prefix in ("lycoris_", "lora_unet_decoder_", "lora_unet_"):
            if s.startswith(prefix):
                return self.flat.get(s[len(prefix):])
        for prefix in ("base_model.model.", "diffusion_model.", "transformer.", "model."):
            if s.startswith(prefix):
                s = s[len(prefix):]
                break
        if s.startswith("decoder."):
            s = s[len("decoder."):]
        s = "." + s
        for a, b in _DIFFUSERS:
            if s.endswith(a):
                s = s[:-len(a)] + b
        s = s[1:].replace("proj_in_conv", "proj_in.1").replace("proj_out_conv", "proj_out.1")
        return s if s in self.paths or s in _CONVS[:2] else None


def _backtracks(items, repeated: bool = False) -> bool:
    """Whether a parsed regex repeats (more than once) something that itself repeats or branches,
    as in ``(.*)*`` or ``(\\w|.)*``: what makes a backtracking match take exponential time (``(.*)*z``
    takes 2 s on one module name, ``(.*.*)*z`` over a minute)."""
    for op, av in items:
        op = str(op)
        if op in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            many = av[1] > 1
            if (many and repeated) or _backtracks(av[2], repeated or many):
                return True
        elif op == "BRANCH":
            if repeated or any(_backtracks(b, repeated) for b in av[1]):
                return True
        elif op == "SUBPATTERN" and _backtracks(av[-1], repeated):
            return True
        elif op in ("ASSERT", "ASSERT_NOT") and _backtracks(av[1], repeated):
            return True
        elif op == "ATOMIC_GROUP" and _backtracks(av, repeated):
            return True
        elif op == "GROUPREF_EXISTS" and any(b is not None and _backtracks(b, repeated) for b in av[1:]):
            return True
    return False


@functools.lru_cache(maxsize=512)
def _pattern_regex(key: str):
    """One pattern key's matcher, PEFT's ``(.*\\.)?(K)$``, or the reason it is refused (a string).
    Parsed and checked once per key, not once per module it is tried on."""
    try:
        if _backtracks(_sre_parse.parse(key)):
            return ("repeats a repetition or an alternation, which can take exponential time to match: "
                    "write the module names out")
        return re.compile(rf"(.*\.)?({key})$")
    except (re.error, OverflowError, RecursionError) as e:  # a{4294967296}; groups nested thousands deep
        return f"is not a regular expression ({e})"


def _pattern_value(pattern, name: str, default, where: str, key: str):
    """PEFT's get_pattern_key rule (peft 0.21.2 utils/other.py): the first key K whose regex
    ``(.*\\.)?(K)$`` matches the module name from its start; else the default."""
    if pattern is None:
        return default
    if not isinstance(pattern, dict):
        raise AdapterError(f"{where}: {key} is a {type(pattern).__name__}, not a JSON object of module patterns")
    for k, v in pattern.items():
        regex = _pattern_regex(str(k))
        if isinstance(regex, str):
            raise AdapterError(f"{where}: {key} key {k!r} {regex}")
        if regex.match(name):
            return v
    return default


def _config_number(value, where: str, key: str, whole: bool = False, positive: bool = False) -> float:
    """A number of an adapter's JSON config, checked: finite (whole, > 0 where asked)."""
    try:
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    except OverflowError:  # an integer beyond a double's range
        ok = False
    if not ok or (whole and value != int(value)) or (positive and value <= 0):
        kind = "a positive whole number" if whole and positive else "a positive number" if positive else "a finite number"
        raise AdapterError(f"{where}: {key} = {value!r} is not {kind}")
    return value


def _json_object(text: str, where: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise AdapterError(f"{where} is not JSON ({e})") from None
    if not isinstance(value, dict):
        raise AdapterError(f"{where} is a JSON {type(value).__name__}, not an object")
    return value


def _read_config(folder: Path) -> dict:
    try:
        text = (folder / "adapter_config.json").read_text()
    except (OSError, ValueError) as e:
        raise AdapterError(f"{folder / 'adapter_config.json'}: not readable as JSON ({e})") from None
    return _json_object(text, str(folder / "adapter_config.json"))


def load_adapter(path: str | Path, targets: dict[str, tuple[int, int]]) -> Adapter:
    """Reads an adapter (a PEFT folder or one .safetensors) and maps it onto the DiT whose Linear
    weights are ``targets`` ({name: (out, in)}).  AdapterError naming the key for an unknown
    format, another base model, a shape that does not fit, NaN or infinity."""
    path = Path(path)
    config, file = None, path
    if path.is_dir():
        if (path / "adapter_config.json").exists():
            config = _read_config(path)
            file = path / "adapter_model.safetensors"
            if not file.exists():
                bins = "; only adapter_model.bin, a pickle: save it as safetensors" if (
                    path / "adapter_model.bin").exists() else ""
                raise AdapterError(f"{path}: a PEFT folder without adapter_model.safetensors{bins}")
        else:
            found = sorted(path.glob("*.safetensors"))
            if len(found) != 1:
                raise AdapterError(f"{path}: not an adapter folder (no adapter_config.json, and "
                                   f"{len(found)} .safetensors files rather than one)")
            file = found[0]
    elif not path.exists():
        raise AdapterError(f"{path}: no such adapter file or folder")
    elif (path.parent / "adapter_config.json").exists() and path.suffix == ".safetensors":
        config = _read_config(path.parent)
    f = _File(file)
    where = str((path if path.is_dir() else path.parent) / "adapter_config.json")
    return _build(f, str(path), config, targets, where)


def _build(f: _File, label: str, config: Optional[dict], targets: dict[str, tuple[int, int]],
           where: str = "adapter_config.json") -> Adapter:
    names = _Names(targets)
    groups: dict[str, dict[str, str]] = {}
    unknown = []
    for key in f.keys:
        if any(u in key for u in _UNSUPPORTED):
            raise AdapterError(f"{f.path}: key '{key}' belongs to an adapter kind not supported here "
                               "(LoHa, OFT, GLoRA, full diffs): LoRA, DoRA and LoKr are")
        stem, suffix = _split(key)
        if suffix:
            groups.setdefault(stem, {})[suffix] = key
        else:
            unknown.append(key)
    if not groups:
        raise AdapterError(f"{f.path}: unknown adapter format: no key is a LoRA, DoRA or LoKr tensor "
                           f"(first keys: {', '.join(f.keys[:3]) or 'none'})")
    meta = f.metadata
    suffixes = {s for g in groups.values() for s in g}
    is_lokr = any(s.startswith(".lokr") for s in suffixes)
    if config is None and "lora_adapter_metadata" in meta:  # diffusers' save_lora_weights
        where = f"{f.path}: __metadata__ lora_adapter_metadata"
        raw = _json_object(meta["lora_adapter_metadata"], where)
        config = {k.split(".", 1)[1] if k.startswith("transformer.") else k: v for k, v in raw.items()}
    lokr_config = {}
    if "lokr_config" in meta:
        lokr_config = _json_object(meta["lokr_config"], f"{f.path}: __metadata__ lokr_config")
    any_stem = next(iter(groups))
    if is_lokr:
        fmt = "LyCORIS LoKr"
    elif ".lora_down.weight" in suffixes:
        fmt = "LyCORIS LoRA" if any_stem.startswith("lycoris_") else "ComfyUI/kohya LoRA"
    elif any(s.startswith("transformer.") or re.search(r"\.to_(q|k|v|out)", s) for s in groups):
        fmt = "diffusers LoRA"
    else:
        fmt = "PEFT LoRA" if config is not None else "PEFT-named LoRA (no adapter_config.json: alpha = rank)"
    if config is not None and config.get("peft_type", "LORA") not in ("LORA",):
        raise AdapterError(f"{f.path}: adapter_config.json peft_type {config.get('peft_type')!r}: only LORA is "
                           "supported")

    modules, unmatched, notes = [], list(unknown), []
    skipped_convs = 0
    for stem, parts in groups.items():
        p = names.path(stem)
        first = next(iter(parts.values()))
        if p is None:
            unmatched.extend(parts.values())
            continue
        if p in _CONVS[:2]:
            tensors = [f.get(k) for s, k in parts.items() if s not in (".alpha", ".dora_scale")]
            if any(not np.any(t) for t in tensors):
                skipped_convs += 1  # LyCORIS wraps the patch conv; untrained it holds ΔW = 0
                continue
            raise AdapterError(f"{f.path}: key '{first}' adapts the patch convolution decoder.{p}: not supported "
                               "(only Linear weights)")
        target = f"decoder.{p}.weight"
        out, inp = targets[target]
        if any(s.startswith(".lokr") for s in parts):
            modules.append(_lokr(f, stem, parts, target, out, inp, lokr_config))
        else:
            modules.append(_lora(f, stem, parts, target, out, inp, config, where))
    if not modules:
        raise AdapterError(f"{f.path}: no key names a Linear of this DiT — an adapter for another base model? "
                           f"(first keys: {', '.join(f.keys[:3])})")
    if unmatched:
        log.warning("%s: %d keys match no module of this DiT and are not applied: %s", f.path, len(unmatched),
                    ", ".join(unmatched))
    if skipped_convs:
        notes.append(f"{skipped_convs} zero patch-convolution module(s) skipped")
    if config is not None and config.get("use_rslora"):
        notes.append("rsLoRA")
    return Adapter(label, fmt, modules, unmatched, notes)


def _scalar(f: _File, key: Optional[str]) -> Optional[float]:
    if key is None:
        return None
    a = f.get(key)
    if a.size != 1:
        raise AdapterError(f"{f.path}: '{key}' should hold one value, holds {a.size}")
    return float(a.reshape(-1)[0])


def _misfit(f: _File, key: str, shape, target: str, out: int, inp: int) -> AdapterError:
    return AdapterError(f"{f.path}: '{key}' has shape {list(shape)}, which does not fit {target} [{out}, {inp}] "
                        "(an adapter for another base model, or a broken file)")


def _lora(f: _File, stem: str, parts: dict, target: str, out: int, inp: int, config: Optional[dict],
          where: str) -> Module:
    ka = next((parts[s] for s in _LORA_A if s in parts), None)
    kb = next((parts[s] for s in _LORA_B if s in parts), None)
    if ka is None or kb is None:
        have = ", ".join(parts.values())
        raise AdapterError(f"{f.path}: module '{stem}' lacks its {'A/down' if ka is None else 'B/up'} factor "
                           f"(has {have})")
    for s in (".lora_B.bias", ".lora_up.bias"):
        if s in parts:
            raise AdapterError(f"{f.path}: '{parts[s]}': LoRA biases (lora_bias) are not supported; the DiT's "
                               "adapted Linears have no bias to merge them into")
    a, b = f.get(ka), f.get(kb)
    if a.ndim != 2 or a.shape[1] != inp:
        raise _misfit(f, ka, a.shape, target, out, inp)
    if b.ndim != 2 or b.shape[0] != out or b.shape[1] != a.shape[0]:
        raise _misfit(f, kb, b.shape, target, out, inp)
    r = a.shape[0]
    if r == 0:  # PEFT refuses r <= 0 (LoraConfig: "`r` should be a positive integer value")
        raise AdapterError(f"{f.path}: '{ka}' has shape {list(a.shape)}: rank 0, an empty LoRA")
    alpha = _scalar(f, parts.get(".alpha"))
    dora, magnitude = None, None
    if config is not None:
        name = stem[len("base_model.model."):] if stem.startswith("base_model.model.") else stem
        r_cfg = _pattern_value(config.get("rank_pattern"), name, config.get("r", r), where, "rank_pattern")
        r_cfg = _config_number(r_cfg, where, f"the rank (r or rank_pattern) of {name}", whole=True, positive=True)
        if int(r_cfg) != r:
            raise AdapterError(f"{f.path}: '{ka}' has rank {r}, adapter_config.json says {r_cfg} for {name}")
        alpha = _pattern_value(config.get("alpha_pattern"), name, config.get("lora_alpha", r), where, "alpha_pattern")
        alpha = float(_config_number(alpha, where, f"the alpha (lora_alpha or alpha_pattern) of {name}"))
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    else:
        scale = 1.0 if alpha is None else alpha / r
    km = next((parts[s] for s in _MAGNITUDE if s in parts), None)
    if km is not None:
        magnitude = f.get(km).reshape(-1)
        if magnitude.size != out:
            raise _misfit(f, km, f.get(km).shape, target, out, inp)
        dora = "peft"
    elif ".dora_scale" in parts:
        raise AdapterError(f"{f.path}: '{parts['.dora_scale']}': DoRA in the ComfyUI/LyCORIS LoRA layout is not "
                           "supported (PEFT DoRA and LoKr DoRA are)")
    elif config is not None and config.get("use_dora"):
        raise AdapterError(f"{f.path}: module '{stem}' has no lora_magnitude_vector though use_dora is set")
    return Module(stem, target, "lora", a, b, scale, r, dora, magnitude)


def _lokr(f: _File, stem: str, parts: dict, target: str, out: int, inp: int, lokr_config: dict) -> Module:
    def factor(n: str) -> tuple[Optional[np.ndarray], Optional[int]]:
        if f".lokr_{n}" in parts:
            return f.get(parts[f".lokr_{n}"]), None
        if f".lokr_{n}_a" in parts and f".lokr_{n}_b" in parts:
            wa, wb = f.get(parts[f".lokr_{n}_a"]), f.get(parts[f".lokr_{n}_b"])
            if wa.ndim != 2 or wb.ndim != 2 or wa.shape[1] != wb.shape[0]:
                raise _misfit(f, parts[f".lokr_{n}_b"], wb.shape, target, out, inp)
            if wa.shape[1] == 0:
                raise AdapterError(f"{f.path}: '{parts[f'.lokr_{n}_a']}' has shape {list(wa.shape)}: rank 0, an "
                                   "empty factor")
            return wa @ wb, wa.shape[1]
        raise AdapterError(f"{f.path}: module '{stem}' lacks lokr_{n} (or lokr_{n}_a and lokr_{n}_b)")

    if ".lokr_t2" in parts:
        raise AdapterError(f"{f.path}: '{parts['.lokr_t2']}': Tucker LoKr (convolutions) is not supported")
    w1, dim1 = factor("w1")
    w2, dim2 = factor("w2")
    if w1.ndim != 2 or w2.ndim != 2 or w1.shape[0] * w2.shape[0] != out or w1.shape[1] * w2.shape[1] != inp:
        raise AdapterError(f"{f.path}: module '{stem}': w1 {list(w1.shape)} ⊗ w2 {list(w2.shape)} does not fit "
                           f"{target} [{out}, {inp}] (an adapter for another base model?)")
    # LyCORIS 4.1.3 lokr.py:207-220: σ = alpha / r_factor; the stored alpha is α·dim/r_factor, so
    # σ = stored alpha / dim of the decomposed factor, and 1 (√dim with rs_lora) when both are full.
    dim = dim2 or dim1
    alpha = _scalar(f, parts.get(".alpha"))
    if dim is not None:
        sigma = 1.0 if alpha is None else alpha / dim
        rank: int | str = dim
    else:
        full_dim = lokr_config.get("linear_dim")
        sigma = 1.0
        if lokr_config.get("rs_lora") and full_dim:
            sigma = math.sqrt(_config_number(full_dim, f"{f.path}: __metadata__ lokr_config", "linear_dim", positive=True))
        rank = "full"
    dora, magnitude, eps = None, None, 0.0
    if ".dora_scale" in parts:
        m = f.get(parts[".dora_scale"])
        if m.size != out or (m.ndim == 2 and m.shape[0] != out):
            raise AdapterError(f"{f.path}: '{parts['.dora_scale']}' has shape {list(m.shape)}: only the per-output "
                               f"form [{out}, 1] (wd_on_out) is supported")
        dora, magnitude = "lycoris", m.reshape(-1)
        # LyCORIS functional/general.py _weight_decompose: ε = machine epsilon of dora_scale's dtype.
        eps = _DTYPE_EPS.get(f.dtype(parts[".dora_scale"]), _DTYPE_EPS["F32"])
    return Module(stem, target, "kron", w1, w2, sigma, rank, dora, magnitude, eps)


# -- combining adapters ----------------------------------------------------------------------------
@dataclass
class Plan:
    """Per DiT weight: rows (G, or None) and branches (kind, a, b, rows or None, scale) with
    W' x = G ⊙ (W x) + Σ scale · rows ⊙ Δ x."""

    modules: dict[str, tuple[Optional[np.ndarray], list[tuple]]]

    def merged(self, name: str, w: np.ndarray) -> np.ndarray:
        rows, branches = self.modules[name]
        out = w * rows[:, None] if rows is not None else w.copy()
        for kind, a, b, r, s in branches:
            d = b @ a if kind == "lora" else np.kron(a, b)
            out += (s * d) * (r[:, None] if r is not None else 1.0)
        return out


def plan(adapters: Sequence[tuple[Adapter, float]], base: Callable[[str], np.ndarray]) -> Plan:
    """The run-time form of ``adapters`` (each with its user scale); ``base(name)`` gives a DiT
    weight as float32 (needed for DoRA only)."""
    out: dict[str, tuple[Optional[np.ndarray], list[tuple]]] = {}
    cache: dict[str, np.ndarray] = {}
    f32_max = float(np.finfo(np.float32).max)

    def checked(adapter: Adapter, m: Module, scale: float) -> float:
        if not abs(scale) <= f32_max:  # NaN too: the branch runs in F32
            raise AdapterError(f"{adapter.path}: module '{m.key}': its scale (the user's × the file's "
                               f"{m.scale:g}) is {scale:g}, beyond float32")
        return scale

    for adapter, S in adapters:
        for m in adapter.modules:
            rows, branches = out.get(m.target, (None, []))
            if m.dora is None:
                if not m.is_zero():
                    branches.append((m.kind, m.a, m.b, None, checked(adapter, m, S * m.scale)))
            else:
                if m.target not in cache:
                    cache[m.target] = np.asarray(base(m.target), dtype=np.float32)
                w = cache[m.target].astype(np.float64)
                d = m.delta().astype(np.float64)
                if m.dora == "peft":  # dora.py get_weight_norm: ‖W + S·s·ΔW‖ per output row, no ε
                    g = m.magnitude / np.linalg.norm(w + S * m.scale * d, axis=1)
                    scale = S * m.scale
                else:  # LyCORIS: μ on the magnitude factor only, ΔW unscaled by μ
                    norm = np.linalg.norm(w + m.scale * d, axis=1)
                    g = S * (m.magnitude / (norm + m.eps) - 1.0) + 1.0
                    scale = m.scale
                with np.errstate(over="ignore"):
                    g = g.astype(np.float32)
                if not np.all(np.isfinite(g)):
                    raise AdapterError(f"{adapter.path}: module '{m.key}': DoRA factor is not finite (zero row norm, "
                                       "or beyond float32)")
                rows = (np.ones_like(g) if rows is None else rows) + (g - 1.0)
                branches.append((m.kind, m.a, m.b, g, checked(adapter, m, scale)))
            out[m.target] = (rows, branches)
    return Plan({k: v for k, v in out.items() if v[0] is not None or v[1]})


def check_loras(loras: Iterable) -> list[tuple[str, float]]:
    """``[(path, scale), ...]`` (a bare path means scale 1) checked for form."""
    out = []
    for item in loras or ():
        path, scale = (item, 1.0) if isinstance(item, (str, Path)) else tuple(item)
        try:
            scale = float(scale)
        except (TypeError, ValueError):
            raise InputError(f"LoRA scale {scale!r} for {path} is not a number") from None
        if not math.isfinite(scale):
            raise InputError(f"LoRA scale {scale} for {path} is not finite")
        out.append((str(path), scale))
    return out


class Applied:
    """The adapters applied to one loaded DiT (``_core.DiT``), in ``mode`` merge or runtime."""

    def __init__(self, dit, mode: str):
        if mode not in MODES:
            raise InputError(f"unknown LoRA mode {mode!r}: choose merge or runtime")
        self.dit, self.mode = dit, mode
        self.targets = {n: tuple(s) for n, s in dit.adaptable()}
        self.merged: set[str] = set()
        self.runtime = False

    def set(self, adapters: Sequence[tuple[Adapter, float]]) -> None:
        for name in self.merged:  # back to the file's values first
            self.dit.set_weight(name, None)
        self.merged = set()
        p = plan(adapters, self.dit.get_weight)
        if self.mode == "merge":
            for name in p.modules:
                w = p.merged(name, self.dit.get_weight(name))
                if not np.all(np.isfinite(w)):
                    for done in self.merged:  # no half-merged DiT: the file's weights again
                        self.dit.set_weight(done, None)
                    self.merged = set()
                    files = ", ".join(a.path for a, _ in adapters)
                    raise AdapterError(f"{name}: the merged weight contains NaN or infinity (adapters: {files}; "
                                       "their scales, or their values, are too large); no adapter is applied")
                self.dit.set_weight(name, w)
                self.merged.add(name)
        elif p.modules or self.runtime:
            self.dit.set_adapters([(name, rows, [(k, a, b, r, float(s)) for k, a, b, r, s in branches])
                                   for name, (rows, branches) in p.modules.items()])
            self.runtime = bool(p.modules)
