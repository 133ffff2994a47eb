"""Audio files in and out through soundfile (WAV, FLAC, OGG, MP3), resampling through soxr,
and the reference's loudness rule."""
from __future__ import annotations

import os
import secrets

import numpy as np

from .constants import SAMPLE_RATE
from .errors import InputError

# The reference pipeline's output level: peak at -1 dBFS.
TARGET_PEAK = 10.0 ** (-1.0 / 20.0)

# Output formats by extension (soundfile's names).
FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}
_SUBTYPES = {"pcm_16": "PCM_16", "16": "PCM_16", "pcm_24": "PCM_24", "24": "PCM_24",
             "float": "FLOAT", "float32": "FLOAT"}
# The constant bitrates of MPEG-1 Layer III (kbit/s), which MP3 uses at 32, 44.1 and 48 kHz.
MP3_BITRATES = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
# Songs are the product: the most MP3 carries (under 5 MB for two minutes).
DEFAULT_MP3_BITRATE = 320


def normalize_peak(audio: np.ndarray) -> np.ndarray:
    """The diffusers ACE-Step pipeline's two-stage rule: divide by the peak if it exceeds
    1, then scale so that the peak sits at -1 dBFS (0.8913), louder or quieter alike;
    silence stays silence (the peak is floored at 1e-6 as in the reference)."""
    peak = float(np.max(np.abs(audio)))
    if peak > 1.0:
        audio = audio / peak
        peak = 1.0
    return audio * (TARGET_PEAK / max(peak, 1e-6))


def _encoding(path: str, subtype: str | None, bitrate: int | None) -> dict:
    """soundfile.write's format arguments for `path` and the options, or a clear InputError."""
    ext = os.path.splitext(path)[1].lower()
    fmt = FORMATS.get(ext)
    if fmt is None:
        raise InputError(f"cannot tell the audio format of '{path}': use a .wav, .flac, .ogg or .mp3 extension")
    if bitrate is not None and fmt != "MP3":
        raise InputError(f"'{path}': a bitrate applies to .mp3 files only")
    if fmt in ("OGG", "MP3"):
        if subtype is not None:
            raise InputError(f"'{path}': {fmt} is compressed; a subtype applies to .wav and .flac only")
        if fmt == "OGG":
            return {"format": "OGG", "subtype": "VORBIS"}
        bitrate = DEFAULT_MP3_BITRATE if bitrate is None else bitrate
        if bitrate not in MP3_BITRATES:
            raise InputError(f"MP3 bitrate must be one of {', '.join(map(str, MP3_BITRATES))} kbit/s, got {bitrate}")
        # libsndfile sets a constant bitrate of int(320 - level * 288) kbit/s at 32-48 kHz.  The
        # 0.999 lands that truncation on `bitrate` itself, and keeps the level below 1, which the
        # encoder's variable-rate default (in force while the level is set) refuses.
        level = (320 - bitrate) / (320 - 32) * 0.999
        return {"format": "MP3", "subtype": "MPEG_LAYER_III", "compression_level": level, "bitrate_mode": "CONSTANT"}
    st = _SUBTYPES.get(str(subtype or "PCM_16").lower())
    if st is None:
        raise InputError(f"unknown subtype {subtype!r}: use 'PCM_16', 'PCM_24' or 'FLOAT'")
    if fmt == "FLAC" and st == "FLOAT":
        raise InputError("FLAC stores integers only: use subtype 'PCM_16' or 'PCM_24'")
    return {"format": fmt, "subtype": st}


def check_output_path(path: str | os.PathLike, *, subtype: str | None = None, bitrate: int | None = None) -> None:
    """Raise InputError unless audio can be written to `path`: a known extension (.wav, .flac,
    .ogg, .mp3), write_audio's options valid for it, and an existing, writable folder.  Called
    before any work starts, so a typo costs nothing."""
    path = os.fspath(path)
    _encoding(path, subtype, bitrate)
    if os.path.isdir(path):
        raise InputError(f"'{path}' is a folder; give a file name such as song.wav")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"cannot write '{path}': the folder '{folder}' does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"cannot write '{path}': the folder '{folder}' is not writable")


