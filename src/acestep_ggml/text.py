"""Text side of ACE-Step 1.5: the Qwen3 text encoder, the condition encoder and the audio-code
tokenizer and detokenizer, each a thin wrapper over its C++ graph (numpy in, numpy out)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from . import _core
from ._threads import resolve_threads
from .errors import InputError


def _int_array(values, what: str) -> np.ndarray:
    """Integers as int64, or InputError naming the first value that is not an integer."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise InputError(f"{what} must be a 1-D sequence, got shape {arr.shape}")
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
        if bad.size:
            i = int(bad[0])
            raise InputError(f"{what} must be integers: {arr[i].item()!r} at index {i} is not")
        return arr.astype(np.int64)
    for i, v in enumerate(arr.tolist()):
        if isinstance(v, bool) or not isinstance(v, int):
            raise InputError(f"{what} must be integers: {v!r} at index {i} is not")
    return arr.astype(np.int64)


class TextEncoder:
    """Qwen3 text encoder (GGUF architecture ``acestep-text-enc``).

    ``encode(ids)``: token ids ``(T,)`` -> last hidden state ``(T, hidden)`` (1024 for
    Qwen3-Embedding-0.6B), after the final norm, causal attention as in the pipeline.
    ``embed(ids)``: ``(T,)`` -> ``(T, hidden)`` embedding-table rows only (the lyric input).
    """

    def __init__(self, path: str, device: str = "cpu", n_threads: Optional[int] = None):
        self._m = _core._TextEncoder(str(path), device, resolve_threads(n_threads))

    @property
    def hidden_size(self) -> int:
        return self._m.hidden

    @property
    def vocab_size(self) -> int:
        return self._m.vocab_size

    def encode(self, ids: Sequence[int]) -> np.ndarray:
        return self._m.encode(_int_array(ids, "token ids"))

    def embed(self, ids: Sequence[int]) -> np.ndarray:
        return self._m.embed(_int_array(ids, "token ids"))


class ConditionEncoder:
    """Condition encoder (tensors ``encoder.*`` of an ``acestep-dit`` GGUF) plus the text
    encoder's embedding table (for lyric tokens), from an ``acestep-text-enc`` GGUF.

    ``encode(text_hidden_states (Tt, 1024), lyric_ids (Tl,), refer_latent (Tr, 64) or None,
    text_mask (Tt,) or None, lyric_mask (Tl,) or None)`` -> ``(states (Tl + 1 + Tt, 2048),
    mask (Tl + 1 + Tt,) bool)``: lyric, timbre and text states packed with valid tokens first,
    as diffusers' AceStepConditionEncoder does.  Without a reference latent the timbre encoder
    reads the first 750 frames of ``silence_latent``.
    """

    def __init__(self, dit_path: str, text_encoder_path: str, device: str = "cpu",
                 n_threads: Optional[int] = None):
        self._m = _core._ConditionEncoder(str(dit_path), str(text_encoder_path), device, resolve_threads(n_threads))

    @property
    def hidden_size(self) -> int:
        return self._m.hidden

    @property
    def null_condition_emb(self) -> np.ndarray:
        """``(hidden,)``: the learned unconditional embedding, broadcast over the sequence for CFG."""
        return self._m.null_condition_emb

    @property
    def silence_latent(self) -> np.ndarray:
        """``(15000, 64)``: the VAE latent of silence shipped in the DiT file."""
        return self._m.silence_latent

    def encode(self, text_hidden_states: np.ndarray, lyric_ids: Sequence[int],
               refer_latent: Optional[np.ndarray] = None, text_mask: Optional[np.ndarray] = None,
               lyric_mask: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        return self._m.encode(text_hidden_states, _int_array(lyric_ids, "lyric token ids"), refer_latent,
                              None if text_mask is None else np.asarray(text_mask, dtype=np.uint8),
                              None if lyric_mask is None else np.asarray(lyric_mask, dtype=np.uint8))


class Detokenizer:
    """Audio-code detokenizer (``tokenizer.quantizer.project_out`` and ``detokenizer.*`` of an
    ``acestep-dit`` GGUF): ``decode(codes (N,) ints in [0, 64000))`` -> 25 Hz latents ``(5N, 64)``."""

    def __init__(self, dit_path: str, device: str = "cpu", n_threads: Optional[int] = None):
        self._m = _core._Detokenizer(str(dit_path), device, resolve_threads(n_threads))

    @property
    def codebook_size(self) -> int:
        return self._m.codebook_size

    def decode(self, codes: Sequence[int]) -> np.ndarray:
        return self._m.decode(_int_array(codes, "audio codes"))


class AudioTokenizer:
    """Audio tokenizer (``tokenizer.*`` of an ``acestep-dit`` GGUF), the inverse of the
    Detokenizer: ``tokenize(latents (T, 64))`` -> 5 Hz codes ``(ceil(T / 5),)`` int64 in [0, 64000),
    a last short window filled from the silence latent as diffusers' ``AceStepAudioTokenizer.tokenize``."""

    def __init__(self, dit_path: str, device: str = "cpu", n_threads: Optional[int] = None):
        self._m = _core._AudioTokenizer(str(dit_path), device, resolve_threads(n_threads))

    @property
    def codebook_size(self) -> int:
        return self._m.codebook_size

    def tokenize(self, latents: np.ndarray) -> np.ndarray:
        return self._m.tokenize(latents)
