"""Quantized GGUF files: which tensor gets which ggml type (one table for `convert --dtype` and
`quantize`), and `quantize_file`, which re-encodes an already converted or downloaded GGUF.

The values are encoded by ggml's own quantizers (``_core.quantize`` -> ``ggml_quantize_chunk``,
no importance matrix).  The rules follow llama.cpp's ``src/llama-quant.cpp`` (functions
``tensor_allows_quantization``, ``llama_tensor_get_type_impl``, ``tensor_type_fallback``; read at
007dbbf), restated for our tensor names; docs/quantization.md gives the table in words.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import InputError, ModelFileError

# --dtype / TYPE -> (file name suffix, ggml type of most matrices).
QUANT_DTYPES = {
    "q8_0": ("Q8_0", "Q8_0"),
    "q6_k": ("Q6_K", "Q6_K"),
    "q5_k_m": ("Q5_K_M", "Q5_K"),
    "q4_k_m": ("Q4_K_M", "Q4_K"),
    "q5_0": ("Q5_0", "Q5_0"),
    "q4_0": ("Q4_0", "Q4_0"),
}
FLOAT_TYPES = ("F32", "F16", "BF16")
# Values per block.  Every tensor quantized here is a Linear weight (ggml_mul_mat) or an embedding
# table (ggml_get_rows, and ggml_mul_mat as the tied LM head): no other op meets a quantized
# tensor, so any backend that multiplies the type runs the file (ggml's CPU backend: all of these).
BLOCK = {"Q4_0": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256}
# A type whose blocks do not divide the row: the next type that can hold it (llama.cpp's
# tensor_type_fallback); rows not even a multiple of 32 keep the float type.
_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
# The _M mixes: these matrices get Q6_K on the layers `use_more_bits` picks.
_MORE_BITS = re.compile(r"\.(v_proj|down_proj)\.weight$")
_LAYER = re.compile(r"^(?P<stack>.*?)layers\.(?P<i>\d+)\.")
# Kinds whose matrices are quantized; the VAE's convolutions (weight-norm pairs, rows of a
# kernel width of 1 to 7 values) always keep their float type, as in acestep.cpp.
QUANTIZED_KINDS = ("dit", "text-enc", "lm")


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's layer pick for the _M mixes: the first and last eighth, and every third layer between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _fits(type_name: str, ne0: int) -> str | None:
    while type_name is not None and ne0 % BLOCK[type_name]:
        type_name = _FALLBACK.get(type_name)
    return type_name


def _is_matrix(name: str, shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 and name.endswith(".weight")


def plan_types(
    kind: str, tensors: Iterable[tuple[str, tuple[int, ...]]], dtype: str, float_type=lambda name: "BF16"
) -> dict[str, str]:
    """The GGUF type of every tensor of one file of `kind` (dit | text-enc | lm | vae) under
    `dtype` (a key of QUANT_DTYPES).  `tensors` are (name, PyTorch-order shape); `float_type(name)`
    is the type a tensor keeps when it is not quantized (the converter's BF16, or the source
    file's own type in `quantize`).

    * quantized at all: only 2-D ``*.weight`` tensors (Linear weights and embedding tables) of the
      DiT, the text encoder and the LM.  Norms, biases, 1-D and 3-D tensors (scale_shift_table,
      null_condition_emb, special tokens, the patch convolutions) and silence_latent keep their
      float type; the runtime reads them into F32 anyway.
    * the LM head (``lm_head.weight``, or ``model.embed_tokens.weight`` when the head is tied to
      it) gets Q6_K for every type but Q8_0, which keeps Q8_0.
    * q4_k_m / q5_k_m: ``v_proj`` and ``down_proj`` get Q6_K on the layers `use_more_bits` picks,
      counted per layer stack (the DiT's decoder, lyric encoder, timbre encoder, pooler and
      detokenizer each count their own layers; a layer's self- and cross-attention v_proj both).
    * a row the type cannot hold: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, and a row that is not
      a multiple of 32 keeps the float type.
    """
    if dtype not in QUANT_DTYPES:
        raise InputError(f"unknown quantization type {dtype!r}; choose one of {', '.join(QUANT_DTYPES)}")
    tensors = [(name, tuple(int(d) for d in shape)) for name, shape in tensors]
    base = QUANT_DTYPES[dtype][1]
    mix = dtype in ("q4_k_m", "q5_k_m")
    names = {name for name, _ in tensors}
    head = "lm_head.weight" if "lm_head.weight" in names else "model.embed_tokens.weight"
    layers: dict[str, int] = {}
    for name, _ in tensors:
        m = _LAYER.match(name)
        if m:
            layers[m["stack"]] = max(layers.get(m["stack"], 0), int(m["i"]) + 1)
    out = {}
    for name, shape in tensors:
        want = None
        if kind in QUANTIZED_KINDS and _is_matrix(name, shape):
            want = base
            if kind == "lm" and name == head:
                want = "Q8_0" if base == "Q8_0" else "Q6_K"
            elif mix and _MORE_BITS.search(name):
                m = _LAYER.match(name)
                if m and use_more_bits(int(m["i"]), layers[m["stack"]]):
                    want = "Q6_K"
            want = _fits(want, shape[-1])
        out[name] = want or float_type(name)
    return out


# ---------------------------------------------------------------------------
# Quantizing a GGUF file


def parallel_chunks(encode, slices, workers: int | None = None):
    """encode(slice) for every slice, in order, on a few threads (ggml's quantizers release the
    GIL; a K-quant encodes ~16 M values per CPU-second), at most 2 x workers chunks in flight."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        pending = deque()
        for sl in slices:
            pending.append(pool.submit(encode, sl))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


_ARCH_KINDS = {"acestep-dit": "dit", "acestep-text-enc": "text-enc", "acestep-lm": "lm", "acestep-vae": "vae"}
_SKIP_KEYS = ("general.architecture", "general.alignment")


def _reader(path: Path):
    import gguf

    try:
        return gguf.GGUFReader(str(path), "r")
    except FileNotFoundError:
        from ..errors import ModelsNotFound

        raise ModelsNotFound(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: a directory; pass a .gguf file") from None
    except (ValueError, KeyError, IndexError, OSError, struct.error) as e:
        raise ModelFileError(f"{path}: not a readable GGUF file ({e.__class__.__name__}: {e})") from None


def quantize_file(src: str | Path, dst: str | Path, dtype: str) -> dict[str, str]:
    """Writes `dst`: `src` (one of our GGUFs or acestep.cpp's, any kind but the VAE) with its
    matrices quantized to `dtype` by the rules of `plan_types`; every metadata key is copied as
    it is.  Tensors that are not quantized keep their bytes and type.  Written through a
    temporary name, renamed only once complete.  Returns {tensor: type written}."""
    from .. import _core
    from .gguf_writer import GGML_TYPES, GGUFWriter, iter_rows

    dtype = dtype.lower()
    if dtype not in QUANT_DTYPES:
        raise InputError(f"unknown quantization type {dtype!r}; choose one of {', '.join(QUANT_DTYPES)}")
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise InputError(f"{dst}: the output must not overwrite the input")
    r = _reader(src)
    arch_field = r.fields.get("general.architecture")
    arch = str(arch_field.contents()) if arch_field is not None else None
    kind = _ARCH_KINDS.get(arch)
    if kind is None:
        raise ModelFileError(f"{src}: general.architecture is {arch!r}, not an ACE-Step model file ({', '.join(_ARCH_KINDS)})")
    if kind not in QUANTIZED_KINDS:
        raise InputError(
            f"{src}: a VAE file ({arch}); the VAE is never quantized (its convolution rows are "
            f"1 to 7 values long), use it as it is"
        )
    tensors = {}
    for t in r.tensors:
        tname = t.tensor_type.name
        if tname not in GGML_TYPES:
            raise ModelFileError(f"{src}: tensor {t.name} has type {tname}, which this tool does not read")
        tensors[t.name] = (t, tname, tuple(int(d) for d in reversed(t.shape.tolist())))
    types = plan_types(kind, [(n, s) for n, (_, _, s) in tensors.items()], dtype, float_type=lambda n: tensors[n][1])
    for name, (_, tname, _) in tensors.items():
        if types[name] != tname and tname not in FLOAT_TYPES:
            raise InputError(
                f"{src}: tensor {name} is already {tname}; quantize from a BF16, F16 or F32 file "
                f"(re-quantizing a quantized tensor adds the errors of both)"
            )
    w = GGUFWriter(arch)
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key in _SKIP_KEYS:
            continue
        # parts: key length, key bytes, value type, value parts: copied byte for byte.
        w.add_raw(key, b"".join(np.asarray(p).tobytes() for p in field.parts[2:]))

    def produce(t, tname, shape, out_type):
        def chunks():
            raw = np.ascontiguousarray(t.data).view(np.uint8)
            if out_type == tname:
                yield raw.tobytes()
                return
            ne0 = shape[-1]
            rows = raw.reshape(int(np.prod(shape[:-1], dtype=np.int64)), -1)

            def encode(sl):
                f = _core.dequantize(rows[sl].reshape(-1), tname, [sl.stop - sl.start, ne0])
                return _core.quantize(f, out_type).tobytes()

            yield from parallel_chunks(encode, iter_rows(rows.shape[0], ne0))

        return chunks

    for name, (t, tname, shape) in tensors.items():
        w.add_tensor(name, shape, types[name], produce(t, tname, shape, types[name]))
    w.write(dst)
    return types
