"""Devices: one backend per device per process, the device option of every entry point, the
VAE's stock-op path, and the strict-device switch."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from _vae_gguf import TINY, f32_file
from conftest import fresh_seed

import acestep_ggml as A
from acestep_ggml import _core
from acestep_ggml.cli import build_parser

SEED = fresh_seed()


def test_one_backend_per_device_with_changeable_threads():
    held = _core.Backend("cpu", 2)
    again = _core.Backend("cpu", 3)
    # the same backend: the second request re-threads the first holder's too
    assert held.name == again.name == "CPU" and held.n_threads == again.n_threads == 3
    assert _core.Backend("cpu").n_threads == 3  # no thread count: left as it is


def test_auto_is_the_first_gpu_else_the_cpu():
    gpus = [d["name"] for d in A.backends() if d["type"] in ("gpu", "igpu")]
    assert _core.Backend("auto").name == (gpus[0] if gpus else "CPU")


def test_unknown_device_names_the_devices_there_are():
    with pytest.raises(A.InputError, match="no ggml device matches 'nosuch' .*CPU"):
        A.VAE("unused.gguf", device="nosuch")


def test_info_lists_the_device(device):
    out = subprocess.run([sys.executable, "-m", "acestep_ggml", "info"], capture_output=True, text=True, check=True)
    assert f"  {_core.Backend(device).name}: " in out.stdout, out.stdout


@pytest.mark.parametrize("command", ["synth", "lm", "generate"])
def test_every_model_command_takes_a_device(command):
    required = {"synth": ["--input-dir", "x", "--models", "m", "-o", "o.wav"],
                "lm": ["--models", "m", "--caption", "c", "--output-dir", "x"],
                "generate": ["--caption", "c", "-o", "o.wav"]}[command]
    assert build_parser().parse_args([command, *required, "--device", "vulkan:1"]).device == "vulkan:1"
    assert build_parser().parse_args([command, *required]).device == "cpu"


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    return f32_file(tmp_path_factory, TINY, SEED, "vae")


@pytest.mark.parametrize("ops", ["fused", "stock"])
def test_vae_of_stock_ops_matches_fused_kernels_and_reference(tiny_vae, ops, monkeypatch):
    """The GPU path (stock ops) checked on the CPU in every run: both paths against diffusers."""
    ref, path = tiny_vae
    monkeypatch.setenv("ACESTEP_GGML_VAE_OPS", ops)
    vae = A.VAE(path, n_threads=2)
    z = np.random.default_rng(SEED).standard_normal((1, 9, ref.config.decoder_input_channels)).astype(np.float32)
    ours = vae.decode(z, chunk=4, overlap=12)  # tiled, as the pipeline runs it
    with torch.no_grad():
        want = ref.decode(torch.from_numpy(z).transpose(1, 2)).sample.numpy()
    a, b = ours.ravel().astype(np.float64), want.ravel().astype(np.float64)
    cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    # F32 weights and activations: only summation order differs (as in test_vae.py)
    assert cos >= 0.9999, f"{ops} seed {SEED}: cosine {cos:.6f}"


def test_strict_device_names_an_op_off_the_device(tiny_vae, device, strict_device, monkeypatch):
    """The VAE's fused kernels are ggml custom ops, which only the CPU backend runs.  Forced onto
    another device under the strict switch, the first graph fails naming the op; on the CPU they
    are the device's own ops and run."""
    ref, path = tiny_vae
    monkeypatch.setenv("ACESTEP_GGML_VAE_OPS", "fused")
    vae = A.VAE(path, device=device, n_threads=2)
    z = np.zeros((3, ref.config.decoder_input_channels), np.float32)
    if _core.Backend(device).name == "CPU":
        assert vae.decode(z, chunk=0).shape == (ref.config.audio_channels, 3 * ref.hop_length)
    else:
        with pytest.raises(A.DeviceError, match=r"ACESTEP_GGML_STRICT_DEVICE: op CUSTOM .* runs on CPU"):
            vae.decode(z, chunk=0)


def test_device_tiles_are_larger_than_cpu_tiles(tiny_vae, device):
    _, path = tiny_vae
    vae = A.VAE(path, device=device, n_threads=2)
    if _core.Backend(device).name == "CPU":
        assert vae.default_chunk == A.models.DEFAULT_CHUNK
    else:
        assert A.models.DEFAULT_CHUNK < vae.default_chunk <= 4096
