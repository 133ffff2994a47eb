"""Where models come from: a folder of GGUFs, a checkpoint folder (converted once into a
cache), or a Hugging Face hub repo (downloaded with huggingface_hub into its own cache).

Everything resolves to a folder of GGUF files, which `find_models` sorts by kind.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import GGUFFile, ModelFileError

# The published GGUFs (acestep.cpp's files) and the original checkpoints.
GGUF_REPO = "Serveurperso/ACE-Step-1.5-GGUF"
CHECKPOINT_REPO = "ACE-Step/Ace-Step1.5"
# What `download` fetches from GGUF_REPO by default: turbo DiT, text encoder, VAE and the
# smallest LM, at the types that run fastest on a CPU for their size.
DEFAULT_GGUF_FILES = (
    "acestep-v15-turbo-Q8_0.gguf",
    "Qwen3-Embedding-0.6B-Q8_0.gguf",
    "vae-BF16.gguf",
    "acestep-5Hz-lm-0.6B-Q8_0.gguf",
)
KINDS = ("acestep-dit", "acestep-text-enc", "acestep-vae", "acestep-lm")


class ModelsNotFound(FileNotFoundError):
    """No usable model files where we looked; the message says how to get them."""


def cache_dir() -> Path:
    """Our own cache (converted checkpoints): $ACESTEP_GGML_HOME, else ~/.cache/acestep-ggml."""
    return Path(os.environ.get("ACESTEP_GGML_HOME", Path.home() / ".cache" / "acestep-ggml"))


@dataclass
class ModelSet:
    """The GGUF files of one folder, by kind (general.architecture)."""

    folder: Path
    files: dict[str, list[Path]] = field(default_factory=dict)

    def get(self, kind: str, prefer: str | None = None) -> Path:
        """The file of that kind; with several, the one whose name contains `prefer` (an LM size
        like "1.7B" or a DiT variant like "turbo"), else the first by name."""
        found = self.files.get(kind, [])
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


def choose_lm(files: list[Path], available: int | None) -> Path:
    """The LM a machine can hold: the largest file whose size times LM_MEMORY_FACTOR fits in
    ``available`` bytes; the smallest when none fits or the memory is unknown."""
    size = {p: p.stat().st_size for p in files}
    by_size = sorted(files, key=lambda p: (size[p], p.name))
    if available is not None:
        fitting = [p for p in by_size if size[p] * LM_MEMORY_FACTOR <= available]
        if fitting:
            return fitting[-1]
    return by_size[0]


def find_models(folder: str | os.PathLike) -> ModelSet:
    """Sort the *.gguf files of a folder by kind; files of other kinds are ignored."""
    folder = Path(folder)
    result = ModelSet(folder)
    for path in sorted(folder.glob("*.gguf")):
        try:
            arch = GGUFFile(str(path)).architecture
        except ModelFileError:
            continue  # a partial download or an unrelated file: not ours to use
        if arch in KINDS:
            result.files.setdefault(arch, []).append(path)
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


def snapshot(repo_id: str, allow_patterns: list[str] | None = None, quiet: bool = False) -> Path:
    """A hub repo in huggingface_hub's cache (downloaded unless HF_HUB_OFFLINE=1)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if quiet:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    # huggingface_hub reads these once, at import; read them per call so a process can change them.
    cache = os.environ.get("HF_HUB_CACHE") or None
    offline = os.environ.get("HF_HUB_OFFLINE", "0").strip().upper() in ("1", "ON", "YES", "TRUE")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns, cache_dir=cache,
                                      local_files_only=offline))
    except LocalEntryNotFoundError as e:
        raise ModelsNotFound(
            f"{repo_id} is not in the Hugging Face cache and could not be downloaded ({e.__class__.__name__}); "
            f"connect to the network (and unset HF_HUB_OFFLINE), or pass a local folder of GGUFs") from None


def resolve(source: str | os.PathLike, dtype: str = "bf16", quiet: bool = False) -> Path:
    """A folder of GGUFs from a GGUF folder, a checkpoint folder or a hub repo id."""
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
    folder = snapshot(str(source), quiet=quiet)
    return resolve(folder, dtype=dtype, quiet=quiet)


def download(repo_id: str = GGUF_REPO, files: tuple[str, ...] = DEFAULT_GGUF_FILES, quiet: bool = False) -> Path:
    """Fetch the default model set (or the named files of a repo) into the hub cache."""
    return snapshot(repo_id, allow_patterns=list(files), quiet=quiet)