def _new_file_beside(path: str) -> str:
    """An empty, new file in the folder of `path`.  Created with mode 0666 so that the user's
    umask applies, as it does to a file from open(); mkstemp's 0600 would survive the rename."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return tmp


def write_audio(path: str | os.PathLike, audio, sample_rate: int, *, subtype: str | None = None,
                bitrate: int | None = None, normalize: bool = True) -> None:
    """Write (channels, N) float audio; the format follows the extension (.wav, .flac, .ogg, .mp3).

    subtype: 'PCM_16' (default), 'PCM_24' or 'FLOAT' (WAV only), for .wav and .flac.
    bitrate: kbit/s of a .mp3 (constant; default 320), one of MP3_BITRATES.
    The file appears whole or not at all: it is written next to its destination and renamed
    into place, with the mode the user's umask gives a new file.
    """
    path = os.fspath(path)
    check_output_path(path, subtype=subtype, bitrate=bitrate)
    encoding = _encoding(path, subtype, bitrate)
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
    if encoding["format"] == "MP3" and int(sample_rate) < 32000:
        raise InputError(f"MP3 at {sample_rate} Hz is not supported here: use 32000 Hz or more")
    a = a.astype(np.float32)
    if normalize:
        a = normalize_peak(a)
    if encoding.get("subtype") != "FLOAT":
        a = np.clip(a, -1.0, 1.0)
    tmp = _new_file_beside(path)
    try:
        import soundfile as sf

        sf.write(tmp, np.ascontiguousarray(a.T), int(sample_rate), **encoding)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, RuntimeError):  # soundfile's LibsndfileError: this libsndfile cannot write the format
            raise InputError(f"cannot write '{path}': {e}") from None
        raise


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(audio (2, N) float32, sample_rate) of any file soundfile reads, at the file's own rate;
    mono is duplicated to two channels.  InputError naming the file and the problem otherwise.
    See load_audio for audio at a chosen rate."""
    import soundfile as sf

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"audio file '{path}' does not exist")
    if os.path.isdir(path):
        raise InputError(f"'{path}' is a folder, not an audio file")
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, OSError) as e:  # soundfile's LibsndfileError is a RuntimeError
        raise InputError(f"cannot read audio file '{path}': {e}") from None
    return _as_stereo(data.T, f"audio file '{path}'"), int(sr)


def _as_stereo(a: np.ndarray, what: str) -> np.ndarray:
    """(channels, N) float -> (2, N) float32: mono is duplicated, more than two channels refused;
    empty or non-finite audio refused."""
    if a.shape[0] == 1:
        a = np.repeat(a, 2, axis=0)
    elif a.shape[0] != 2:
        raise InputError(f"{what} has {a.shape[0]} channels; only mono and stereo are supported "
                         f"(arrays are (N,) or (channels, N))")
    if a.shape[1] == 0:
        raise InputError(f"{what} is empty (0 samples)")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{what} contains NaN or infinity")
    return np.ascontiguousarray(a, dtype=np.float32)


def load_audio(source, sample_rate: int = SAMPLE_RATE, *, source_rate: int | None = None) -> np.ndarray:
    """Audio (2, N) float32 at `sample_rate`, from a file (any soundfile reads: WAV, FLAC, OGG,
    MP3, ...; any rate) or an array, (N,) mono or (channels, N), at `source_rate` (default:
    `sample_rate`).  Mono becomes stereo; other rates are resampled with soxr."""
    if int(sample_rate) <= 0:
        raise InputError(f"sample_rate must be positive, got {sample_rate}")
    if isinstance(source, (str, os.PathLike)):
        if source_rate is not None:
            raise InputError(f"source_rate applies to arrays; '{os.fspath(source)}' states its own rate")
        audio, rate = read_audio(source)
    else:
        a = np.asarray(source)
        if not np.issubdtype(a.dtype, np.floating):
            raise InputError(f"audio must be a real floating-point array (samples in -1..1), got dtype {a.dtype}")
        if a.ndim not in (1, 2):
            raise InputError(f"audio must have shape (N,) or (channels, N), got {a.shape}")
        audio = _as_stereo(a.reshape(1, -1) if a.ndim == 1 else a, "audio")
        rate = sample_rate if source_rate is None else source_rate
        if int(rate) <= 0:
            raise InputError(f"source_rate must be positive, got {source_rate}")
    if int(rate) == int(sample_rate):
        return audio
    import soxr

    out = soxr.resample(audio.T, int(rate), int(sample_rate), quality="VHQ")
    return np.ascontiguousarray(out.T, dtype=np.float32)
