"""Flow-matching sampler of ACE-Step 1.5: shifted timestep schedule, the solvers (Euler, SDE,
DPM++ 3M as acestep.cpp defines it, STORK4, Heun), APG/ADG guidance, the velocity clamp and EMA,
DCW and repaint step injection.  docs/controls.md names each control and its source.

Pure numpy; the velocity comes from a callable (normally :meth:`acestep_ggml.DiT.forward`), so
the same loop drives any backend.  Latents are ``(T, C)`` (time first, 64 channels at 25 Hz),
or ``(B, T, C)`` for a batch.

Noise: ``initial_noise(T, seed)`` is ``np.random.default_rng(seed).standard_normal((T, 64),
dtype=np.float32)``, i.e. numpy's PCG64 bit generator with its ziggurat normal sampler.  It is
defined by numpy alone, so the same seed gives the same noise on every run, machine and
compute backend (it does not match PyTorch's ``torch.randn`` for the same seed).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .constants import (
    DCW_HIGH_SCALER,
    DCW_MODES,
    DCW_SCALER,
    SHIFT,
    SOLVERS,
    STORK_SUBSTEPS,
    STORK_SUBSTEPS_RANGE,
    TURBO_STEPS,
)
from .errors import InputError

#: APG settings of the base/SFT checkpoints (the reference pipeline's fixed values).
APG_MOMENTUM = -0.75
APG_NORM_THRESHOLD = 2.5
APG_ETA = 0.0
#: ADG's angle clip: upstream's apg_guidance.adg_forward writes 3.14 / 6, not pi / 6.
ADG_ANGLE_CLIP = 3.14 / 6

#: The spawn key of the SDE's per-step noise: SeedSequence(seed, spawn_key=(SDE_STREAM, step)).
#: Initial noise uses SeedSequence(seed) (no spawn key) and the VAE posterior draws the keys (0,)
#: and (1,), so no seed, batch item seed + i included, ever shares a stream with the SDE noise.
SDE_STREAM = 0x5DE


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


def sde_noise(seed: int, step: int, shape: tuple[int, ...]) -> np.ndarray:
    """The SDE solver's fresh noise of ``step`` for an item seeded ``seed`` (see SDE_STREAM)."""
    ss = np.random.SeedSequence(int(seed), spawn_key=(SDE_STREAM, int(step)))
    return np.random.default_rng(ss).standard_normal(shape, dtype=np.float32)


def adg(x: np.ndarray, pred_cond: np.ndarray, pred_uncond: np.ndarray, sigma: float,
        guidance_scale: float) -> np.ndarray:
    """Angle-based dynamic guidance (upstream apg_guidance.adg_forward): rotates the conditional
    clean-sample prediction away from the unconditional one by ``(g − 1)`` times their angle per
    frame, clipped to ADG_ANGLE_CLIP, and returns the velocity that lands there."""
    w = max(guidance_scale - 1.0, 0.0) + 1e-3
    xc = x - np.float32(sigma) * pred_cond
    xu = x - np.float32(sigma) * pred_uncond
    diff = xc - xu
    c64, u64 = xc.astype(np.float64), xu.astype(np.float64)
    unit = lambda a: a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)  # noqa: E731
    cos = np.clip(np.sum(unit(c64) * unit(u64), axis=-1, keepdims=True), -1.0 + 1e-6, 1.0 - 1e-6)
    theta = np.arccos(cos)
    theta_new = np.clip(w * theta, -ADG_ANGLE_CLIP, ADG_ANGLE_CLIP)
    perp = diff - (np.sum(diff * xu, axis=-1, keepdims=True) / (np.sum(xu * xu, axis=-1, keepdims=True) + 1e-8)) * xu
    # sin(theta) > 1e-3 always holds after the clamp of cos, so upstream's other branch never runs.
    x_new = np.cos(theta_new) * xc + perp * np.sin(theta_new) / np.sin(theta)
    return ((x - x_new) / sigma).astype(x.dtype)


def velocity_clamp(v: np.ndarray, x: np.ndarray, threshold: float) -> np.ndarray:
    """Scales each item's velocity down so that ``‖v‖ ≤ threshold · ‖x‖`` (norms over T×C)."""
    nx = np.sqrt(np.sum(np.square(x, dtype=np.float64), axis=(-2, -1), keepdims=True))
    nv = np.sqrt(np.sum(np.square(v, dtype=np.float64), axis=(-2, -1), keepdims=True))
    return (v * np.minimum(1.0, threshold * (nx + 1e-10) / (nv + 1e-10))).astype(v.dtype)


