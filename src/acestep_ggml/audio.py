"""Audio files in and out: WAV / FLAC through soundfile, with the reference's loudness rule."""
from __future__ import annotations

import os
import tempfile

import numpy as np

from ._core import InputError

# The reference pipeline's output level: peak at -1 dBFS.
TARGET_PEAK = 10.0 ** (-1.0 / 20.0)

_FORMATS = {".wav": "WAV", ".flac": "FLAC"}
_SUBTYPES = {"pcm_16": "PCM_16", "16": "PCM_16", "pcm_24": "PCM_24", "24": "PCM_24",
             "float": "FLOAT", "float32": "FLOAT"}


def normalize_peak(audio: np.ndarray) -> np.ndarray:
    """The diffusers ACE-Step pipeline's two-stage rule: divide by the peak if it exceeds
    1, then scale so that the peak sits at -1 dBFS (0.8913), louder or quieter alike;
    silence stays silence (the peak is floored at 1e-6 as in the reference)."""
    peak = float(np.max(np.abs(audio)))
    if peak > 1.0:
        audio = audio / peak
        peak = 1.0
    return audio * (TARGET_PEAK / max(peak, 1e-6))


def write_audio(path: str | os.PathLike, audio, sample_rate: int, *, subtype: str | None = None,
                normalize: bool = True) -> None:
    """Write (channels, N) float audio; the format follows the extension (.wav, .flac).

    subtype: 'PCM_16' (default), 'PCM_24' or 'FLOAT' (WAV only).  The file appears
    whole or not at all: it is written next to its destination and renamed into place.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in _FORMATS:
        raise InputError(f"cannot tell the audio format of '{path}': use a .wav or .flac extension")
    fmt = _FORMATS[ext]
    st = _SUBTYPES.get(str(subtype or "PCM_16").lower())
    if st is None:
        raise InputError(f"unknown subtype {subtype!r}: use 'PCM_16', 'PCM_24' or 'FLOAT'")
    if fmt == "FLAC" and st == "FLOAT":
        raise InputError("FLAC stores integers only: use subtype 'PCM_16' or 'PCM_24'")
    a = np.asarray(audio)
    if not np.issubdtype(a.dtype, np.floating):
        raise InputError(f"audio must be a real floating-point array, got dtype {a.dtype}")
    if a.ndim != 2 or a.shape[0] not in (1, 2):
        raise InputError(f"audio must have shape (channels, N) with 1 or 2 channels, got {a.shape}")
    if a.shape[1] == 0:
        raise InputError("audio is empty (0 samples)")
    if not np.all(np.isfinite(a)):
        raise InputError("audio contains NaN or infinity")
    if int(sample_rate) <= 0:
        raise InputError(f"sample_rate must be positive, got {sample_rate}")
    a = a.astype(np.float32)
    if normalize:
        a = normalize_peak(a)
    if st != "FLOAT":
        a = np.clip(a, -1.0, 1.0)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=ext, dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        import soundfile as sf

        sf.write(tmp, np.ascontiguousarray(a.T), int(sample_rate), subtype=st, format=fmt)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(audio (2, N) float32, sample_rate); mono files are duplicated to two channels."""
    import soundfile as sf

    data, sr = sf.read(os.fspath(path), dtype="float32", always_2d=True)
    if data.shape[1] == 1:
        data = np.repeat(data, 2, axis=1)
    elif data.shape[1] != 2:
        raise InputError(f"{path}: {data.shape[1]} channels; only mono and stereo are read")
    return np.ascontiguousarray(data.T), int(sr)


def load_audio(source, sample_rate: int = 48000, *, source_rate: int | None = None) -> np.ndarray:
    """Audio (2, N) float32 at `sample_rate` from a file or a (N,) / (channels, N) array.

    Stand-in until the audio-io branch lands (which resamples with soxr): other rates are refused."""
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise InputError(f"audio file '{os.fspath(source)}' does not exist")
        try:
            audio, rate = read_audio(source)
        except RuntimeError as e:
            raise InputError(f"cannot read audio file '{os.fspath(source)}': {e}") from None
    else:
        a = np.asarray(source)
        if not np.issubdtype(a.dtype, np.floating) or a.ndim not in (1, 2) or a.shape[-1] == 0:
            raise InputError(f"audio must be a non-empty float array (N,) or (channels, N), got {a.dtype} {a.shape}")
        a = a.reshape(1, -1) if a.ndim == 1 else a
        if a.shape[0] not in (1, 2):
            raise InputError(f"audio has {a.shape[0]} channels; only mono and stereo are supported")
        audio, rate = np.ascontiguousarray(np.repeat(a, 2 // a.shape[0], axis=0), dtype=np.float32), source_rate
    if rate is not None and int(rate) != int(sample_rate):
        raise InputError(f"audio at {rate} Hz; this build reads {sample_rate} Hz only")
    return audio
