"""Where models come from: a folder of GGUFs, a checkpoint folder (converted once into a
cache), or a Hugging Face hub repo (downloaded with huggingface_hub into its own cache).

Everything resolves to a folder of GGUF files, which `find_models` sorts by kind.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import GGUFFile
from .errors import ModelFileError, ModelsNotFound

# The published GGUFs (acestep.cpp's files) and the original checkpoints.
GGUF_REPO = "Serveurperso/ACE-Step-1.5-GGUF"
CHECKPOINT_REPO = "ACE-Step/Ace-Step1.5"
KINDS = ("acestep-dit", "acestep-text-enc", "acestep-vae", "acestep-lm")
SYNTH_KINDS = KINDS[:3]  # what the synth stage reads; the LM is fetched only when it runs

# File names, as published (acestep.cpp) and as `convert` writes them: <component>-<TYPE>.gguf.
# The component tells the kind, so a hub file's kind is known before it is fetched.
_FILE_NAME = re.compile(r"^(?P<component>.+)-(?P<type>BF16|F16|F32|Q\d\w*)\.gguf$", re.IGNORECASE)
_COMPONENT_KINDS = (("acestep-5Hz-lm-", "acestep-lm"), ("acestep-v", "acestep-dit"),
                    ("Qwen3-Embedding-", "acestep-text-enc"), ("vae", "acestep-vae"))
# Among files of one kind, the first of these ranks (`rank`) wins; the LM is chosen by memory instead.
# DiT variants: turbo (8 steps, no guidance) before SFT before base (50 guided steps each), then
# the XL ones (a 4B DiT: about twice the memory and time of the 2B, docs/models.md), the default
# only when no 2B file is there; other variants (turbo-shift3, sftturbo50, ...) after them.
DIT_VARIANTS = ("turbo", "sft", "base", "xl-turbo", "xl-sft", "xl-base")
# Weight types, fastest first for the DiT and the text encoder, whose matmuls take hundreds of
# tokens at once: there 16-bit floats beat the quants, whose unpacking costs more than their
# smaller reads save (README benchmarks, AVX2 CPU: DiT BF16 7.4-8.5 s, F16 7.6 s, Q8_0 9.9 s).
# BF16 first: a CPU with AVX512-BF16 multiplies it natively, any other CPU gets it as F16 at load
# (Backend::bf16_as_f16), at F16's speed.  F32 last: twice the memory of the 16-bit types.  Types
# not listed come after all of these.  (Measured on CPUs; GPUs not yet.)
WEIGHT_TYPES = ("BF16", "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q4_0", "F32")


def cache_dir() -> Path:
    """Our own cache (converted checkpoints): $ACESTEP_GGML_HOME, else ~/.cache/acestep-ggml."""
    return Path(os.environ.get("ACESTEP_GGML_HOME", Path.home() / ".cache" / "acestep-ggml"))


@dataclass
class ModelSet:
    """The GGUF files of one folder, by kind (general.architecture)."""

    folder: Path
    files: dict[str, list[Path]] = field(default_factory=dict)
    # The files as the scan opened them: the models take them from here, so that a file is parsed
    # once per set, not once per model built from it.
    opened: dict[Path, GGUFFile] = field(default_factory=dict, repr=False, compare=False)

    def open(self, path: str | os.PathLike) -> GGUFFile:
        """The open file at ``path``: the scan's own, else opened now and kept."""
        path = Path(path)
        if path not in self.opened:
            self.opened[path] = GGUFFile(str(path))
        return self.opened[path]

    def get(self, kind: str, prefer: str | None = None) -> Path:
        """The best file of that kind by `rank`; with `prefer` (an LM size like "1.7B" or a DiT
        variant like "sft"), the best of those whose name contains it."""
        found = sorted(self.files.get(kind, []), key=lambda p: rank(kind, p.name))
        if not found:
            raise ModelsNotFound(
                f"no {kind} GGUF in {self.folder}; run `python -m acestep_ggml download` to fetch the "
                f"default models, or `python -m acestep_ggml convert CHECKPOINTS {self.folder}`")
        if prefer:
            matching = [p for p in found if prefer in p.name]
            if not matching:
                names = ", ".join(p.name for p in found)
                raise ModelsNotFound(f"no {kind} GGUF matching {prefer!r} in {self.folder} (have: {names})")
            return matching[0]
        return found[0]


def kind_of_name(name: str) -> str | None:
    """The kind of a GGUF by its file name (published or `convert` names), None if not ours."""
    m = _FILE_NAME.match(name)
    if m:
        for prefix, kind in _COMPONENT_KINDS:
            if m["component"].startswith(prefix):
                return kind
    return None


