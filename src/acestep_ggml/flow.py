"""Flow-matching sampler of ACE-Step 1.5: shifted timestep schedule, Euler steps and APG guidance.

Pure numpy; the velocity comes from a callable (normally :meth:`acestep_ggml.DiT.forward`), so
the same loop drives any backend.  Latents are ``(T, C)`` (time first, 64 channels at 25 Hz),
or ``(B, T, C)`` for a batch.

Noise: ``initial_noise(T, seed)`` is ``np.random.default_rng(seed).standard_normal((T, 64),
dtype=np.float32)``, i.e. numpy's PCG64 bit generator with its ziggurat normal sampler.  It is
defined by numpy alone, so the same seed gives the same noise on every run, machine and
compute backend (it does not match PyTorch's ``torch.randn`` for the same seed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from .constants import SHIFT, TURBO_STEPS
from .errors import InputError

#: APG settings of the base/SFT checkpoints (the reference pipeline's fixed values).
APG_MOMENTUM = -0.75
APG_NORM_THRESHOLD = 2.5
APG_ETA = 0.0


def timestep_schedule(num_steps: int = TURBO_STEPS, shift: float = SHIFT,
                      timesteps: Optional[Sequence[float]] = None) -> np.ndarray:
    """The timesteps the DiT is evaluated at, from 1 (noise) towards 0, without the final 0.

    ``t_i = linspace(1, 0, N + 1)`` shifted by ``s·t / (1 + (s − 1)·t)``, last point dropped.
    A caller-given ``timesteps`` list is used as is (after checking it lies in (0, 1] and
    decreases).
    """
    if timesteps is not None:
        ts = np.asarray(timesteps, dtype=np.float64)
        if ts.ndim != 1 or ts.size == 0:
            raise InputError("timesteps must be a non-empty 1-D sequence")
        if not np.all(np.isfinite(ts)) or np.any(ts <= 0) or np.any(ts > 1):
            raise InputError("timesteps must lie in (0, 1]")
        if np.any(np.diff(ts) >= 0):
            raise InputError("timesteps must be strictly decreasing")
        return ts.astype(np.float32)
    if int(num_steps) != num_steps or num_steps < 1:
        raise InputError(f"num_steps must be a positive integer, got {num_steps}")
    if not np.isfinite(shift) or shift <= 0:
        raise InputError(f"shift must be a positive number, got {shift}")
    t = np.linspace(1.0, 0.0, int(num_steps) + 1)
    if shift != 1.0:
        t = shift * t / (1 + (shift - 1) * t)
    return t[:-1].astype(np.float32)


def initial_noise(length: int, seed: int, channels: int = 64) -> np.ndarray:
    """Seeded starting noise ``(length, channels)``: numpy PCG64 standard normal, float32."""
    if length < 1:
        raise InputError(f"latent length must be positive, got {length}")
    return np.random.default_rng(seed).standard_normal((length, channels), dtype=np.float32)


@dataclass
class MomentumBuffer:
    """Running average of the guidance difference across steps (APG)."""

    momentum: float = APG_MOMENTUM
    running: Optional[np.ndarray] = field(default=None)

    def update(self, diff: np.ndarray) -> np.ndarray:
        self.running = diff if self.running is None else diff + self.momentum * self.running
        return self.running


def apg(pred_cond: np.ndarray, pred_uncond: np.ndarray, scale: float,
        buffer: Optional[MomentumBuffer], eta: float = APG_ETA,
        norm_threshold: float = APG_NORM_THRESHOLD, time_axis: int = -2) -> np.ndarray:
    """Adaptive projected guidance: ``cond + scale · (orthogonal part of the momentum-averaged,
    norm-clipped difference)``, norms taken over the time axis only.  ``scale`` is
    guidance − 1, as the reference passes it.
    """
    diff = pred_cond - pred_uncond
    if buffer is not None:
        diff = buffer.update(diff)
    if norm_threshold > 0:
        norm = np.sqrt(np.sum(np.square(diff, dtype=np.float64), axis=time_axis, keepdims=True))
        with np.errstate(divide="ignore"):
            diff = diff * np.minimum(1.0, norm_threshold / norm).astype(diff.dtype)
    # The projection runs in float64 like the reference, which keeps the orthogonal part
    # accurate when diff is nearly parallel to the prediction.
    v0 = diff.astype(np.float64)
    v1 = pred_cond.astype(np.float64)
    v1 = v1 / np.maximum(np.sqrt(np.sum(v1 * v1, axis=time_axis, keepdims=True)), 1e-12)
    parallel = np.sum(v0 * v1, axis=time_axis, keepdims=True) * v1
    update = (v0 - parallel).astype(diff.dtype) + eta * parallel.astype(diff.dtype)
    return (pred_cond + scale * update).astype(pred_cond.dtype)


# velocity(x_t (B, T, C), t, guided) -> v (B, T, C); when guided, the callable evaluates the
# conditional and the null conditioning as one batch and returns (v_cond, v_null).
VelocityFn = Callable[[np.ndarray, float, bool], object]


def sample(velocity: VelocityFn, noise: np.ndarray, num_steps: int = TURBO_STEPS, shift: float = SHIFT,
           timesteps: Optional[Sequence[float]] = None, guidance_scale: float = 1.0,
           cfg_interval: tuple[float, float] = (0.0, 1.0),
           callback: Optional[Callable[[int, float, np.ndarray, np.ndarray], None]] = None,
           mix: Optional[Callable[[np.ndarray, float, np.ndarray], np.ndarray]] = None) -> np.ndarray:
    """Integrates the flow ODE from ``noise`` (t = 1) to t = 0 with Euler steps.

    ``x ← x + (t_next − t)·v``; the step after the last timestep goes to 0.  With
    ``guidance_scale > 1`` the steps whose ratio ``1 − t`` lies in ``cfg_interval`` use APG on a
    (cond, null) pair; the momentum buffer lives for the whole loop, as in the reference.
    ``mix(x, t, v)``, when given, replaces the (guided) velocity before the step (cover strength).
    """
    x = np.array(noise, dtype=np.float32, copy=True)
    if x.ndim not in (2, 3) or not np.all(np.isfinite(x)):
        raise InputError("noise must be a finite (T, C) or (B, T, C) array")
    if not np.isfinite(guidance_scale) or guidance_scale < 1.0:
        raise InputError(f"guidance_scale must be >= 1, got {guidance_scale}")
    lo, hi = cfg_interval
    ts = timestep_schedule(num_steps, shift, timesteps)
    buffer = MomentumBuffer() if guidance_scale > 1.0 else None
    for i, t in enumerate(ts):
        t = float(t)
        guided = buffer is not None and lo <= 1.0 - t <= hi
        if guided:
            v_model, v_null = velocity(x, t, True)
            v = apg(v_model, v_null, guidance_scale - 1.0, buffer)
        else:
            v = v_model = velocity(x, t, False)
        if mix is not None:
            v = mix(x, t, v)
        t_next = float(ts[i + 1]) if i + 1 < len(ts) else 0.0
        x = x + np.float32(t_next - t) * np.asarray(v, dtype=np.float32)
        if callback is not None:
            callback(i, t, x, v_model)  # after the step; v_model: the model's (conditional) velocity
    return x
