"""Changing one metadata value of a GGUF file in place, every other byte kept: the value's bytes
are replaced, and when their length changes the tensor data moves to the next aligned offset
(tensor offsets are relative to it, so they stay valid).  Also where each part of a file lies,
for the byte fuzzer."""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFValueType as V

_SCALAR = {
    V.UINT8: "<B",
    V.INT8: "<b",
    V.UINT16: "<H",
    V.INT16: "<h",
    V.UINT32: "<I",
    V.INT32: "<i",
    V.FLOAT32: "<f",
    V.BOOL: "<B",
    V.UINT64: "<Q",
    V.INT64: "<q",
    V.FLOAT64: "<d",
}


@dataclass
class Layout:
    """Byte ranges of a GGUF: [0, kv_start) the fixed header, the metadata, the tensor infos, the data."""

    kv_start: int
    kv_end: int
    infos_end: int
    data_start: int
    alignment: int
    fields: dict  # name -> (value_start, value_end, types)
    size: int
    values: dict  # name -> value, for the fields that are not arrays of strings


_SIZES = {
    V.UINT8: 1,
    V.INT8: 1,
    V.UINT16: 2,
    V.INT16: 2,
    V.UINT32: 4,
    V.INT32: 4,
    V.FLOAT32: 4,
    V.BOOL: 1,
    V.UINT64: 8,
    V.INT64: 8,
    V.FLOAT64: 8,
}


@functools.lru_cache(maxsize=32)
def _layout(path: str, mtime: float) -> Layout:
    # A reader of our own: gguf.GGUFReader takes seconds over the LM's 215669 tokens.
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        (v,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v

    def string() -> str:
        nonlocal pos
        n = take("<Q")
        pos += n
        return data[pos - n : pos].decode("utf-8", "replace")

    def value(t: int, keep: bool):
        nonlocal pos
        if t == V.STRING:
            return string()
        if t == V.ARRAY:
            sub, n = take("<I"), take("<Q")
            if sub == V.STRING:
                for _ in range(n):
                    length = take("<Q")
                    pos += length
                return None
            if sub == V.ARRAY:
                raise ValueError("nested arrays")
            size = _SIZES[V(sub)]
            out = np.frombuffer(data, dtype=_SCALAR[V(sub)], count=n, offset=pos).tolist() if keep else None
            pos += size * n
            return out
        return take(_SCALAR[V(t)])

    assert data[:4] == b"GGUF", path
    pos = 8
    n_tensors, n_kv = take("<Q"), take("<Q")
    fields, values = {}, {}
    for _ in range(n_kv):
        name = string()
        t = take("<I")
        start = pos
        sub = struct.unpack_from("<I", data, pos)[0] if t == V.ARRAY else None
        v = value(t, keep=True)
        fields[name] = (start, pos, [V(t)] + ([V(sub)] if sub is not None else []))
        if v is not None:
            values[name] = bool(v) if t == V.BOOL else v
    kv_end = pos
    for _ in range(n_tensors):
        string()
        nd = take("<I")
        pos += 8 * nd + 4 + 8  # the dimensions, the type, the offset
    alignment = int(values.get("general.alignment", 32))
    data_start = pos + (-pos) % alignment
    return Layout(24, kv_end, pos, data_start, alignment, fields, len(data), values)


def layout(path: Path) -> Layout:
    """Where the parts of a GGUF lie (cached while the file is unchanged)."""
    return _layout(str(path), Path(path).stat().st_mtime)


def encode(types: list, value) -> bytes:
    """The value's bytes as GGUF stores them after the value type: a scalar, a string, an array."""
    t = types[0]
    if t == V.STRING:
        b = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)
        return struct.pack("<Q", len(b)) + b
    if t == V.ARRAY:
        sub = types[-1]
        out = struct.pack("<IQ", int(sub), len(value))
        return out + b"".join(encode([sub], v) for v in value)
    fmt = _SCALAR[t]
    if fmt in ("<f", "<d"):
        return struct.pack(fmt, float(value))
    bits = struct.calcsize(fmt) * 8
    v = int(value) % (1 << bits)  # wraps: -1 as a u32 is 0xFFFFFFFF
    if fmt.islower() and v >= 1 << (bits - 1):
        v -= 1 << bits
    return struct.pack(fmt, v)


def splice(data: bytes, lay: Layout, start: int, end: int, new: bytes) -> bytes:
    """`data` with [start, end) of its header replaced by `new`, the tensor data realigned."""
    assert lay.kv_start <= start <= end <= lay.infos_end
    head = data[:start] + new + data[end : lay.infos_end]
    pad = (-len(head)) % lay.alignment
    return head + b"\0" * pad + data[lay.data_start :]


def set_value(src: Path, dst: Path, key: str, value) -> None:
    """dst = src with metadata `key` set to `value` (of the key's own type)."""
    data = Path(src).read_bytes()
    lay = layout(src)
    start, end, types = lay.fields[key]
    Path(dst).write_bytes(splice(data, lay, start, end, encode(types, value)))


def read_value(path: Path, key: str):
    return layout(path).values[key]