def rank(kind: str, name: str) -> tuple:
    """Sort key among files of one kind, best first: the DiT's variant (DIT_VARIANTS), then the
    weight type (WEIGHT_TYPES), then the name."""
    m = _FILE_NAME.match(name)
    wtype = m["type"].upper() if m else ""
    key = (WEIGHT_TYPES.index(wtype) if wtype in WEIGHT_TYPES else len(WEIGHT_TYPES), name)
    if kind != "acestep-dit":
        return key
    variant = m["component"].split("-", 2)[-1] if m else ""  # acestep-v15-<variant>
    return (DIT_VARIANTS.index(variant) if variant in DIT_VARIANTS else len(DIT_VARIANTS), *key)


# An LM needs its weights plus room for the KV cache (cond + uncond) and work buffers.
LM_MEMORY_FACTOR = 1.3


def available_memory(device: str = "cpu") -> int | None:
    """Bytes a model may use on ``device``: the free memory ggml reports for a GPU, else the
    system's available memory (Linux MemAvailable, else free pages); None if unknown."""
    if not device.startswith("cpu"):
        from . import backends

        gpus = [d for d in backends() if d["type"] != "cpu"]
        index = int(device.split(":", 1)[1]) if ":" in device and device.split(":", 1)[1].isdigit() else 0
        if index < len(gpus) and gpus[index]["memory_free"]:
            return int(gpus[index]["memory_free"])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def choose_lm(files: list, available: int | None, size: dict | None = None):
    """The LM a machine can hold: the largest file whose size times LM_MEMORY_FACTOR fits in
    ``available`` bytes; the smallest when none fits or the memory is unknown.  ``size``: bytes
    of each file (default: its size on disk), for files not fetched yet."""
    size = size or {p: p.stat().st_size for p in files}
    by_size = sorted(files, key=lambda p: (size[p], str(p)))
    if available is not None:
        fitting = [p for p in by_size if size[p] * LM_MEMORY_FACTOR <= available]
        if fitting:
            return fitting[-1]
    return by_size[0]


def choose(sizes: dict[str, int], kinds=KINDS, device: str = "cpu", prefer: dict[str, str] | None = None
           ) -> dict[str, str]:
    """The file of each kind to use, from file names and sizes: the best by `rank`, and the LM
    that `choose_lm` picks for this device; with a preference for a kind (kind -> part of the
    name, e.g. {"acestep-lm": "1.7B"}), the best whose name contains it, as ModelSet.get picks."""
    prefer = prefer or {}
    by_kind: dict[str, list[str]] = {}
    for name in sizes:
        by_kind.setdefault(kind_of_name(name), []).append(name)
    chosen = {}
    for kind in kinds:
        names = sorted(by_kind.get(kind, []), key=lambda n: rank(kind, n))
        if prefer.get(kind):
            names = [n for n in names if prefer[kind] in n]
        elif kind == "acestep-lm" and names:
            names = [choose_lm(names, available_memory(device), size=sizes)]
        if names:
            chosen[kind] = names[0]
    return chosen


def find_models(folder: str | os.PathLike) -> ModelSet:
    """Sort the *.gguf files of a folder by kind; files of other kinds are ignored."""
    folder = Path(folder)
    result = ModelSet(folder)
    for path in sorted(folder.glob("*.gguf")):
        try:
            f = GGUFFile(str(path))
        except ModelFileError:
            continue  # a partial download or an unrelated file: not ours to use
        if f.architecture in KINDS:
            result.files.setdefault(f.architecture, []).append(path)
            result.opened[path] = f
    return result


def _is_checkpoint_dir(folder: Path) -> bool:
    return (folder / "model_index.json").is_file() or (folder / "config.json").is_file() or any(
        (sub / "config.json").is_file() for sub in folder.iterdir() if sub.is_dir())


def _converted_dir(source: Path, dtype: str) -> Path:
    key = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "converted" / f"{source.name}-{key}" / dtype


def _source_signature(source: Path) -> str:
    """Sizes and mtimes of the weight files: a changed checkpoint is converted again."""
    entries = []
    for p in sorted(source.rglob("*")):
        if p.suffix in (".safetensors", ".json", ".pt") and p.is_file():
            st = p.stat()
            entries.append(f"{p.relative_to(source)}:{st.st_size}:{int(st.st_mtime)}")
    return hashlib.sha1("\n".join(entries).encode()).hexdigest()


def convert_cached(source: Path, dtype: str = "bf16", quiet: bool = False) -> Path:
    """Convert a checkpoint folder once into our cache; later calls reuse the result."""
    from .convert import convert

    out = _converted_dir(source, dtype)
    stamp = out / "source.json"
    signature = _source_signature(source)
    if stamp.is_file() and json.loads(stamp.read_text()).get("signature") == signature:
        return out
    out.mkdir(parents=True, exist_ok=True)
    convert(source, out, dtype=dtype, quiet=quiet)
    stamp.write_text(json.dumps({"source": str(source.resolve()), "signature": signature}))
    return out


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; read it per call so a process can change it.
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().upper() in ("1", "ON", "YES", "TRUE")


