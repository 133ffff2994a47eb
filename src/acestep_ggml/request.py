"""What one song is made from (``Request``), and the checks a request passes before any model
runs: those of the LM (the metadata it is given) and those of the synth stage (its length and
task fields)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Union

import numpy as np

from . import tasks
from .constants import (
    BPM_RANGE,
    CODES_PER_SECOND,
    DEFAULT_DURATION,
    DURATION_RANGE,
    KEYSCALES,
    LANGUAGES,
    MAX_DURATION,
    MIN_SYNTH_DURATION,
    TIMESIGNATURES,
)
from .errors import InputError

# An audio input: a file path, or (2, N) / (N,) samples at the model's rate (48 kHz).
AudioInput = Union[str, os.PathLike, np.ndarray]


@dataclass
class Request:
    """What one song is made from: the prompt, the metadata, and optionally the audio codes."""

    caption: str
    lyrics: str = ""
    codes: list[int] | None = None
    bpm: int | None = None
    duration: int | None = None
    keyscale: str | None = None
    timesignature: int | None = None  # beats per bar (the exchange file is named timesig)
    language: str | None = None  # None: the LM chooses; the DiT reads "unknown"
    # The task (see acestep_ggml.tasks) and its inputs.
    task: str = "text2music"
    src_audio: AudioInput | None = None
    ref_audio: AudioInput | None = None
    repainting_start: float | None = None
    repainting_end: float | None = None
    track_name: str | None = None
    track_classes: list[str] | None = None
    audio_cover_strength: float = 1.0

    def resolved_duration(self) -> float:
        """Seconds of audio to make: from the codes when there are any, else `duration` (default 120)."""
        if self.codes:
            return len(self.codes) / CODES_PER_SECOND
        return float(self.duration if self.duration is not None else DEFAULT_DURATION)


def check_task(request: Request, *, has_codes: bool, posterior: str = "sample") -> None:
    """InputError unless the request's task fields fit together (see acestep_ggml.tasks);
    ``has_codes``: audio codes will be there (given, or from the LM)."""
    tasks.check_fields(request.task, has_source=request.src_audio is not None, has_codes=has_codes,
                       repainting_start=request.repainting_start, repainting_end=request.repainting_end,
                       track_name=request.track_name, track_classes=request.track_classes,
                       audio_cover_strength=request.audio_cover_strength, posterior=posterior)


def check_for_synth(request: Request, posterior: str = "sample") -> None:
    """The synth stage's checks: a duration it can render (unless codes or source audio set the
    length) and the task fields."""
    has_codes = bool(request.codes)
    if not has_codes and request.src_audio is None and request.duration is not None \
            and not MIN_SYNTH_DURATION <= request.duration <= MAX_DURATION:
        raise InputError(f"duration must be {MIN_SYNTH_DURATION}..{MAX_DURATION} seconds, got {request.duration}")
    check_task(request, has_codes=has_codes, posterior=posterior)


def given_metadata(req: Request) -> Dict[str, str]:
    """The metadata the user gave, as the LM's chain-of-thought values, checked against the
    ranges of its constrained decoding.  A language ``unknown`` is no language: the LM chooses it."""
    if not isinstance(req.caption, str) or not req.caption.strip():
        raise InputError("caption is empty: the LM needs a caption")
    out: Dict[str, str] = {}
    lo, hi = BPM_RANGE
    if req.bpm is not None:
        if not lo <= int(req.bpm) <= hi:
            raise InputError(f"bpm {req.bpm} is outside {lo}..{hi}")
        out["bpm"] = str(int(req.bpm))
    lo, hi = DURATION_RANGE
    if req.duration is not None:
        if not lo <= int(req.duration) <= hi:
            raise InputError(f"duration {req.duration} s is outside {lo}..{hi} s")
        out["duration"] = str(int(req.duration))
    if req.keyscale is not None:
        if req.keyscale not in KEYSCALES:
            raise InputError(f"keyscale {req.keyscale!r} is not a note A-G with optional #/b and major/minor")
        out["keyscale"] = req.keyscale
    if req.timesignature is not None:
        if str(req.timesignature) not in TIMESIGNATURES:
            raise InputError(f"timesignature {req.timesignature} is not one of {', '.join(TIMESIGNATURES)}")
        out["timesignature"] = str(req.timesignature)
    if req.language and req.language != "unknown":
        if req.language not in LANGUAGES:
            raise InputError(f"language {req.language!r} is not one of the LM's languages "
                             f"({' '.join(LANGUAGES)})")
        out["language"] = req.language
    return out