def haar_bands(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The low and high band of ``d`` along time (axis −2) after a one-level orthonormal Haar
    transform with zero padding and back: ``L`` is each frame pair's mean, ``H = d − L``; an odd
    last frame is paired with a zero (``L = H = d/2``)."""
    T = d.shape[-2]
    even = T - T % 2
    low = np.empty_like(d)
    pairs = d[..., :even, :].reshape(*d.shape[:-2], even // 2, 2, d.shape[-1])
    low[..., :even, :] = np.repeat(pairs.mean(axis=-2), 2, axis=-2)
    if T % 2:
        low[..., -1, :] = d[..., -1, :] / 2
    return low, d - low


def dcw(x_next: np.ndarray, denoised: np.ndarray, t: float, mode: str, scaler: float,
        high_scaler: float) -> np.ndarray:
    """DCW (upstream dcw_correction.DCWCorrector.apply, Haar wavelet): pushes the stepped state
    away from the step's clean prediction in the wavelet band(s) of ``mode``, by strengths that
    follow ``t``, the step's current timestep (pix: a constant strength, no transform)."""
    d = (x_next - denoised).astype(np.float32)
    if mode == "pix":
        return (x_next + np.float32(scaler) * d).astype(x_next.dtype)
    low, high = haar_bands(d)
    if mode == "low":
        out = x_next + np.float32(t * scaler) * low
    elif mode == "high":
        out = x_next + np.float32((1.0 - t) * scaler) * high
    else:
        out = x_next + np.float32(t * scaler) * low + np.float32((1.0 - t) * high_scaler) * high
    return out.astype(x_next.dtype)


@functools.lru_cache(maxsize=1)
def _rock4_tables() -> dict:
    with np.load(Path(__file__).with_name("stork4_tables.npz")) as f:
        return {k: f[k] for k in f.files}


def _rms(a: np.ndarray) -> float:
    return math.sqrt(float(np.mean(np.square(a, dtype=np.float64))))


class _Stork4:
    """acestep.cpp's STORK4 (src/solvers/solver-stork.h): per step, the velocity's first and
    second time derivatives from the last steps' velocities, then ROCK4's Chebyshev sub-steps
    over the Taylor extrapolation of the one evaluated velocity (no further model calls).  The
    stability guards are taken per item, so a batch item steps as it does alone."""

    def __init__(self, substeps: int):
        self.substeps = substeps
        self.history: list[tuple[np.ndarray, float]] = []  # (v, dt) of the last steps, at most 3

    def _derivatives(self, v: np.ndarray):
        if not self.history:
            return 0, None, None
        v_p, h1 = self.history[-1]
        if h1 == 0.0:
            return 0, None, None
        dv = ((v_p - v) / np.float32(h1)).astype(np.float32)
        v_rms = _rms(v)
        if v_rms > 0.0 and _rms(dv) * abs(h1) > 5.0 * v_rms:
            return 0, None, None
        if len(self.history) < 2:
            return 1, dv, None
        v_pp, h2 = self.history[-2]
        h1d, h2d = float(h1), float(h2)
        d2v = (2.0 / (h1d * h2d * (h1d + h2d)) * (v_pp.astype(np.float64) * h1d - v_p.astype(np.float64) * (h1d + h2d)
                                                   + v.astype(np.float64) * h2d)).astype(np.float32)
        if v_rms > 0.0 and _rms(d2v) * h1 * h1 > 5.0 * v_rms:
            return 1, dv, None
        return 2, dv, d2v

    @staticmethod
    def _taylor(v, dv, d2v, order, c):
        c = np.float32(c)
        if order == 0:
            return v
        out = v + c * dv
        return out + np.float32(0.5) * c * c * d2v if order == 2 else out

    def _rock4(self, x, v, s, t, dt, order, dv, d2v):
        tab = _rock4_tables()
        ms, recf = tab["ms"], tab["recf"]
        s = min(s, int(ms[-1]))
        mz = int(np.argmax(ms >= s))
        mdeg, mr = int(ms[mz]), int(np.sum(2 * ms[:mz] - 1))
        t, dt = np.float32(t), np.float32(dt)
        a = -dt * np.float32(recf[mr])
        c1 = c2 = np.float32(t + a)
        c3 = t
        y2, y1 = x, x + a * v
        for j in range(2, mdeg + 1):
            vel = self._taylor(v, dv, d2v, order, c1 - t)
            a = -dt * np.float32(recf[mr + 2 * (j - 2) + 1])
            b3 = -np.float32(recf[mr + 2 * (j - 2) + 2])
            b2 = np.float32(1.0) - b3
            c_new = np.float32(a + b2 * c2 + b3 * c3)
            y2, y1 = y1, a * vel + b2 * y1 + b3 * y2
            c3, c2, c1 = c2, c_new, c_new
        fa = [-dt * np.float32(c) for c in tab["fpa"][mz]]
        fb = [-dt * np.float32(c) for c in tab["fpb"][mz]]
        f1 = self._taylor(v, dv, d2v, order, c1 - t)
        f2 = self._taylor(v, dv, d2v, order, np.float32(c1 + fa[0]) - t)
        f3 = self._taylor(v, dv, d2v, order, np.float32(c1 + fa[1] + fa[2]) - t)
        f4 = self._taylor(v, dv, d2v, order, np.float32(c1 + fa[3] + fa[4] + fa[5]) - t)
        return y1 + fb[0] * f1 + fb[1] * f2 + fb[2] * f3 + fb[3] * f4

    def step(self, x: np.ndarray, v: np.ndarray, t: float, t_next: float) -> np.ndarray:
        dt = np.float32(np.float32(t) - np.float32(t_next))
        if not self.history:
            out = x - v * dt
        else:
            order, dv, d2v = self._derivatives(v)
            s, out = max(self.substeps, 2), None
            while s >= 2:
                cand = self._rock4(x, v, s, t, dt, order, dv, d2v)
                if np.all(np.isfinite(cand)):
                    out = cand
                    break
                s //= 2
            if out is None:
                out = x - v * dt
        self.history = (self.history + [(v, float(dt))])[-3:]
        return out.astype(np.float32)


@dataclass
class Repaint:
    """Repaint step injection and boundary blend (upstream repaint_step_injection.py): for the
    first ``cutoff`` steps, the frames outside ``mask`` (True: regenerate) are reset to the
    source re-noised to the step's landing time; after the loop ``crossfade`` frames on each side
    of the window blend into the source."""

    mask: np.ndarray  # (T,) bool, True where the DiT paints anew
    source: np.ndarray  # (T, C) clean latents of the source
    noise: np.ndarray  # (T, C) the run's initial noise
    cutoff: int
    crossfade: int

    def inject(self, x: np.ndarray, t_next: float) -> np.ndarray:
        keep = np.float32(t_next) * self.noise + np.float32(1.0 - t_next) * self.source
        return np.where(self.mask[:, None], x, keep).astype(np.float32)

    def soft_mask(self) -> np.ndarray:
        """(T,) float32: 1 in the window, ramps of ``crossfade`` frames outside it, 0 elsewhere."""
        m = self.mask.astype(np.float32)
        if m.all() or not m.any():
            return m
        idx = np.flatnonzero(self.mask)
        left, right, T = int(idx[0]), int(idx[-1]) + 1, len(m)
        lo = max(left - self.crossfade, 0)
        n = left - lo
        m[lo:left] = (np.arange(n) + 1) / (n + 1)
        hi = min(right + self.crossfade, T)
        n = hi - right
        m[right:hi] = 1.0 - (np.arange(n) + 1) / (n + 1)
        return m

    def blend(self, x: np.ndarray) -> np.ndarray:
        if self.crossfade <= 0:
            return x
        m = self.soft_mask()[:, None]
        return (m * x + (1.0 - m) * self.source).astype(np.float32)


# velocity(x_t (B, T, C), t, guided) -> v (B, T, C); when guided, the callable evaluates the
# conditional and the null conditioning as one batch and returns (v_cond, v_null).
VelocityFn = Callable[[np.ndarray, float, bool], object]


def check_options(solver: str = "euler", stork_substeps: int = STORK_SUBSTEPS, use_adg: bool = False,
                  cfg_interval=(0.0, 1.0),
                  velocity_norm_threshold: float = 0.0, velocity_ema_factor: float = 0.0,
                  dcw_mode: Optional[str] = None, dcw_scaler: float = DCW_SCALER,
                  dcw_high_scaler: float = DCW_HIGH_SCALER) -> None:
    """InputError naming the first sampler option out of its range."""
    if solver not in SOLVERS:
        raise InputError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    lo, hi = STORK_SUBSTEPS_RANGE
    if isinstance(stork_substeps, bool) or not isinstance(stork_substeps, (int, np.integer)) \
            or not lo <= stork_substeps <= hi:
        raise InputError(f"stork_substeps must be an integer {lo}..{hi}, got {stork_substeps!r}")
    if not isinstance(use_adg, (bool, np.bool_)):
        raise InputError(f"use_adg must be True or False, got {use_adg!r}")
    try:
        start, end = (float(v) for v in cfg_interval)
    except (TypeError, ValueError):
        raise InputError(f"cfg_interval must be two numbers (start, end), got {cfg_interval!r}") from None
    if not 0.0 <= start <= end <= 1.0:
        raise InputError(f"cfg_interval must satisfy 0 <= start <= end <= 1, got ({start:g}, {end:g})")
    for name, v in (("velocity_norm_threshold", velocity_norm_threshold), ("velocity_ema_factor", velocity_ema_factor),
                    ("dcw_scaler", dcw_scaler), ("dcw_high_scaler", dcw_high_scaler)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
            raise InputError(f"{name} must be a number, got {v!r}")
    if not (math.isfinite(velocity_norm_threshold) and velocity_norm_threshold >= 0):
        raise InputError(f"velocity_norm_threshold must be a finite number >= 0, got {velocity_norm_threshold}")
    if not 0.0 <= velocity_ema_factor < 1.0:
        raise InputError(f"velocity_ema_factor must lie in [0, 1), got {velocity_ema_factor}")
    if dcw_mode is not None and dcw_mode not in DCW_MODES:
        raise InputError(f"dcw_mode must be one of {', '.join(DCW_MODES)}, got {dcw_mode!r}")
    for name, v in (("dcw_scaler", dcw_scaler), ("dcw_high_scaler", dcw_high_scaler)):
        if not (math.isfinite(v) and v >= 0):
            raise InputError(f"{name} must be a finite number >= 0, got {v}")


def sample(velocity: VelocityFn, noise: np.ndarray, num_steps: int = TURBO_STEPS, shift: float = SHIFT,
           timesteps: Optional[Sequence[float]] = None, guidance_scale: float = 1.0,
           cfg_interval: tuple[float, float] = (0.0, 1.0),
           callback: Optional[Callable[[int, float, np.ndarray, np.ndarray], None]] = None,
           mix: Optional[Callable[[np.ndarray, float, np.ndarray], np.ndarray]] = None, *,
           solver: str = "euler", seed: int | Sequence[int] = 0, stork_substeps: int = STORK_SUBSTEPS, use_adg: bool = False,
           velocity_norm_threshold: float = 0.0, velocity_ema_factor: float = 0.0, dcw_mode: Optional[str] = None,
           dcw_scaler: float = DCW_SCALER, dcw_high_scaler: float = DCW_HIGH_SCALER, repaint: Optional[Repaint] = None,
           turbo: bool = False) -> np.ndarray:
    """Integrates the flow ODE from ``noise`` (t = 1) to t = 0.

    One step, in upstream's order (base ``generate_audio``): the model's velocity; with
    ``guidance_scale > 1`` on steps whose timestep t lies in ``cfg_interval`` (upstream's test on
    t itself, both ends included), APG — or ADG with ``use_adg`` — on a (cond, null) pair (APG's
    momentum lives for the whole loop); ``mix(x, t, v)`` (cover strength); the velocity clamp and
    EMA; the solver; DCW (``dcw_mode`` None: off); repaint injection.

    Solvers: ``euler`` ``x ← x + (t_next − t)·v``; ``sde`` re-noises the clean prediction to
    t_next with :func:`sde_noise` of ``seed`` (item b of a batch: ``seed + b``, or ``seed[b]`` when
    ``seed`` is a list); ``dpm3m`` is
    acestep.cpp's fixed-coefficient Adams–Bashforth 2/3; ``stork4`` acestep.cpp's STORK4;
    ``heun`` upstream's predictor–corrector (two model calls a step).  Every solver but Heun
    takes a plain Euler step to t = 0 at the end, as acestep.cpp does; Heun corrects there too
    (the model runs at t = 0), as upstream's base does, except with ``turbo``, whose loop ends on
    the clean prediction whatever the solver.
    ``callback(i, t, x, v_model)`` runs after each step, ``v_model`` the model's (conditional) velocity.
    """
    check_options(solver, stork_substeps, use_adg, cfg_interval, velocity_norm_threshold, velocity_ema_factor,
                  dcw_mode, dcw_scaler, dcw_high_scaler)
    x = np.array(noise, dtype=np.float32, copy=True)
    if x.ndim not in (2, 3) or not np.all(np.isfinite(x)):
        raise InputError("noise must be a finite (T, C) or (B, T, C) array")
    if not np.isfinite(guidance_scale) or guidance_scale < 1.0:
        raise InputError(f"guidance_scale must be >= 1, got {guidance_scale}")
    lo, hi = (float(v) for v in cfg_interval)
    ts = timestep_schedule(num_steps, shift, timesteps)
    buffer = MomentumBuffer() if guidance_scale > 1.0 else None
    if isinstance(seed, (list, tuple, np.ndarray)):  # one per item
        item_seeds = [int(s) for s in seed]
        if len(item_seeds) != (1 if x.ndim == 2 else x.shape[0]):
            raise InputError(f"{len(item_seeds)} seeds for noise of shape {x.shape}")
    else:
        item_seeds = [int(seed)] if x.ndim == 2 else [int(seed) + b for b in range(x.shape[0])]
    stork = [_Stork4(int(stork_substeps)) for _ in item_seeds]
    prev_v: Optional[np.ndarray] = None  # the previous step's final velocity (EMA)
    history: list[np.ndarray] = []  # dpm3m's last two velocities

    def items(fn, xs, vs, *args):  # fn(item, x, v, *args) per item of a batch
        if xs.ndim == 2:
            return fn(0, xs, vs, *args)
        return np.stack([fn(b, xs[b], vs[b], *args) for b in range(xs.shape[0])])

    def sde_step(b, xb, vb, t, t_next, i):
        return (np.float32(t_next) * sde_noise(item_seeds[b], i, xb.shape)
                + np.float32(1.0 - t_next) * (xb - np.float32(t) * vb))

    def stork_step(b, xb, vb, t, t_next):
        return stork[b].step(xb, vb, t, t_next)

    def guide(xs, t, corrector):
        """The guided velocity at (xs, t) and the model's conditional one."""
        if buffer is None or not lo <= t <= hi:
            v = velocity(xs, t, False)
            return v, v
        c, u = velocity(xs, t, True)
        if use_adg and t > 0:
            return adg(xs, c, u, t, guidance_scale), c
        if corrector:  # plain CFG, so APG's momentum moves once a step
            return (u + np.float32(guidance_scale) * (c - u)).astype(np.float32), c
        return apg(c, u, guidance_scale - 1.0, buffer), c

    def finish(v, xs, t):
        """Cover mix, then the velocity clamp."""
        v = np.asarray(v if mix is None else mix(xs, t, v), dtype=np.float32)
        return v if velocity_norm_threshold <= 0 else velocity_clamp(v, xs, velocity_norm_threshold)

    last = len(ts) - 1
    for i, t in enumerate(ts):
        t = float(t)
        t_next = float(ts[i + 1]) if i < last else 0.0
        v, v_model = guide(x, t, False)
        v = finish(v, x, t)
        if velocity_ema_factor > 0 and prev_v is not None:
            v = ((1.0 - velocity_ema_factor) * v + velocity_ema_factor * prev_v).astype(np.float32)
        final_v = v
        dt = np.float32(t - t_next)
        if i == last and (solver != "heun" or turbo):
            x_next = x + np.float32(t_next - t) * v
        elif solver == "sde":
            x_next = items(sde_step, x, v, t, t_next, i)
        elif solver == "dpm3m":
            if len(history) == 0:
                v_eff = v
            elif len(history) == 1:
                v_eff = np.float32(1.5) * v - np.float32(0.5) * history[-1]
            else:
                v_eff = (np.float32(23 / 12) * v - np.float32(16 / 12) * history[-1]
                         + np.float32(5 / 12) * history[-2])
            x_next = x - dt * v_eff
            history = (history + [v])[-2:]
        elif solver == "stork4":
            x_next = items(stork_step, x, v, t, t_next)
        elif solver == "heun":
            x_pred = x - dt * v
            v2, _ = guide(x_pred, t_next, True)
            v2 = finish(v2, x_pred, t_next)
            if velocity_ema_factor > 0:
                v2 = ((1.0 - velocity_ema_factor) * v2 + velocity_ema_factor * v).astype(np.float32)
            final_v = (np.float32(0.5) * (v + v2)).astype(np.float32)
            x_next = x - dt * final_v
        else:
            x_next = x + np.float32(t_next - t) * v
        x_next = np.asarray(x_next, dtype=np.float32)
        if dcw_mode is not None:
            x_next = dcw(x_next, x - np.float32(t) * v, t, dcw_mode, dcw_scaler, dcw_high_scaler)
        if repaint is not None and i < repaint.cutoff and not (turbo and i == last):
            x_next = repaint.inject(x_next, t_next)
        x, prev_v = x_next, final_v
        if callback is not None:
            callback(i, t, x, v_model)  # after the step; v_model: the model's (conditional) velocity
    return x if repaint is None else repaint.blend(x)
