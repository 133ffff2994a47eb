"""Reading checkpoints without torch: safetensors by header + memmap, `.pt` tensors by a
restricted unpickler.  Nothing here loads a whole file into memory."""
from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

from ..errors import ModelFileError

# safetensors dtype -> numpy dtype of the raw storage (BF16 kept as its 16 bits).
_ST_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"), "F64": np.dtype("<f8")}
FLOAT_SOURCE_DTYPES = frozenset(_ST_DTYPES)


class SafetensorsFile:
    """Tensor index of one .safetensors file; data is memory-mapped on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelFileError(f"{self.path}: not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise ModelFileError(f"{self.path}: not a safetensors file (header length {n} beyond the file)")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ModelFileError(f"{self.path}: not a safetensors file (bad JSON header: {e})") from None
        if not isinstance(header, dict):
            raise ModelFileError(f"{self.path}: not a safetensors file (the header is not a JSON object)")
        header.pop("__metadata__", None)
        self._base = 8 + n
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            try:
                start, end = (int(v) for v in info["data_offsets"])
                entry = (str(info["dtype"]), tuple(int(d) for d in info["shape"]), start, end)
            except (KeyError, TypeError, ValueError):
                raise ModelFileError(f"{self.path}: tensor {name} has no valid dtype, shape and data_offsets "
                                     "in the header") from None
            if self._base + end > size:
                raise ModelFileError(f"{self.path}: truncated: tensor {name} ends beyond the file")
            self.entries[name] = entry
        self._mm: np.memmap | None = None

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]

    def dtype(self, name: str) -> str:
        return self.entries[name][0]

    def raw(self, name: str) -> np.ndarray:
        """The stored values as a read-only memmapped array (BF16 as uint16 bits)."""
        dtype, shape, start, end = self.entries[name]
        if dtype not in _ST_DTYPES:
            raise ModelFileError(f"{self.path}: tensor {name} has dtype {dtype}, not a float type")
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._mm[self._base + start:self._base + end].view(_ST_DTYPES[dtype]).reshape(shape)


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round to nearest even, as torch's `.to(torch.bfloat16)`; NaN stays a quiet NaN."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
    nan = np.isnan(x)
    if nan.any():
        rounded = np.where(nan, (bits >> np.uint32(16)) | np.uint32(0x40), rounded)
    return rounded.astype(np.uint16)


def as_f32(raw: np.ndarray) -> np.ndarray:
    """float32 values of a raw array from SafetensorsFile.raw."""
    if raw.dtype == np.uint16:
        return bf16_bits_to_f32(raw)
    return np.asarray(raw, dtype=np.float32)


# ---------------------------------------------------------------------------
# torch.save files

class _Storage:
    def __init__(self, dtype: np.dtype, key: str):
        self.dtype, self.key = dtype, key


_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "DoubleStorage": np.dtype("<f8"),
}


def load_torch_tensor(path: str | Path) -> np.ndarray:
    """The tensor saved in a `torch.save` zip file, as float32, without importing torch.

    Only tensor rebuilding is allowed by the unpickler: anything else in the pickle
    (arbitrary classes, functions) is refused, so a hostile file cannot run code.
    """
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ModelFileError(f"{path}: not a torch.save zip file") from None
    with zf:
        names = zf.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise ModelFileError(f"{path}: no data.pkl inside; not a torch.save file")
        prefix = pkl[: -len("data.pkl")]

        def rebuild(storage, offset, size, stride, *_):
            raw = zf.read(f"{prefix}data/{storage.key}")
            flat = np.frombuffer(raw, dtype=storage.dtype)
            values = bf16_bits_to_f32(flat) if storage.dtype == np.uint16 else flat.astype(np.float32)
            return np.lib.stride_tricks.as_strided(
                values[offset:], shape=tuple(size), strides=tuple(s * 4 for s in stride)).copy()

        class Unpickler(pickle.Unpickler):
            def find_class(self, module, name):
                if module == "torch._utils" and name == "_rebuild_tensor_v2":
                    return rebuild
                if module == "torch" and name in _STORAGE_DTYPES:
                    return name
                if module == "collections" and name == "OrderedDict":
                    import collections
                    return collections.OrderedDict
                raise ModelFileError(f"{path}: refusing to load {module}.{name}")

            def persistent_load(self, pid):
                if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and pid[1] in _STORAGE_DTYPES):
                    raise ModelFileError(f"{path}: unsupported storage {pid!r}")
                return _Storage(_STORAGE_DTYPES[pid[1]], str(pid[2]))

        with zf.open(pkl) as f:
            try:
                obj = Unpickler(f).load()
            except ModelFileError:
                raise
            # A damaged pickle or a record that names data the zip lacks.
            except (pickle.UnpicklingError, EOFError, KeyError, IndexError, TypeError, ValueError) as e:
                raise ModelFileError(f"{path}: not a readable torch.save file ({e.__class__.__name__}: {e})") from None
    if isinstance(obj, dict):
        arrays = [v for v in obj.values() if isinstance(v, np.ndarray)]
        if len(arrays) == 1:
            obj = arrays[0]
    if not isinstance(obj, np.ndarray):
        raise ModelFileError(f"{path}: expected one saved tensor, found {type(obj).__name__}")
    return obj
