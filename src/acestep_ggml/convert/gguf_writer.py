"""A streaming GGUF v3 writer.

The whole layout (metadata, tensor infos, offsets) is planned before any tensor data
is produced, so tensors can be converted and written one at a time: peak memory is one
tensor chunk, never the model.  gguf-py is deliberately not used here; the tests read
our files back with it to prove compatibility.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..errors import InputError, ModelFileError

ALIGNMENT = 32

# ggml_type ids (ggml.h) and their (values per block, bytes per block).
GGML_TYPES = {
    "F32": (0, 1, 4),
    "F16": (1, 1, 2),
    "Q4_0": (2, 32, 18),
    "Q5_0": (6, 32, 22),
    "Q5_1": (7, 32, 24),
    "Q8_0": (8, 32, 34),
    "Q4_K": (12, 256, 144),
    "Q5_K": (13, 256, 176),
    "Q6_K": (14, 256, 210),
    "BF16": (30, 1, 2),
}

# gguf_type ids (gguf.h).
_UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY = 4, 5, 6, 7, 8, 9


def tensor_nbytes(type_name: str, shape: tuple[int, ...]) -> int:
    _, block, size = GGML_TYPES[type_name]
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if n % block:
        raise InputError(f"{type_name} needs a multiple of {block} values, got shape {shape}")
    return n // block * size


def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


@dataclass
class _Planned:
    name: str
    shape: tuple[int, ...]  # PyTorch order
    type_name: str
    produce: Callable[[], Iterable[bytes]]
    nbytes: int = field(init=False)

    def __post_init__(self):
        self.nbytes = tensor_nbytes(self.type_name, self.shape)


class GGUFWriter:
    """Collect metadata and tensor plans, then `write(path)` streams the file.

    Each tensor is given as a producer: a callable returning an iterable of byte chunks
    whose total length must equal the tensor's planned size.
    """

    def __init__(self, architecture: str):
        self._kv: list[bytes] = []
        self._keys: set[str] = set()
        self._tensors: list[_Planned] = []
        self._names: set[str] = set()
        self.add_string("general.architecture", architecture)

    # -- metadata ---------------------------------------------------------
    def _add(self, key: str, payload: bytes) -> None:
        if key in self._keys:
            raise ModelFileError(f"duplicate metadata key {key}")
        self._keys.add(key)
        self._kv.append(_string(key) + payload)

    def add_uint32(self, key: str, value: int) -> None:
        self._add(key, struct.pack("<II", _UINT32, int(value)))

    def add_float32(self, key: str, value: float) -> None:
        self._add(key, struct.pack("<If", _FLOAT32, float(value)))

    def add_bool(self, key: str, value: bool) -> None:
        self._add(key, struct.pack("<IB", _BOOL, 1 if value else 0))

    def add_string(self, key: str, value: str) -> None:
        self._add(key, struct.pack("<I", _STRING) + _string(value))

    def add_int32_array(self, key: str, values: Iterable[int]) -> None:
        arr = np.asarray(list(values), dtype="<i4")
        self._add(key, struct.pack("<IIQ", _ARRAY, _INT32, arr.size) + arr.tobytes())

    def add_raw(self, key: str, payload: bytes) -> None:
        """A key whose value (gguf type id, then the value) is already encoded: a copied key."""
        self._add(key, payload)

    def add_string_array(self, key: str, values: Iterable[str]) -> None:
        values = list(values)
        body = b"".join(_string(v) for v in values)
        self._add(key, struct.pack("<IIQ", _ARRAY, _STRING, len(values)) + body)

    # -- tensors ----------------------------------------------------------
    def add_tensor(self, name: str, shape: tuple[int, ...], type_name: str,
                   produce: Callable[[], Iterable[bytes]]) -> None:
        if name in self._names:
            raise ModelFileError(f"duplicate tensor {name}")
        self._names.add(name)
        self._tensors.append(_Planned(name, tuple(int(d) for d in shape), type_name, produce))

    @property
    def tensors(self) -> list[tuple[str, tuple[int, ...], str, int]]:
        return [(t.name, t.shape, t.type_name, t.nbytes) for t in self._tensors]

    def _header(self) -> bytes:
        out = [b"GGUF", struct.pack("<IQQ", 3, len(self._tensors), len(self._kv))]
        out += self._kv
        offset = 0
        for t in self._tensors:
            ne = tuple(reversed(t.shape)) or (1,)
            out.append(_string(t.name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne)
                       + struct.pack("<IQ", GGML_TYPES[t.type_name][0], offset))
            offset += -(-t.nbytes // ALIGNMENT) * ALIGNMENT
        head = b"".join(out)
        return head + b"\0" * (-len(head) % ALIGNMENT)

    def write(self, path: str | os.PathLike, progress: Callable[[_Planned], None] | None = None) -> Path:
        """Writes `path` through `path.tmp`, renamed only once complete."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(self._header())
                for t in self._tensors:
                    written = 0
                    for chunk in t.produce():
                        f.write(chunk)
                        written += len(chunk)
                    if written != t.nbytes:
                        raise ModelFileError(f"tensor {t.name}: produced {written} bytes, planned {t.nbytes}")
                    f.write(b"\0" * (-written % ALIGNMENT))
                    if progress:
                        progress(t)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path


def iter_rows(n_rows: int, row_values: int, max_values: int = 1 << 18) -> Iterator[slice]:
    """Row slices of at most ~max_values values each (at least one row)."""
    step = max(1, max_values // max(1, row_values))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))
