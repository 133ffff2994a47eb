"""The flow-matching sampler (acestep_ggml.flow) against diffusers' own schedule, scheduler and APG functions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import fresh_seed
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer as RefMomentumBuffer
from diffusers.guiders.adaptive_projected_guidance import normalized_guidance
from diffusers.pipelines.ace_step.pipeline_ace_step import AceStepPipeline

from acestep_ggml import InputError, flow


def _ref_schedule(num_steps, shift, timesteps=None):
    # _get_timestep_schedule reads nothing from the pipeline instance.
    return AceStepPipeline._get_timestep_schedule(None, num_steps, shift, dtype=torch.float32,
                                                  timesteps=timesteps).numpy()


def _ref_scheduler(ts):
    # The pipeline registers the scheduler like this so it consumes sigmas in [0, 1] as given.
    s = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0)
    s.set_timesteps(sigmas=[float(t) for t in ts])
    return s


@pytest.mark.parametrize("steps,shift", [(8, 3.0), (8, 1.0), (8, 2.0), (50, 3.0), (27, 1.7)])
def test_schedule_matches_reference(steps, shift):
    ours = flow.timestep_schedule(steps, shift)
    ref = _ref_schedule(steps, shift)
    # The reference evaluates the formula in float32 (torch.linspace), we in float64: the
    # results may differ by a float32 rounding step.
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-7)


def test_turbo_schedule_values():
    # The 8-step, shift-3 table quoted in SPEC.md.
    expected = [1.0, 0.9545, 0.9, 0.8333, 0.75, 0.6429, 0.5, 0.3]
    np.testing.assert_allclose(flow.timestep_schedule(8, 3.0), expected, atol=5e-5)


def test_custom_timesteps_are_used_as_given():
    ts = [0.97, 0.8, 0.41, 0.1]
    np.testing.assert_array_equal(flow.timestep_schedule(timesteps=ts), _ref_schedule(8, 3.0, ts))


@pytest.mark.parametrize("bad", [[], [0.5, 0.7], [1.2, 0.5], [0.5, 0.0], [float("nan")]])
def test_bad_timesteps_raise(bad):
    with pytest.raises(InputError):
        flow.timestep_schedule(timesteps=bad)


def test_noise_is_numpy_pcg64_and_reproducible():
    a = flow.initial_noise(37, seed=1234)
    b = np.random.default_rng(1234).standard_normal((37, 64), dtype=np.float32)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == (37, 64)
    assert not np.array_equal(a, flow.initial_noise(37, seed=1235))


def test_euler_loop_matches_reference_scheduler():
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal((2, 41, 64), dtype=np.float32)
    w = rng.standard_normal((64, 64), dtype=np.float32) / 8
    velocity = lambda x, t, guided: np.tanh(x @ w) * (1 + t)  # noqa: E731

    ours = flow.sample(velocity, x0, num_steps=8, shift=3.0)

    sched = _ref_scheduler(_ref_schedule(8, 3.0))
    x = torch.from_numpy(x0)
    for t in sched.timesteps:
        v = torch.from_numpy(velocity(x.numpy(), float(t), False))
        x = sched.step(v, t, x, return_dict=False)[0]
    # Same float32 arithmetic step for step; only summation order may differ.
    np.testing.assert_allclose(ours, x.numpy(), rtol=1e-5, atol=1e-5, err_msg=f"seed={seed}")


def test_apg_matches_reference_over_steps():
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    ours_buf, ref_buf = flow.MomentumBuffer(), RefMomentumBuffer(momentum=-0.75)
    for step in range(4):
        # Scale 3 makes the norm clip (threshold 2.5) bite on some steps and not others.
        cond = rng.standard_normal((1, 33, 64), dtype=np.float32) * (0.05 if step % 2 else 3)
        uncond = cond + rng.standard_normal((1, 33, 64), dtype=np.float32) * (0.02 if step % 2 else 1)
        ours = flow.apg(cond, uncond, 6.0, ours_buf)
        ref = normalized_guidance(torch.from_numpy(cond), torch.from_numpy(uncond), guidance_scale=6.0,
                                  momentum_buffer=ref_buf, eta=0.0, norm_threshold=2.5,
                                  use_original_formulation=True, norm_dim=(1,)).numpy()
        # float32 inputs, float64 projection on both sides: agreement to float32 rounding.
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5, err_msg=f"seed={seed} step={step}")


def test_guided_loop_applies_apg_inside_cfg_interval():
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal((1, 20, 64), dtype=np.float32)
    wc, wu = (rng.standard_normal((64, 64), dtype=np.float32) / 8 for _ in range(2))
    calls = []

    def velocity(x, t, guided):
        calls.append(guided)
        if guided:
            return np.tanh(x @ wc), np.tanh(x @ wu)
        return np.tanh(x @ wc)

    interval = (0.0, 0.5)
    ours = flow.sample(velocity, x0, num_steps=10, shift=3.0, guidance_scale=7.0, cfg_interval=interval)

    ts = _ref_schedule(10, 3.0)
    sched = _ref_scheduler(ts)
    buf = RefMomentumBuffer(momentum=-0.75)
    x = torch.from_numpy(x0)
    for t in sched.timesteps:
        xn = x.numpy()
        # Upstream's rule (base generate_audio): guidance where the timestep t itself lies in
        # the interval; diffusers tests 1 - t instead, which agrees only at the default (0, 1).
        if interval[0] <= float(t) <= interval[1]:
            v = normalized_guidance(torch.from_numpy(np.tanh(xn @ wc)), torch.from_numpy(np.tanh(xn @ wu)),
                                    guidance_scale=6.0, momentum_buffer=buf, eta=0.0, norm_threshold=2.5,
                                    use_original_formulation=True, norm_dim=(1,))
        else:
            v = torch.from_numpy(np.tanh(xn @ wc))
        x = sched.step(v, t, x, return_dict=False)[0]
    assert calls == [0.0 <= t <= 0.5 for t in ts]
    np.testing.assert_allclose(ours, x.numpy(), rtol=1e-4, atol=1e-4, err_msg=f"seed={seed}")


def test_bad_sampler_input_raises():
    with pytest.raises(InputError):
        flow.sample(lambda x, t, g: x, np.full((4, 64), np.nan, np.float32))
    with pytest.raises(InputError):
        flow.sample(lambda x, t, g: x, np.zeros((4, 64), np.float32), guidance_scale=0.5)
    with pytest.raises(InputError):
        flow.timestep_schedule(0, 3.0)
    with pytest.raises(InputError):
        flow.initial_noise(0, seed=1)
