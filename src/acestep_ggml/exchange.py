"""The exchange directory shared by the `lm` and `synth` stages.

One plain-text file per field, no extension, as the original CLI pair (ace-qwen3 / dit-vae)
reads and writes them. A missing file, an empty file or ``N/A`` means the default.

=========  ================================  =========
file       content                           default
=========  ================================  =========
caption    text, may span lines (required)   —
lyrics     text                              ""
codes      comma-separated ints 0..63999     absent: generate from noise
bpm        integer                           N/A
duration   integer seconds                   120
keyscale   e.g. ``F# minor``                 N/A
timesig    numerator, e.g. ``4``             N/A
language   language code                     N/A (the LM chooses; the DiT reads ``unknown``)
=========  ================================  =========
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

FIELDS = ("caption", "lyrics", "codes", "bpm", "duration", "keyscale", "timesig", "language")
DEFAULT_DURATION = 120
MAX_CODE = 63999
CODES_PER_SECOND = 5
MAX_DURATION = 600  # seconds; the LM's constrained decoding allows 10..600


class ExchangeError(ValueError):
    """A malformed exchange directory: names the file and what is wrong with it."""


@dataclass
class Request:
    """What one song is made from: the prompt, the metadata, and optionally the audio codes."""

    caption: str
    lyrics: str = ""
    codes: list[int] | None = None
    bpm: int | None = None
    duration: int | None = None
    keyscale: str | None = None
    timesig: int | None = None
    language: str | None = None  # None: the LM chooses; the DiT reads "unknown"

    def resolved_duration(self) -> float:
        """Seconds of audio to make: from the codes when there are any, else `duration` (default 120)."""
        if self.codes:
            return len(self.codes) / CODES_PER_SECOND
        return float(self.duration if self.duration is not None else DEFAULT_DURATION)


def _read(folder: Path, name: str) -> str | None:
    p = folder / name
    if not p.exists():
        return None
    if not p.is_file():
        raise ExchangeError(f"{p}: is not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ExchangeError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return text


def _optional(text: str | None) -> str | None:
    if text is None:
        return None
    t = text.strip()
    return None if t == "" or t.upper() == "N/A" else t


def _int(folder: Path, name: str, lo: int, hi: int) -> int | None:
    t = _optional(_read(folder, name))
    if t is None:
        return None
    try:
        v = int(t)
    except ValueError:
        raise ExchangeError(f"{folder / name}: expected an integer, got {t!r}") from None
    if not lo <= v <= hi:
        raise ExchangeError(f"{folder / name}: {v} is outside {lo}..{hi}")
    return v


def parse_codes(text: str, where: str = "codes") -> list[int]:
    """Comma-separated (whitespace tolerated) integers 0..63999; names the first bad entry."""
    codes = []
    for i, tok in enumerate(t.strip() for t in text.replace("\n", ",").split(",")):
        if tok == "":
            continue
        try:
            v = int(tok)
        except ValueError:
            raise ExchangeError(f"{where}: entry {i} is not an integer: {tok!r}") from None
        if not 0 <= v <= MAX_CODE:
            raise ExchangeError(f"{where}: entry {i} = {v} is outside 0..{MAX_CODE}")
        codes.append(v)
    return codes


def read_request(folder: str | os.PathLike) -> Request:
    """Read an exchange directory; raises ExchangeError naming the file for anything malformed."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExchangeError(f"{folder}: exchange directory does not exist")
    caption = _read(folder, "caption")
    if caption is None or caption.strip() == "":
        raise ExchangeError(f"{folder / 'caption'}: missing or empty; the caption is required")
    codes_text = _read(folder, "codes")
    codes = parse_codes(codes_text, str(folder / "codes")) if codes_text is not None else None
    if codes is not None and not codes:
        codes = None
    return Request(
        caption=caption.strip("\n"),
        lyrics=(_read(folder, "lyrics") or "").strip("\n"),
        codes=codes,
        bpm=_int(folder, "bpm", 1, 1000),
        duration=_int(folder, "duration", 1, MAX_DURATION),
        keyscale=_optional(_read(folder, "keyscale")),
        timesig=_int(folder, "timesig", 1, 32),
        language=_optional(_read(folder, "language")),
    )


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_request(folder: str | os.PathLike, req: Request) -> None:
    """Write every field (defaults as ``N/A`` where the reference does); each file replaced atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    na = lambda v: "N/A" if v is None else str(v)  # noqa: E731
    values = {
        "caption": req.caption,
        "lyrics": req.lyrics,
        "bpm": na(req.bpm),
        "duration": str(req.duration if req.duration is not None else DEFAULT_DURATION),
        "keyscale": na(req.keyscale),
        "timesig": na(req.timesig),
        "language": na(req.language),
    }
    if req.codes is not None:
        values["codes"] = ",".join(str(int(c)) for c in req.codes)
    elif (folder / "codes").exists():
        (folder / "codes").unlink()  # stale codes from an earlier run would override the request
    for name, text in values.items():
        _write_atomic(folder / name, text)
