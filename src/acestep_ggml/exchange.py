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
task       text2music, cover, repaint,       text2music
           extract, lego or complete
src_audio  path of an audio file (relative:  none
           to the directory)
ref_audio  path of an audio file (timbre)    none
repainting_start  seconds (may be < 0)       0
repainting_end    seconds (may pass the end) end of the source
track_name        e.g. ``vocals``            none
track_classes     comma-separated names      none
audio_cover_strength  number in 0..1         1
=========  ================================  =========

The files are named as the original pair names them: ``timesig`` holds Request.timesignature.
See acestep_ggml.tasks for what each task does with these.

How the synth stage samples (acestep_ggml.request.Controls; docs/controls.md), read by `synth`
only, each overridden by its command-line flag:

=======================  =====================================  =========
file                     content                                default
=======================  =====================================  =========
solver                   euler, sde, dpm3m, stork4 or heun      euler
stork_substeps           integer 2..148                         10
use_adg                  true or false                          false
cfg_interval_start       number in 0..1 (on t, 1 = noise)       0
cfg_interval_end         number in 0..1                         1
velocity_norm_threshold  number >= 0 (0: off)                   0
velocity_ema_factor      number in [0, 1) (0: off)              0
dcw_mode                 low, high, double or pix               N/A (off)
dcw_scaler               number >= 0                            0.05
dcw_high_scaler          number >= 0                            0.02
repaint_mode             conservative, balanced or aggressive   aggressive
repaint_strength         number in 0..1                         0.5
retake_seed              integer >= 0                           N/A
retake_variance          number in 0..1                         0
=======================  =====================================  =========
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from .constants import DEFAULT_DURATION, MAX_CODE, MAX_DURATION, MIN_SYNTH_DURATION
from .errors import ExchangeError
from .request import Controls, Request
from .tasks import TASKS

FIELDS = ("caption", "lyrics", "codes", "bpm", "duration", "keyscale", "timesig", "language")
TASK_FIELDS = ("task", "src_audio", "ref_audio", "repainting_start", "repainting_end", "track_name", "track_classes",
               "audio_cover_strength")

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


def _number(folder: Path, name: str, parse, what: str):
    """The file's value through ``parse`` (int or float), None when absent or N/A."""
    t = _optional(_read(folder, name))
    if t is None:
        return None
    try:
        v = parse(t)
    except ValueError:
        raise ExchangeError(f"{folder / name}: expected {what}, got {t!r}") from None
    if not math.isfinite(v):
        raise ExchangeError(f"{folder / name}: expected a finite number, got {t!r}")
    return v


def _int(folder: Path, name: str, lo: int, hi: int) -> int | None:
    v = _number(folder, name, int, "an integer")
    if v is not None and not lo <= v <= hi:
        raise ExchangeError(f"{folder / name}: {v} is outside {lo}..{hi}")
    return v


def _float(folder: Path, name: str) -> float | None:
    return _number(folder, name, float, "a number")


def _path(folder: Path, name: str) -> str | None:
    """An audio path from a file; relative paths are taken from the exchange directory."""
    t = _optional(_read(folder, name))
    return None if t is None else str(folder / Path(t).expanduser())


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
        duration=_int(folder, "duration", MIN_SYNTH_DURATION, MAX_DURATION),
        keyscale=_optional(_read(folder, "keyscale")),
        timesignature=_int(folder, "timesig", 1, 32),
        language=_optional(_read(folder, "language")),
        **_read_task(folder),
    )


CONTROL_FILES = ("solver", "stork_substeps", "use_adg", "cfg_interval_start", "cfg_interval_end",
                 "velocity_norm_threshold", "velocity_ema_factor", "dcw_mode", "dcw_scaler", "dcw_high_scaler",
                 "repaint_mode", "repaint_strength", "retake_seed", "retake_variance")
_TEXT_CONTROLS = ("solver", "dcw_mode", "repaint_mode")
_INT_CONTROLS = ("stork_substeps", "retake_seed")


