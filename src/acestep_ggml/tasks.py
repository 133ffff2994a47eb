"""The six ACE-Step 1.5 task types of the synth stage and what each makes of its inputs, as
diffusers' AceStepPipeline (and the original handler) run them.

==========  ==========================================  =======================================
task        audio context the DiT sees                  chunk mask (1 = generate)
==========  ==========================================  =======================================
text2music  the silence latent (or detokenized codes)   ones
cover       source -> tokenizer -> detokenizer (5 Hz)   ones
cover-nofsq source latents (no 5 Hz round trip)         ones
repaint     source, the silence latent in the window    ones in the window, zeros outside
extract     source latents                              ones
lego        source latents                              ones in the window (all without one)
complete    source latents                              ones
==========  ==========================================  =======================================

Repaint and lego windows may reach past the source (outpainting): the source audio is padded
with digital silence before the VAE encodes it, as the original handler and acestep.cpp do,
and the window is shifted by the left padding.

cover-nofsq is upstream's later addition (ACE-Step-1.5 PR #1142, "Remix (Raw)"; acestep.cpp
commit bdf4d98, ``run_cover_nofsq``): the cover instruction with the source's raw VAE latents
as context, skipping the FSQ round trip; off the DiT's training distribution by design, so
acestep.cpp recommends low ``audio_cover_strength``.  diffusers has no such task.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .constants import TASK_INSTRUCTIONS
from .errors import InputError

TASKS = ("text2music", "cover", "cover-nofsq", "repaint", "extract", "lego", "complete")
SOURCE_TASKS = ("cover", "cover-nofsq", "repaint", "extract", "lego", "complete")  # cover may use codes instead
COVER_TASKS = ("cover", "cover-nofsq")  # audio_cover_strength blends in text2music
WINDOW_TASKS = ("repaint", "lego")
POSTERIORS = ("sample", "mean")

# The reference audio the timbre encoder hears: 30 s made of three 10 s pieces (front, middle,
# back) of the clip, repeated first when shorter.
REFERENCE_SECONDS = 30
REFERENCE_PIECE_SECONDS = 10


def instruction(task: str, track_name: str | None = None, track_classes: Sequence[str] | None = None) -> str:
    """The instruction for ``task``; extract and lego name the track, complete the track classes
    (upper-cased, joined by `` | ``), each falling back to its generic line without them."""
    if task in ("extract", "lego"):
        return TASK_INSTRUCTIONS[task].format(TRACK_NAME=track_name.upper()) if track_name \
            else TASK_INSTRUCTIONS[f"{task}_default"]
    if task == "complete":
        return TASK_INSTRUCTIONS[task].format(TRACK_CLASSES=" | ".join(t.upper() for t in track_classes)) \
            if track_classes else TASK_INSTRUCTIONS["complete_default"]
    return TASK_INSTRUCTIONS[task]


def check_fields(task: str, *, has_source: bool, has_codes: bool, repainting_start: float | None,
                 repainting_end: float | None, track_name: str | None, track_classes, audio_cover_strength: float,
                 posterior: str = "sample") -> None:
    """InputError for a request whose task fields do not fit together (no audio needed to tell)."""
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    if posterior not in POSTERIORS:
        raise InputError(f"posterior must be 'sample' or 'mean', got {posterior!r}")
    s = audio_cover_strength
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s <= 1.0:
        raise InputError(f"audio_cover_strength must be a number in 0..1, got {s!r}")
    if has_source and has_codes:
        raise InputError("give either audio codes or source audio, not both")
    if task in SOURCE_TASKS and not has_source and not (task == "cover" and has_codes):
        raise InputError(f"task '{task}' needs source audio (src_audio)"
                         + (" or audio codes" if task == "cover" else ""))
    if has_codes and task not in ("text2music", "cover"):
        raise InputError(f"audio codes drive text2music and cover only; task '{task}' takes source audio")
    if (repainting_start is not None or repainting_end is not None) and task not in WINDOW_TASKS:
        raise InputError(f"a repaint window (repainting_start/end) applies to repaint and lego, not '{task}'")
    if track_name and task not in ("extract", "lego"):
        raise InputError(f"track_name applies to extract and lego, not '{task}'")
    if isinstance(track_classes, str):
        raise InputError(f"track_classes must be a list of track names, e.g. ['drums', 'bass'], got {track_classes!r}")
    if track_classes and task != "complete":
        raise InputError(f"track_classes applies to complete, not '{task}'")
    if s != 1.0 and task not in COVER_TASKS and not has_codes:
        raise InputError(f"audio_cover_strength applies to cover, not '{task}'")
    for name, v in (("repainting_start", repainting_start), ("repainting_end", repainting_end)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise InputError(f"{name} must be a number of seconds, got {v!r}")


@dataclass
class Window:
    """A repaint / lego window in seconds on the canvas: the source after outpainting padding."""

    start: float
    end: float | None  # None: to the end of the canvas


def outpaint(audio: np.ndarray, sample_rate: int, start: float | None, end: float | None,
             max_seconds: float) -> tuple[np.ndarray, Window]:
    """The canvas for a window [start, end) in seconds of the source (start default 0, end
    default the end of the source): the source zero-padded on the left by ``-start`` and on the
    right up to ``end``, and the window in canvas seconds.  A window with start >= end, one
    that leaves a gap before or after the source, or a canvas longer than ``max_seconds`` is
    an InputError."""
    duration = audio.shape[-1] / sample_rate
    lo = 0.0 if start is None else float(start)
    if end is not None and lo >= end:
        raise InputError(f"repaint window: start {lo:g} s must come before end {end:g} s")
    if lo > duration or (end is not None and end < 0):
        raise InputError(f"repaint window {lo:g}..{'end' if end is None else f'{end:g}'} s lies outside the "
                         f"{duration:.2f} s of source audio; it may reach past either end but must touch it")
    left = max(0.0, -lo)
    right = max(0.0, (duration if end is None else end) - duration)
    if duration + left + right > max_seconds:
        raise InputError(f"repaint window: the audio with its extension would last {duration + left + right:.1f} s; "
                         f"at most {max_seconds} s")
    pad = (int(left * sample_rate), int(right * sample_rate))
    canvas = np.pad(audio, ((0, 0), pad)) if pad != (0, 0) else audio
    return canvas, Window(lo + left, None if end is None else end + left)


def chunk_mask(window: Window, length: int, latents_per_second: float) -> np.ndarray:
    """``(length,)`` float32: 1 on the window's latent frames (at least one), 0 elsewhere."""
    first = int(window.start * latents_per_second)
    last = int(window.end * latents_per_second) if window.end is not None and window.end > 0 else length
    first = max(0, min(first, length - 1))
    last = max(first + 1, min(last, length))
    mask = np.zeros(length, dtype=np.float32)
    mask[first:last] = 1.0
    return mask


def reference_clip(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """The 30 s the timbre encoder hears of a reference ``(2, N)``: the clip repeated up to 30 s
    when shorter, then its first 10 s, 10 s from a third of the way in, and its last 10 s."""
    target = REFERENCE_SECONDS * sample_rate
    if audio.shape[-1] < target:
        audio = np.tile(audio, (1, math.ceil(target / audio.shape[-1])))
    piece, total = REFERENCE_PIECE_SECONDS * sample_rate, audio.shape[-1]
    back = max(total - piece, 0)
    third = total // 3
    return np.concatenate([audio[:, :piece], audio[:, third:third + piece], audio[:, back:back + piece]], axis=-1)


def tile_to(latent: np.ndarray, length: int) -> np.ndarray:
    """The first ``length`` frames of ``latent`` (T, C) repeated along time as needed."""
    reps = -(-length // latent.shape[0])
    return np.ascontiguousarray(np.tile(latent, (reps, 1))[:length] if reps > 1 else latent[:length])