def snapshot(repo_id: str, allow_patterns: list[str] | None = None, quiet: bool = False,
             cached_only: bool = False) -> Path:
    """A hub repo in huggingface_hub's cache (downloaded unless HF_HUB_OFFLINE=1 or cached_only)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    if quiet:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    cache = os.environ.get("HF_HUB_CACHE") or None  # read per call, as HF_HUB_OFFLINE
    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns, cache_dir=cache,
                                      local_files_only=cached_only or _offline()))
    except LocalEntryNotFoundError as e:
        raise ModelsNotFound(
            f"{repo_id} is not in the Hugging Face cache and could not be downloaded ({e.__class__.__name__}); "
            f"connect to the network (and unset HF_HUB_OFFLINE), or pass a local folder of GGUFs") from None
    except (HfHubHTTPError, HFValidationError) as e:  # no such repo, gated, a bad repo id, ...
        raise ModelsNotFound(f"{repo_id} could not be downloaded: {e}") from None


def _repo_files(repo_id: str) -> dict[str, int]:
    """Name -> size of the files at the top of a hub repo, asked of the hub."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    return {f.path: f.size for f in HfApi().list_repo_tree(repo_id) if isinstance(f, RepoFile)}


def fetch(repo_id: str, kinds=KINDS, device: str = "cpu", prefer: dict[str, str] | None = None,
          quiet: bool = False) -> Path:
    """The snapshot folder of a hub repo holding the files `choose` picks for `kinds`, fetching
    only those (a repo of checkpoints, with no GGUFs, is fetched whole to be converted).  Offline,
    or when the hub cannot be reached, the choice is made among the files already cached."""
    if os.path.isfile((prefer or {}).get("acestep-lm") or ""):
        kinds = [k for k in kinds if k != "acestep-lm"]  # the LM is a file of the user's
    sizes, unlisted, folder = None, None, None
    if not _offline():
        try:
            sizes = _repo_files(repo_id)
        # No network, hub down, unknown repo: the cache decides, as in snapshot_download.  The
        # network errors' classes differ between huggingface_hub versions (requests, httpx).
        except Exception as e:  # noqa: BLE001
            unlisted = e
    if sizes is None:
        try:
            folder = snapshot(repo_id, quiet=quiet, cached_only=True)
        except ModelsNotFound:
            if unlisted is None:
                raise
            raise ModelsNotFound(f"{repo_id} could not be listed on the hub ({unlisted.__class__.__name__}: "
                                 f"{unlisted}) and is not in the Hugging Face cache") from None
        sizes = {p.name: p.stat().st_size for p in folder.glob("*.gguf")}
    elif not any(name.endswith(".gguf") for name in sizes):
        return snapshot(repo_id, quiet=quiet)
    chosen = choose(sizes, kinds, device, prefer)
    if not quiet and chosen:
        print(f"{repo_id}: " + ", ".join(chosen[k] for k in KINDS if k in chosen), file=sys.stderr)
    return folder or snapshot(repo_id, allow_patterns=sorted(chosen.values()), quiet=quiet)


def is_repo_id(source: str | os.PathLike) -> bool:
    """A hub repo id (owner/name) that is not a local path."""
    return not Path(source).expanduser().exists() and bool(_REPO_ID.match(str(source)))


def resolve(source: str | os.PathLike, dtype: str = "bf16", quiet: bool = False, *, kinds=KINDS,
            device: str = "cpu", prefer: dict[str, str] | None = None) -> Path:
    """A folder of GGUFs from a GGUF folder, a checkpoint folder or a hub repo id.  From a hub
    repo only the files of `kinds` that `choose` picks for `device` (and `prefer`) are fetched."""
    path = Path(source).expanduser()
    if path.is_dir():
        if any(path.glob("*.gguf")):
            return path
        if _is_checkpoint_dir(path):
            return convert_cached(path, dtype=dtype, quiet=quiet)
        raise ModelsNotFound(f"{path} holds neither GGUF files nor checkpoints; run `python -m acestep_ggml "
                             f"download` for the default models, or `python -m acestep_ggml convert CHECKPOINTS {path}`")
    if path.exists():
        raise ModelsNotFound(f"{path} is a file; pass the folder that holds the models")
    if not _REPO_ID.match(str(source)):
        raise ModelsNotFound(f"{source} is neither a folder nor a hub repo id (owner/name)")
    folder = fetch(str(source), kinds, device, prefer, quiet=quiet)
    return resolve(folder, dtype=dtype, quiet=quiet)


def download(repo_id: str = GGUF_REPO, files: tuple[str, ...] | None = None, quiet: bool = False,
             device: str = "cpu") -> Path:
    """Fetch the default model set (what `generate` uses on `device`), or the named files or
    patterns of a repo, into the hub cache."""
    if files is None:
        return fetch(repo_id, KINDS, device, quiet=quiet)
    return snapshot(repo_id, allow_patterns=list(files), quiet=quiet)
