"""acestep-ggml: ACE-Step 1.5 music generation on GGML.

The compute runs in C++ GGML graphs inside the native extension ``acestep_ggml._core``;
this package prepares inputs, calls the core and writes outputs.
"""
from __future__ import annotations

import os as _os
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

# ggml's CPU threads meet at an OpenMP barrier after every op.  libgomp's default waits there by
# spinning, which on a machine with more runnable threads than cores burns the time slice of the
# very thread being waited for: LM decode with 2 threads at load average 16 on 2 cores took
# 4.1 s/token, 0.17 s with passive waiting (1 thread: 0.28 s).  Read when libgomp loads, so
# set before _core is imported; a user's own setting wins.
if not any(k in _os.environ for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")):
    _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

from . import _core  # noqa: E402
from ._core import DeviceError, GGUFFile, InputError, ModelFileError

try:
    __version__ = _version("acestep-ggml")
except PackageNotFoundError:  # running from a source tree
    __version__ = _core.build_info()["version"]


def backends() -> list[dict]:
    """The ggml devices this build can run on: name, description, type, memory."""
    return _core.backends()


# The models (each a native graph), then the stages built from them.
from .audio import check_output_path, load_audio, read_audio, write_audio  # noqa: E402
from .dit import DiT  # noqa: E402
from .exchange import Request  # noqa: E402
from .lm import LM  # noqa: E402
from .pipeline import Pipeline, Synthesizer, SynthResult, generate  # noqa: E402
from .text import AudioTokenizer, ConditionEncoder, Detokenizer, TextEncoder  # noqa: E402
from .tokenizer import Tokenizer  # noqa: E402
from .vae import VAE  # noqa: E402

__all__ = [
    "DeviceError", "GGUFFile", "InputError", "ModelFileError", "backends", "__version__", "AudioTokenizer", "ConditionEncoder",
    "Detokenizer", "DiT", "LM", "Pipeline", "Request", "SynthResult", "Synthesizer", "TextEncoder", "Tokenizer",
    "VAE", "check_output_path", "generate", "load_audio", "read_audio", "write_audio",
]
