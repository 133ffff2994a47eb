"""acestep-ggml: ACE-Step 1.5 music generation on GGML.

The compute runs in C++ GGML graphs inside the native extension ``acestep_ggml._core``;
this package prepares inputs, calls the core and writes outputs.
"""
from __future__ import annotations

import os
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version
from pathlib import Path

# ggml's CPU threads meet at an OpenMP barrier after every op.  libgomp's default waits there by
# spinning, which on a machine with more runnable threads than cores burns the time slice of the
# very thread being waited for: LM decode with 2 threads at load average 16 on 2 cores took
# 4.1 s/token, 0.17 s with passive waiting (1 thread: 0.28 s).  Read when libgomp loads, so
# set before _core is imported; a user's own setting wins.
if not any(k in os.environ for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")):
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

# ggml's libraries live in lib/ (the extension's RPATH on Linux and macOS); Windows has no RPATH.
if sys.platform == "win32" and (Path(__file__).parent / "lib").is_dir():
    os.add_dll_directory(str(Path(__file__).parent / "lib"))

# Importing the extension loads, from lib/, the CPU backend variant that suits this CPU.
from . import _core  # noqa: E402
from ._core import GGUFFile  # noqa: E402
from .errors import (  # noqa: E402
    AcestepError,
    AdapterError,
    ConstraintError,
    DeviceError,
    ExchangeError,
    InputError,
    MemoryRefused,
    ModelFileError,
    ModelsNotFound,
)

try:
    __version__ = _version("acestep-ggml")
except PackageNotFoundError:  # running from a source tree
    __version__ = _core.build_info()["version"]


def _load_backend_plugins() -> None:
    """GPU backends come as plugin wheels (acestep-ggml-cuda12, -cuda13, -vulkan), each holding only
    ggml's library for that backend. Each declares an ``acestep_ggml.backends`` entry point naming
    its package; every ggml library in that package's folder is loaded. One that cannot load (no
    driver, say) is reported and skipped, so the CPU still works."""
    import importlib.util
    import warnings
    from importlib.metadata import entry_points

    eps = entry_points()
    group = eps.select(group="acestep_ggml.backends") if hasattr(eps, "select") else eps.get("acestep_ggml.backends", [])
    for ep in group:
        spec = importlib.util.find_spec(ep.value)
        folders = dict.fromkeys(spec.submodule_search_locations or []) if spec else {}
        libs = [f for d in folders for f in sorted(Path(d).glob("*ggml-*")) if f.suffix in (".so", ".dll")]
        if not libs:
            warnings.warn(f"acestep-ggml: the {ep.name} plugin ({ep.value}) holds no ggml library", stacklevel=2)
        for lib in libs:
            try:
                _core.load_backend(str(lib))
            except RuntimeError as e:
                warnings.warn(f"acestep-ggml: the {ep.name} plugin: {e}", stacklevel=2)


_load_backend_plugins()


def backends() -> list[dict]:
    """The ggml devices this build can run on: name, description, type, memory."""
    return _core.backends()


# The models (each a native graph), then the stages built from them.
from .audio import check_output_path, load_audio, read_audio, write_audio  # noqa: E402
from .lm import LM  # noqa: E402
from .models import VAE, AudioTokenizer, ConditionEncoder, Detokenizer, DiT, TextEncoder  # noqa: E402
from .pipeline import Pipeline, Synthesizer, SynthResult, generate, understand  # noqa: E402
from .request import Request  # noqa: E402
from .tokenizer import Tokenizer  # noqa: E402

__all__ = [
    "AcestepError", "AdapterError", "ConstraintError", "DeviceError", "ExchangeError", "InputError",
    "MemoryRefused", "ModelFileError", "ModelsNotFound",
    "GGUFFile", "backends", "__version__", "AudioTokenizer", "ConditionEncoder", "Detokenizer", "DiT", "LM", "Pipeline",
    "Request", "SynthResult", "Synthesizer", "TextEncoder", "Tokenizer", "VAE", "check_output_path", "generate",
    "load_audio", "read_audio", "understand", "write_audio",
]
