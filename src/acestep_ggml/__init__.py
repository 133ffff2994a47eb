"""acestep-ggml: ACE-Step 1.5 music generation on GGML.

The compute runs in C++ GGML graphs inside the native extension ``acestep_ggml._core``;
this package prepares inputs, calls the core and writes outputs.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _version

from . import _core
from ._core import DeviceError, GGUFFile, InputError, ModelFileError

try:
    __version__ = _version("acestep-ggml")
except PackageNotFoundError:  # running from a source tree
    __version__ = _core.build_info()["version"]


def backends() -> list[dict]:
    """The ggml devices this build can run on: name, description, type, memory."""
    return _core.backends()


# The models (each a native graph), then the stages built from them.
from .audio import read_audio, write_audio  # noqa: E402
from .dit import DiT  # noqa: E402
from .exchange import Request  # noqa: E402
from .lm import LM  # noqa: E402
from .pipeline import Pipeline, SynthResult, Synthesizer, generate  # noqa: E402
from .text import ConditionEncoder, Detokenizer, TextEncoder  # noqa: E402
from .tokenizer import Tokenizer  # noqa: E402
from .vae import VAE  # noqa: E402

__all__ = [
    "DeviceError", "GGUFFile", "InputError", "ModelFileError", "backends", "__version__",
    "ConditionEncoder", "Detokenizer", "DiT", "LM", "Pipeline", "Request", "SynthResult", "Synthesizer", "TextEncoder",
    "Tokenizer", "VAE", "generate", "read_audio", "write_audio",
]
