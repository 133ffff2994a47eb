"""One family of errors: every error this package raises on purpose is an ``AcestepError``.

Each class also keeps the builtin base it had before the family existed, so an ``except
ValueError`` written against an older version still catches a bad model file or a bad input.
The native core raises these same classes (its C++ errors are translated in the bindings).
"""
from __future__ import annotations


class AcestepError(Exception):
    """Base of every error acestep-ggml raises on purpose; catch it to catch them all."""


class ModelFileError(AcestepError, ValueError):
    """A model file (GGUF, checkpoint, adapter) is missing a part, corrupt, or inconsistent."""


class AdapterError(ModelFileError):
    """An adapter (LoRA, DoRA, LoKr) that cannot apply to this DiT: an unknown format, another base
    model, a shape that does not fit, NaN or infinity; the message names the file and the key."""


class InputError(AcestepError, ValueError):
    """A caller passed something the models cannot take: a shape, a range, a value."""


class DeviceError(AcestepError, RuntimeError):
    """A device cannot run or hold what was asked of it (or is not there)."""


class MemoryRefused(DeviceError):
    """A request would need more memory than the device or the host has free: refused before any
    work starts.  ``need`` and ``available`` are the two figures in bytes."""

    def __init__(self, message: str, need: int = 0, available: int = 0):
        super().__init__(message)
        self.need, self.available = need, available


class ExchangeError(AcestepError, ValueError):
    """An exchange directory is malformed, or a field in it is."""


class ModelsNotFound(AcestepError, FileNotFoundError):
    """Model files that are needed are not there: no GGUF of a kind in a folder, a checkpoint's
    folder or one of its files, or a repo on the hub."""


class ConstraintError(AcestepError, ValueError):
    """Constrained decoding was asked to accept a token its grammar does not allow here."""


__all__ = ["AcestepError", "AdapterError", "ConstraintError", "DeviceError", "ExchangeError", "InputError",
           "MemoryRefused", "ModelFileError", "ModelsNotFound"]
