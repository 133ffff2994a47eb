"""What one song is made from (``Request``), and the checks a request passes before any model
runs: those of the LM (the metadata it is given) and those of the synth stage (its length and
task fields)."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Union

import numpy as np

from . import flow, tasks
from .constants import (
    BPM_RANGE,
    CODES_PER_SECOND,
    DCW_HIGH_SCALER,
    DCW_SCALER,
    DEFAULT_DURATION,
    DURATION_RANGE,
    KEYSCALES,
    LANGUAGES,
    MAX_DURATION,
    MIN_SYNTH_DURATION,
    REPAINT_CROSSFADE_FRAMES,
    REPAINT_CROSSFADE_SECONDS,
    REPAINT_MODE,
    REPAINT_MODES,
    REPAINT_STRENGTH,
    STORK_SUBSTEPS,
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


@dataclass(frozen=True)
class Controls:
    """How the synth stage samples: the solver, the guidance options, DCW, repaint and retake.
    docs/controls.md gives each field's source and upstream's and acestep.cpp's names for it."""

    solver: str = "euler"
    stork_substeps: int = STORK_SUBSTEPS
    use_adg: bool = False  # ADG instead of APG (base/SFT with guidance > 1)
    cfg_interval: tuple[float, float] = (0.0, 1.0)  # guidance where start <= t <= end (t = 1: noise)
    velocity_norm_threshold: float = 0.0  # 0: off
    velocity_ema_factor: float = 0.0  # 0: off
    dcw_mode: Optional[str] = None  # None: DCW off
    dcw_scaler: float = DCW_SCALER
    dcw_high_scaler: float = DCW_HIGH_SCALER
    repaint_mode: str = REPAINT_MODE
    repaint_strength: float = REPAINT_STRENGTH
    retake_seed: Optional[int] = None
    retake_variance: float = 0.0

    @classmethod
    def of(cls, controls: Optional["Controls"] = None, **options) -> "Controls":
        """``controls`` (default: the defaults) with ``options`` replaced, checked; an unknown
        option is an InputError naming it."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise InputError(f"unknown sampling option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        out = dataclasses.replace(controls or cls(), **options)
        out.check()
        return out

    def check(self) -> None:
        """InputError naming the first field out of its range."""
        flow.check_options(**self.sampler_options())
        if self.repaint_mode not in REPAINT_MODES:
            raise InputError(f"repaint_mode must be one of {', '.join(REPAINT_MODES)}, got {self.repaint_mode!r}")
        for name in ("repaint_strength", "retake_variance"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise InputError(f"{name} must be a number in 0..1, got {v!r}")
        r = self.retake_seed
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 0):
            raise InputError(f"retake_seed must be an integer >= 0, got {r!r}")
        if self.retake_variance > 0 and r is None:
            raise InputError("retake_variance > 0 needs a retake_seed: the noise it mixes in")

    def sampler_options(self) -> dict:
        """The keyword arguments of acestep_ggml.flow.sample."""
        return {k: getattr(self, k) for k in ("solver", "stork_substeps", "use_adg", "cfg_interval",
                                              "velocity_norm_threshold", "velocity_ema_factor", "dcw_mode",
                                              "dcw_scaler", "dcw_high_scaler")}

    def repaint(self) -> tuple[float, int, float]:
        """(injection ratio, latent crossfade frames, waveform crossfade seconds) of the repaint
        mode, as upstream's generate_music._resolve_repaint_config derives them (Python's round:
        half to even)."""
        if self.repaint_mode == "aggressive":
            return 0.0, 0, 0.0
        keep = 1.0 if self.repaint_mode == "conservative" else 1.0 - self.repaint_strength
        return keep, round(REPAINT_CROSSFADE_FRAMES * keep), REPAINT_CROSSFADE_SECONDS * keep

    def retake_noise(self, noise: np.ndarray, seed_noise: Callable[[int], np.ndarray]) -> np.ndarray:
        """``cos(v·π/2)·noise + sin(v·π/2)·seed_noise(retake_seed)`` (upstream's retake mix,
        variance-preserving); ``noise`` itself at v = 0."""
        if self.retake_variance <= 0:
            return noise
        a = self.retake_variance * math.pi / 2
        return (math.cos(a) * noise + math.sin(a) * seed_noise(self.retake_seed)).astype(noise.dtype)


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
