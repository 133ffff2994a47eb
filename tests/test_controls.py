"""Guidance options, DCW, repaint and retake (acestep_ggml.flow, acestep_ggml.request.Controls),
each against a re-implementation of upstream ACE-Step 1.5 (ace-step/ACE-Step-1.5 dce62140):
acestep/models/common/apg_guidance.py (adg_forward), dcw_correction.py / dcw_primitives.py (DCW),
models/base/modeling_acestep_v15_base.py generate_audio (the order of one step: guidance, clamp,
EMA, solver, DCW, repaint injection), core/generation/handler/generate_music.py
(_resolve_repaint_config), repaint_step_injection.py and repaint_waveform_splice.py.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import fresh_seed
from test_solvers import _compare

from acestep_ggml import InputError, flow
from acestep_ggml.pipeline import splice_source
from acestep_ggml.request import Controls
from acestep_ggml.tasks import Window


def _pair(rng, T=15, C=64):
    wc, wu = (rng.standard_normal((C, C), dtype=np.float32) / 8 for _ in range(2))
    b = rng.standard_normal(C, dtype=np.float32)
    vc = lambda x, t: np.tanh(x @ wc + np.float32(t) * b).astype(np.float32)  # noqa: E731
    vu = lambda x, t: np.tanh(x @ wu).astype(np.float32)  # noqa: E731
    return vc, vu, rng.standard_normal((T, C), dtype=np.float32)


# -- ADG ------------------------------------------------------------------------------------------
def _torch_adg(latents, cond, uncond, sigma, g, angle_clip=3.14 / 6):
    """apg_guidance.adg_forward (apply_norm False, apply_clip True), [N, T, C] tensors."""
    n, t, c = cond.shape
    sigma = torch.tensor(sigma, dtype=latents.dtype).view(1, 1, 1).expand(n, 1, 1)
    weight = g - 1
    weight = weight * (weight > 0) + 1e-3
    hat_c = latents - sigma * cond
    hat_u = latents - sigma * uncond
    diff = hat_c - hat_u
    a = torch.nn.functional.normalize(hat_c.view(-1, c).to(float), dim=-1)
    b = torch.nn.functional.normalize(hat_u.reshape(-1, c).to(float), dim=-1)
    cos = (a * b).sum(-1).clamp(-1.0 + 1e-6, 1.0 - 1e-6)
    theta = torch.acos(cos).view(n, t, 1)
    theta_new = torch.clip(weight * theta, -angle_clip, angle_clip)
    d, u = diff.view(n * t, c), hat_u.view(n * t, c)
    dot = torch.sum(d * u, dim=1, keepdim=True)
    perp = (d - dot / (torch.sum(u * u, dim=1, keepdim=True) + 1e-8) * u).reshape(n, t, c)
    new = torch.cos(theta_new) * hat_c + perp * torch.sin(theta_new) / torch.sin(theta) * (torch.sin(theta) > 1e-3) \
        + perp * weight * (torch.sin(theta) <= 1e-3)
    return ((latents - new) / sigma).to(latents.dtype)


@pytest.mark.parametrize("g,sigma", [(7.0, 0.9), (3.0, 0.3), (1.0, 0.5), (15.0, 0.05)])
def test_adg_matches_upstream_adg_forward(g, sigma):
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    x, c, u = (rng.standard_normal((1, 23, 64), dtype=np.float32) for _ in range(3))
    ours = flow.adg(x, c, u, sigma, g)
    ref = _torch_adg(*(torch.from_numpy(a) for a in (x, c, u)), sigma, g).numpy()
    # float64 angles on both sides; float32 rounding of the (x - x_new) / sigma division.
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 / sigma, err_msg=f"seed={seed}")


def _ref_loop(vc, vu, x0, ts, g=1.0, interval=(0.0, 1.0), adg=False, thr=0.0, ema=0.0, dcw=None, repaint=None):
    """Upstream's base step order with the Euler solver; returns every step's state."""
    buf = flow.MomentumBuffer()
    ts = list(ts) + [0.0]
    x, prev, out = x0.copy(), None, []
    for i in range(len(ts) - 1):
        t, tn = float(ts[i]), float(ts[i + 1])
        if g > 1 and interval[0] <= t <= interval[1]:
            c, u = vc(x, t), vu(x, t)
            v = _torch_adg(*(torch.from_numpy(a[None]) for a in (x, c, u)), t, g).numpy()[0] if adg \
                else flow.apg(c, u, g - 1, buf)
        else:
            v = vc(x, t)
        if thr > 0:
            nx, nv = np.linalg.norm(x.astype(np.float64)), np.linalg.norm(v.astype(np.float64))
            v = (v * min(1.0, thr * (nx + 1e-10) / (nv + 1e-10))).astype(np.float32)
        if ema > 0 and prev is not None:
            v = ((1 - ema) * v + ema * prev).astype(np.float32)
        xn = x - np.float32(t - tn) * v
        if dcw is not None:
            xn = _ref_dcw(xn, x - np.float32(t) * v, t, *dcw)
        if repaint is not None and i < repaint["cutoff"]:
            keep = np.float32(tn) * repaint["noise"] + np.float32(1 - tn) * repaint["source"]
            xn = np.where(repaint["mask"][:, None], xn, keep)
        x, prev = xn.astype(np.float32), v
        out.append(x)
    return out


def _run(vc, vu, x0, steps=7, **kw):
    trace = []

    def velocity(x, t, guided):
        return (vc(x, t), vu(x, t)) if guided else vc(x, t)

    out = flow.sample(velocity, x0, num_steps=steps, shift=3.0, callback=lambda i, t, x, v: trace.append(x.copy()),
                      **kw)
    return out, trace


def test_adg_loop_matches_upstream_order_and_leaves_apg_momentum_alone():
    seed = fresh_seed()
    vc, vu, x0 = _pair(np.random.default_rng(seed))
    _, trace = _run(vc, vu, x0, guidance_scale=6.0, use_adg=True, cfg_interval=(0.2, 1.0))
    ref = _ref_loop(vc, vu, x0, flow.timestep_schedule(7, 3.0), g=6.0, adg=True, interval=(0.2, 1.0))
    _compare(trace, ref, seed, tol=1e-4)


@pytest.mark.parametrize("thr,ema", [(0.5, 0.0), (0.0, 0.3), (0.4, 0.2)])
def test_velocity_clamp_and_ema_match_upstream(thr, ema):
    seed = fresh_seed()
    vc, vu, x0 = _pair(np.random.default_rng(seed))
    _, trace = _run(vc, vu, x0, guidance_scale=4.0, velocity_norm_threshold=thr, velocity_ema_factor=ema)
    ref = _ref_loop(vc, vu, x0, flow.timestep_schedule(7, 3.0), g=4.0, thr=thr, ema=ema)
    _compare(trace, ref, seed)


def test_cfg_interval_selects_steps_by_t_itself():
    # Upstream guides where start <= t <= end; (0, 0.5) is the late, low-noise half.
    seed = fresh_seed()
    vc, vu, x0 = _pair(np.random.default_rng(seed))
    guided = []
    flow.sample(lambda x, t, g: guided.append((t, g)) or ((vc(x, t), vu(x, t)) if g else vc(x, t)), x0,
                num_steps=8, shift=3.0, guidance_scale=5.0, cfg_interval=(0.0, 0.5))
    assert [g for _, g in guided] == [t <= 0.5 for t, _ in guided] and any(g for _, g in guided)


# -- DCW ------------------------------------------------------------------------------------------
def _haar_dwt(a):
    """One-level orthonormal Haar DWT along axis 0 with zero padding (pytorch_wavelets mode zero)."""
    if a.shape[0] % 2:
        a = np.concatenate([a, np.zeros_like(a[:1])])
    return (a[0::2] + a[1::2]) / math.sqrt(2), (a[0::2] - a[1::2]) / math.sqrt(2)


def _haar_idwt(lo, hi, T):
    out = np.empty((2 * lo.shape[0], lo.shape[1]), dtype=np.float64)
    out[0::2], out[1::2] = (lo + hi) / math.sqrt(2), (lo - hi) / math.sqrt(2)
    return out[:T]


def _ref_dcw(x, denoised, t, mode, scaler, high):
    """DCWCorrector.apply: x's bands pushed away from the clean prediction's (transform form)."""
    if mode == "pix":
        return (x + scaler * (x - denoised)).astype(np.float32)
    xl, xh = _haar_dwt(x.astype(np.float64))
    yl, yh = _haar_dwt(denoised.astype(np.float64))
    if mode in ("low", "double"):
        xl = xl + t * scaler * (xl - yl)
    if mode == "high":
        xh = xh + (1 - t) * scaler * (xh - yh)
    if mode == "double":
        xh = xh + (1 - t) * high * (xh - yh)
    return _haar_idwt(xl, xh, x.shape[0]).astype(np.float32)


@pytest.mark.parametrize("T", [1, 2, 7, 24, 25])
def test_haar_bands_equal_the_transform(T):
    seed = fresh_seed()
    d = np.random.default_rng(seed).standard_normal((T, 64))
    lo, hi = _haar_dwt(d)
    z = np.zeros_like(lo)
    low, high = flow.haar_bands(d)
    np.testing.assert_allclose(low, _haar_idwt(lo, z, T), atol=1e-12)
    np.testing.assert_allclose(high, _haar_idwt(z, hi, T), atol=1e-12)


@pytest.mark.parametrize("mode", ["low", "high", "double", "pix"])
def test_dcw_loop_matches_upstream(mode):
    seed = fresh_seed()
    vc, vu, x0 = _pair(np.random.default_rng(seed), T=13)
    _, trace = _run(vc, vu, x0, dcw_mode=mode, dcw_scaler=0.08, dcw_high_scaler=0.03)
    ref = _ref_loop(vc, vu, x0, flow.timestep_schedule(7, 3.0), dcw=(mode, 0.08, 0.03))
    _compare(trace, ref, seed)
    off, _ = _run(vc, vu, x0)
    assert not np.allclose(trace[-1], off, atol=1e-4)


def test_dcw_is_a_no_op_on_eulers_last_step():
    # The last Euler step lands on the clean prediction itself, so d = 0 there.
    seed = fresh_seed()
    vc, vu, x0 = _pair(np.random.default_rng(seed))
    x, v, t = x0, vc(x0, 0.3), 0.3
    x_next = x - np.float32(t) * v
    for mode in flow.DCW_MODES:
        np.testing.assert_array_equal(flow.dcw(x_next, x - np.float32(t) * v, t, mode, 0.1, 0.1), x_next)


# -- repaint --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,strength,expected", [
    ("aggressive", 0.5, (0.0, 0, 0.0)), ("conservative", 0.0, (1.0, 25, 0.05)),
    ("balanced", 0.5, (0.5, 12, 0.025)),  # Python round: 12.5 -> 12
    ("balanced", 1.0, (0.0, 0, 0.0)), ("balanced", 0.0, (1.0, 25, 0.05)), ("balanced", 0.3, (0.7, 18, 0.035)),
])
def test_repaint_modes_resolve_as_upstream(mode, strength, expected):
    ratio, frames, seconds = Controls.of(repaint_mode=mode, repaint_strength=strength).repaint()
    assert (round(ratio, 12), frames, round(seconds, 12)) == expected


def test_repaint_soft_mask_ramps_outside_the_window():
    mask = np.zeros(20, bool)
    mask[8:12] = True
    r = flow.Repaint(mask=mask, source=np.zeros((20, 4), np.float32), noise=np.zeros((20, 4), np.float32),
                     cutoff=0, crossfade=3)
    m = r.soft_mask()
    np.testing.assert_allclose(m[5:8], [0.25, 0.5, 0.75])  # linspace(0, 1, 5) without its ends
    np.testing.assert_allclose(m[12:15], [0.75, 0.5, 0.25])
    assert np.all(m[8:12] == 1) and np.all(m[:5] == 0) and np.all(m[15:] == 0)


def test_repaint_injection_matches_upstream_and_conservative_keeps_the_source():
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    vc, vu, x0 = _pair(rng, T=16)
    source = rng.standard_normal((16, 64), dtype=np.float32)
    mask = np.zeros(16, bool)
    mask[5:11] = True
    for cutoff in (7, 3):
        rp = flow.Repaint(mask=mask, source=source, noise=x0, cutoff=cutoff, crossfade=0)
        _, trace = _run(vc, vu, x0, repaint=rp)
        ref = _ref_loop(vc, vu, x0, flow.timestep_schedule(7, 3.0),
                        repaint={"mask": mask, "source": source, "noise": x0, "cutoff": cutoff})
        _compare(trace, ref, seed)
    # Conservative: injection through the last step, which lands at t = 0 on the source itself.
    out, _ = _run(vc, vu, x0, repaint=flow.Repaint(mask=mask, source=source, noise=x0, cutoff=7, crossfade=0))
    np.testing.assert_array_equal(out[~mask], source[~mask])


def test_waveform_splice_keeps_the_source_outside_the_window():
    rate = 100
    pred, src = np.ones((2, 1000), np.float32), np.zeros((2, 900), np.float32)
    out = splice_source(pred, src, Window(3.0, 6.0), rate, 0.05)
    assert np.all(out[:, 300:600] == 1) and np.all(out[:, :295] == 0) and np.all(out[:, 605:900] == 0)
    np.testing.assert_allclose(out[0, 295:300], np.arange(1, 6) / 6)
    assert np.all(out[:, 900:] == 1)  # past the source: the generated audio


# -- retake ---------------------------------------------------------------------------------------
def test_retake_mixes_noise_by_cos_and_sin_of_the_variance():
    seed = fresh_seed()
    n = flow.initial_noise(10, seed)
    other = lambda s: flow.initial_noise(10, s)  # noqa: E731
    assert Controls.of().retake_noise(n, other) is n
    np.testing.assert_allclose(Controls.of(retake_seed=seed + 1, retake_variance=1.0).retake_noise(n, other),
                               other(seed + 1), atol=1e-6)
    v = 0.3
    mixed = Controls.of(retake_seed=9, retake_variance=v).retake_noise(n, other)
    np.testing.assert_allclose(mixed, math.cos(v * math.pi / 2) * n + math.sin(v * math.pi / 2) * other(9), atol=1e-6)


@pytest.mark.parametrize("options,field", [
    ({"repaint_mode": "wild"}, "repaint_mode"), ({"repaint_strength": 1.5}, "repaint_strength"),
    ({"retake_variance": -0.1}, "retake_variance"), ({"retake_seed": -3}, "retake_seed"),
    ({"retake_variance": 0.5}, "retake_seed"), ({"use_adg": "yes"}, "use_adg"), ({"solver": "rk45"}, "solver"),
    ({"dcw_mode": "band"}, "dcw_mode"), ({"cfg_interval": (0.5, 1.5)}, "cfg_interval"), ({"sovler": "sde"}, "sovler"),
])
def test_out_of_range_controls_raise_input_error_naming_the_field(options, field):
    with pytest.raises(InputError, match=field):
        Controls.of(**options)
