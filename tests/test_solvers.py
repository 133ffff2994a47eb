"""The non-Euler solvers of acestep_ggml.flow, each against a numpy loop re-written here from its
defining source, compared after every step on a synthetic velocity field.

Sources: acestep.cpp (ServeurpersoCom/acestep.cpp fa337757, MIT) src/solvers/solver-sde.h,
solver-dpm.h, solver-stork.h and src/dit-sampler.h (the final x0 step); upstream ACE-Step 1.5
(ace-step/ACE-Step-1.5 dce62140) acestep/models/base/modeling_acestep_v15_base.py
generate_audio (Heun, L2105-2160).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import fresh_seed

from acestep_ggml import InputError, flow

TABLES = Path(flow.__file__).with_name("stork4_tables.npz")


def _field(rng, T=19, C=64):
    """A smooth, t-dependent velocity v(x, t) = tanh(x W + t b), and a noise start."""
    w = rng.standard_normal((C, C), dtype=np.float32) / 10
    b = rng.standard_normal(C, dtype=np.float32)
    x0 = rng.standard_normal((T, C), dtype=np.float32)
    return (lambda x, t: np.tanh(x @ w + np.float32(t) * b).astype(np.float32)), x0


def _ours(solver, vel, x0, steps, shift, **kw):
    trace = []
    out = flow.sample(lambda x, t, guided: vel(x, t), x0, num_steps=steps, shift=shift, solver=solver,
                      callback=lambda i, t, x, v: trace.append(x.copy()), **kw)
    return out, trace


def _compare(ours_trace, ref_trace, seed, tol=2e-5):
    assert len(ours_trace) == len(ref_trace)
    for i, (a, b) in enumerate(zip(ours_trace, ref_trace)):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=f"seed={seed} step={i}")


# -- sde ------------------------------------------------------------------------------------------
def test_sde_matches_ancestral_reference_every_step():
    # solver-sde.h: x0 = x - t v; x <- t_next * eps + (1 - t_next) * x0.  eps: our documented
    # stream (SeedSequence(seed, spawn_key=(0x5DE, step))) instead of acestep.cpp's Philox.
    seed = fresh_seed()
    vel, x0 = _field(np.random.default_rng(seed))
    steps, shift, noise_seed = 8, 3.0, seed + 17
    _, trace = _ours("sde", vel, x0, steps, shift, seed=noise_seed)
    ts = list(flow.timestep_schedule(steps, shift)) + [0.0]
    x, ref = x0.copy(), []
    for i in range(steps):
        t, tn = float(ts[i]), float(ts[i + 1])
        v = vel(x, t)
        if i == steps - 1:  # dit-sampler.h: the last step is x0 = x - t v, no noise
            x = x - np.float32(t) * v
        else:
            eps = np.random.default_rng(np.random.SeedSequence(noise_seed, spawn_key=(0x5DE, i))).standard_normal(
                x.shape, dtype=np.float32)
            x = np.float32(tn) * eps + np.float32(1 - tn) * (x - np.float32(t) * v)
        ref.append(x)
    _compare(trace, ref, seed)


def test_sde_noise_comes_from_the_seed_alone():
    seed = fresh_seed()
    vel, x0 = _field(np.random.default_rng(seed))
    a, _ = _ours("sde", vel, x0, 8, 3.0, seed=5)
    b, _ = _ours("sde", vel, x0, 8, 3.0, seed=5)
    c, _ = _ours("sde", vel, x0, 8, 3.0, seed=6)
    e, _ = _ours("euler", vel, x0, 8, 3.0)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c, atol=1e-3) and not np.allclose(a, e, atol=1e-3)


def test_sde_stream_never_equals_an_initial_noise():
    # Item b of a batch starts from initial_noise(seed + b); the SDE streams carry a spawn key,
    # so none of them equals any item's start noise (acestep.cpp's seed + step + 1 would).
    seed = fresh_seed()
    starts = [flow.initial_noise(6, seed + b) for b in range(4)]
    for step in range(4):
        eps = flow.sde_noise(seed, step, (6, 64))
        assert not any(np.allclose(eps, s) for s in starts)


def test_sde_batch_item_equals_single_run_with_seed_plus_index():
    seed = fresh_seed()
    vel, _ = _field(np.random.default_rng(seed))
    xs = np.stack([flow.initial_noise(11, seed + b) for b in range(3)])
    batch = flow.sample(lambda x, t, g: np.stack([vel(xb, t) for xb in x]), xs, num_steps=6, solver="sde", seed=seed)
    for b in range(3):
        single, _ = _ours("sde", vel, xs[b], 6, 3.0, seed=seed + b)
        np.testing.assert_allclose(batch[b], single, rtol=1e-6, atol=1e-6)


# -- dpm3m ----------------------------------------------------------------------------------------
def test_dpm3m_matches_acestep_cpp_adams_bashforth_every_step():
    # solver-dpm.h: Euler, then 1.5 v - 0.5 v', then 23/12 v - 16/12 v' + 5/12 v''; the final
    # step to 0 is dit-sampler.h's x0 step.
    seed = fresh_seed()
    vel, x0 = _field(np.random.default_rng(seed))
    steps, shift = 9, 3.0
    _, trace = _ours("dpm3m", vel, x0, steps, shift)
    ts = list(flow.timestep_schedule(steps, shift)) + [0.0]
    x, prev, prev2, ref = x0.copy(), None, None, []
    for i in range(steps):
        t, tn = float(ts[i]), float(ts[i + 1])
        v = vel(x, t)
        dt = np.float32(np.float32(t) - np.float32(tn))
        if i == steps - 1:
            x = x - np.float32(t) * v
        else:
            if prev is None:
                ve = v
            elif prev2 is None:
                ve = 1.5 * v - 0.5 * prev
            else:
                ve = 23 / 12 * v - 16 / 12 * prev + 5 / 12 * prev2
            x = (x - ve.astype(np.float32) * dt).astype(np.float32)
            prev2, prev = prev, v
        ref.append(x)
    _compare(trace, ref, seed)


# -- stork4 ---------------------------------------------------------------------------------------
class _RefStork:
    """solver-stork.h transcribed line by line (element loops vectorised)."""

    def __init__(self, s):
        t = np.load(TABLES)
        self.MS, self.FPA, self.FPB, self.RECF = list(t["ms"]), t["fpa"], t["fpb"], t["recf"]
        self.s, self.hist, self.k = s, [], 0

    @staticmethod
    def rms(a):
        return math.sqrt(float(np.sum(a.astype(np.float64) ** 2)) / a.size)

    def derivs(self, vt):
        if not self.hist:
            return 0, None, None
        vp, h1 = self.hist[-1]
        if h1 == 0:
            return 0, None, None
        dv = ((vp - vt) / np.float32(h1)).astype(np.float32)
        vr, dr = self.rms(vt), self.rms(dv)
        if vr > 0 and dr * abs(h1) > 5 * vr:
            return 0, None, None
        if len(self.hist) < 2:
            return 1, dv, None
        vpp, h2 = self.hist[-2]
        h1d, h2d = float(h1), float(h2)
        coeff = 2.0 / (h1d * h2d * (h1d + h2d))
        d2v = (coeff * (vpp.astype(np.float64) * h1d - vp.astype(np.float64) * (h1d + h2d)
                        + vt.astype(np.float64) * h2d)).astype(np.float32)
        if vr > 0 and self.rms(d2v) * h1 * h1 > 5 * vr:
            return 1, dv, None
        return 2, dv, d2v

    @staticmethod
    def taylor(order, diff, v, dv, d2v):
        diff = np.float32(diff)
        if order >= 2:
            return v + diff * dv + np.float32(0.5) * diff * diff * d2v
        if order == 1:
            return v + diff * dv
        return v.copy()

    def mdegr(self, s):
        mp1 = 1
        for i, m in enumerate(self.MS):
            if m >= s:
                return int(m), i, mp1 - 1
            mp1 += m * 2 - 1
        raise AssertionError

    def rock4(self, xt, vt, s, tc, tp, order, dv, d2v):
        s = min(s, int(self.MS[-1]))
        mdeg, mz, mr = self.mdegr(s)
        f = np.float32
        dt = f(f(tc) - f(tp))
        yj2, yj1 = xt.copy(), xt.copy()
        ci1 = ci2 = ci3 = f(tc)
        for j in range(1, mdeg + 1):
            if j == 1:
                temp1 = -dt * f(self.RECF[mr])
                ci1 = f(tc) + temp1
                ci2 = ci1
                yj1 = xt + temp1 * vt
            else:
                va = self.taylor(order, ci1 - f(tc), vt, dv, d2v)
                temp1 = -dt * f(self.RECF[mr + 2 * (j - 2) + 1])
                temp3 = -f(self.RECF[mr + 2 * (j - 2) + 2])
                temp2 = f(1) - temp3
                ci1_new = temp1 + temp2 * ci2 + temp3 * ci3
                yj = temp1 * va + temp2 * yj1 + temp3 * yj2
                yj2, yj1 = yj1, yj
                ci3, ci2, ci1 = ci2, ci1_new, ci1_new
        A, B = self.FPA[mz], self.FPB[mz]
        fpa = [-dt * f(a) for a in A]
        fpb = [-dt * f(b) for b in B]
        F1 = self.taylor(order, ci1 - f(tc), vt, dv, d2v)
        F2 = self.taylor(order, (ci1 + fpa[0]) - f(tc), vt, dv, d2v)
        F3 = self.taylor(order, (ci1 + fpa[1] + fpa[2]) - f(tc), vt, dv, d2v)
        F4 = self.taylor(order, (ci1 + fpa[3] + fpa[4] + fpa[5]) - f(tc), vt, dv, d2v)
        return yj1 + fpb[0] * F1 + fpb[1] * F2 + fpb[2] * F3 + fpb[3] * F4

    def step(self, xt, vt, tc, tp):
        dt = np.float32(np.float32(tc) - np.float32(tp))
        if self.k == 0:
            out = xt - vt * dt
        else:
            order, dv, d2v = self.derivs(vt)
            s = max(self.s, 2)
            out = None
            while s >= 2:
                cand = self.rock4(xt, vt, s, tc, tp, order, dv, d2v)
                if np.all(np.isfinite(cand)):
                    out = cand
                    break
                s //= 2
            if out is None:
                out = xt - vt * dt
        self.hist = (self.hist + [(vt.copy(), dt)])[-3:]
        self.k += 1
        return out


@pytest.mark.parametrize("substeps", [10, 2, 37])
def test_stork4_matches_acestep_cpp_every_step(substeps):
    seed = fresh_seed()
    vel, x0 = _field(np.random.default_rng(seed))
    steps, shift = 8, 3.0
    _, trace = _ours("stork4", vel, x0, steps, shift, stork_substeps=substeps)
    ts = list(flow.timestep_schedule(steps, shift)) + [0.0]
    ref_solver, x, ref = _RefStork(substeps), x0.copy(), []
    for i in range(steps):
        t, tn = float(ts[i]), float(ts[i + 1])
        v = vel(x, t)
        x = x - np.float32(t) * v if i == steps - 1 else ref_solver.step(x, v, t, tn).astype(np.float32)
        ref.append(x)
    # The two loops do the same float32 operations; 1e-5 leaves room for numpy's summation order.
    _compare(trace, ref, seed, tol=1e-5)


def test_stork4_tables_have_the_rock4_shapes():
    t = np.load(TABLES)
    assert t["ms"].shape == (50,) and t["fpa"].shape == (50, 6) and t["fpb"].shape == (50, 4)
    # RECF holds 2*MS[k] - 1 recurrence coefficients per degree.
    assert t["recf"].shape == (int(np.sum(2 * t["ms"] - 1)),) == (4382,)


# -- heun -----------------------------------------------------------------------------------------
def _heun_reference(vc, vu, x0, ts, g, interval, turbo=False):
    """Upstream base generate_audio, sampler_mode='heun': APG on the main step inside the
    interval (on t), plain CFG u + g (c - u) on the corrector at t_next, the average of the two."""
    buf = flow.MomentumBuffer()
    x, out = x0.copy(), []
    ts = list(ts) + [0.0]
    n = len(ts) - 1
    for i in range(n):
        t, tn = float(ts[i]), float(ts[i + 1])
        c = vc(x, t)
        v = flow.apg(c, vu(x, t), g - 1.0, buf) if g > 1 and interval[0] <= t <= interval[1] else c
        dt = np.float32(t - tn)
        if turbo and i == n - 1:
            x = x - np.float32(t) * v
        else:
            xp = x - dt * v
            c2 = vc(xp, tn)
            v2 = vu(xp, tn) + np.float32(g) * (c2 - vu(xp, tn)) if g > 1 and interval[0] <= tn <= interval[1] else c2
            x = x - dt * (np.float32(0.5) * (v + v2))
        out.append(x.astype(np.float32))
    return out


@pytest.mark.parametrize("g,interval,turbo", [(1.0, (0.0, 1.0), False), (5.0, (0.0, 1.0), False),
                                              (5.0, (0.3, 0.9), False), (1.0, (0.0, 1.0), True)])
def test_heun_matches_upstream_predictor_corrector(g, interval, turbo):
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    vc, x0 = _field(rng)
    vu, _ = _field(rng)
    calls = []

    def velocity(x, t, guided):
        calls.append(t)
        return (vc(x, t), vu(x, t)) if guided else vc(x, t)

    trace = []
    flow.sample(velocity, x0, num_steps=6, shift=3.0, guidance_scale=g, cfg_interval=interval, solver="heun",
                turbo=turbo, callback=lambda i, t, x, v: trace.append(x.copy()))
    ref = _heun_reference(vc, vu, x0, flow.timestep_schedule(6, 3.0), g, interval, turbo)
    _compare(trace, ref, seed)
    # Two model calls a step; base evaluates the model at t = 0 on its last step, turbo does not.
    assert len(calls) == 12 - turbo and (calls[-1] == 0.0) != turbo


def test_bad_solver_options_raise_input_error_naming_the_field():
    x = np.zeros((4, 64), np.float32)
    v = lambda x, t, g: x  # noqa: E731
    for kw, name in [({"solver": "rk4"}, "solver"), ({"stork_substeps": 1}, "stork_substeps"),
                     ({"stork_substeps": 149}, "stork_substeps"), ({"cfg_interval": (0.6, 0.2)}, "cfg_interval"),
                     ({"velocity_norm_threshold": -1.0}, "velocity_norm_threshold"),
                     ({"velocity_ema_factor": 1.0}, "velocity_ema_factor"), ({"dcw_mode": "mid"}, "dcw_mode"),
                     ({"dcw_scaler": float("nan")}, "dcw_scaler"), ({"dcw_high_scaler": -0.1}, "dcw_high_scaler")]:
        with pytest.raises(InputError, match=name):
            flow.sample(v, x, num_steps=2, **kw)