def _bool(folder: Path, name: str) -> bool | None:
    t = _optional(_read(folder, name))
    if t is None:
        return None
    if t.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise ExchangeError(f"{folder / name}: expected true or false, got {t!r}")
    return t.lower() in ("true", "1", "yes")


def read_controls(folder: str | os.PathLike) -> dict:
    """The sampling options the directory's files set, by Controls field name (absent or N/A:
    not set); a malformed file is an ExchangeError naming it.  The ranges are checked where the
    options are used (an InputError naming the field, i.e. the file)."""
    folder = Path(folder)
    out: dict = {}
    for name in CONTROL_FILES:
        if name in _TEXT_CONTROLS:
            v = _optional(_read(folder, name))
        elif name in _INT_CONTROLS:
            v = _number(folder, name, int, "an integer")
        elif name == "use_adg":
            v = _bool(folder, name)
        else:
            v = _float(folder, name)
        if v is not None:
            out[name] = v
    start, end = out.pop("cfg_interval_start", None), out.pop("cfg_interval_end", None)
    if start is not None or end is not None:
        lo, hi = Controls.cfg_interval
        out["cfg_interval"] = (lo if start is None else start, hi if end is None else end)
    return out


def _read_task(folder: Path) -> dict:
    task = _optional(_read(folder, "task")) or "text2music"
    if task not in TASKS:
        raise ExchangeError(f"{folder / 'task'}: unknown task {task!r}; choose one of {', '.join(TASKS)}")
    strength = _float(folder, "audio_cover_strength")
    if strength is not None and not 0.0 <= strength <= 1.0:
        raise ExchangeError(f"{folder / 'audio_cover_strength'}: {strength:g} is outside 0..1")
    classes = [c.strip() for c in (_optional(_read(folder, "track_classes")) or "").split(",") if c.strip()]
    return {"task": task, "src_audio": _path(folder, "src_audio"), "ref_audio": _path(folder, "ref_audio"),
            "repainting_start": _float(folder, "repainting_start"), "repainting_end": _float(folder, "repainting_end"),
            "track_name": _optional(_read(folder, "track_name")), "track_classes": classes or None,
            "audio_cover_strength": 1.0 if strength is None else strength}


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def check_writable(folder: str | os.PathLike) -> None:
    """ExchangeError unless ``folder`` is a directory or can become one."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ExchangeError(f"{folder}: exists and is not a directory; the exchange directory must be one")


def write_request(folder: str | os.PathLike, req: Request) -> None:
    """Write every field (defaults as ``N/A`` where the reference does); each file replaced atomically."""
    check_writable(folder)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    na = lambda v: "N/A" if v is None else str(v)  # noqa: E731
    values = {
        "caption": req.caption,
        "lyrics": req.lyrics,
        "bpm": na(req.bpm),
        "duration": str(req.duration if req.duration is not None else DEFAULT_DURATION),
        "keyscale": na(req.keyscale),
        "timesig": na(req.timesignature),
        "language": na(req.language),
    }
    if req.codes is not None:
        values["codes"] = ",".join(str(int(c)) for c in req.codes)
    for name in ("src_audio", "ref_audio"):
        v = getattr(req, name)
        if v is not None and not isinstance(v, (str, os.PathLike)):
            raise ExchangeError(f"{name}: audio samples cannot go into an exchange directory; give a file path")
    optional = {
        "task": None if req.task == "text2music" else req.task,
        "src_audio": req.src_audio and os.path.abspath(req.src_audio),
        "ref_audio": req.ref_audio and os.path.abspath(req.ref_audio),
        "repainting_start": req.repainting_start, "repainting_end": req.repainting_end,
        "track_name": req.track_name,
        "track_classes": req.track_classes and ",".join(req.track_classes),
        "audio_cover_strength": None if req.audio_cover_strength == 1.0 else req.audio_cover_strength,
    }
    values.update({k: str(v) for k, v in optional.items() if v is not None})
    # Optional files of an earlier request would override this one.
    for name in ("codes",) + TASK_FIELDS:
        if name not in values and (folder / name).exists():
            (folder / name).unlink()
    for name, text in values.items():
        _write_atomic(folder / name, text)
