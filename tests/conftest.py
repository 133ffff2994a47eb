"""Session-wide tiny reference models and their checkpoints in both layouts, built once
per test session under a temporary directory."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import fixtures  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--device", default=os.environ.get("ACESTEP_GGML_TEST_DEVICE", "cpu"),
                     help="ggml device of the parity tests (cpu, vulkan, cuda, ...; env ACESTEP_GGML_TEST_DEVICE)")


def pytest_configure(config):
    config.addinivalue_line("markers", "device: a parity test that runs its models on --device")


def pytest_collection_modifyitems(config, items):
    # `pytest -m device --device vulkan` selects every test that runs on the chosen device.
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


@pytest.fixture(scope="session")
def device(request) -> str:
    """The device the parity tests run their models on (--device, default cpu)."""
    return request.config.getoption("--device")


# Off the CPU an F32 model is not computed wholly in F32: ggml's Vulkan matmul and attention
# kernels round their operands to F16 (11-bit mantissa: 4.9e-4 relative per value).  Measured on
# lavapipe: the tiny F32 text encoder at 1.3e-3 .. 1.8e-3 relative L2 (cosine 0.999998) where
# the CPU stays near 1e-5, and batch 1 against batch 2 of the DiT at 4.8e-4 (other kernels).
# So F32 relative-error bars widen to DEVICE_F32_REL off the CPU; cosine bars stay as they are.
DEVICE_F32_REL = 5e-3
# A BF16 file's model is held to PyTorch's own bf16 error on the same weights.  On the CPU ours
# computes in F16 with F32 accumulation and stays under that bar; off the CPU the kernels also
# round their F32 operands to F16 (above), measured on lavapipe at 1.12x PyTorch's bf16 error
# for the real-shape VAE encoder (6.66e-2 against 5.96e-2).  Off the CPU the bar is 1.25x.
DEVICE_BF16_SLACK = 1.25


def fresh_seed(what: str = "random inputs") -> int:
    """A fresh seed for `what`, printed (pytest shows it beside a failure);
    ACESTEP_TEST_SEED=N replays a run with N everywhere."""
    env = os.environ.get("ACESTEP_TEST_SEED")
    seed = int(env) if env else int.from_bytes(os.urandom(4), "little") % 2**31
    print(f"\n{what} seed: {seed} (replay: ACESTEP_TEST_SEED={seed})")
    return seed


@pytest.fixture(scope="session")
def f32_rel(device):
    """The relative-L2 bar of an F32 comparison on --device, from the test's bar on the CPU."""
    return lambda cpu_bar: cpu_bar if device == "cpu" else max(cpu_bar, DEVICE_F32_REL)


@pytest.fixture(scope="session")
def bf16_bar(device):
    """The relative-L2 bar of a BF16 comparison on --device, from PyTorch's own bf16 error."""
    return lambda torch_err: torch_err if device == "cpu" else DEVICE_BF16_SLACK * torch_err


@pytest.fixture
def int8(monkeypatch, device):
    """Turns on ACESTEP_GGML_INT8 (int8 matmuls, nn/int8_matmul.h) for the test; True where the models
    can run so (the CPU, with AVX-512 VNNI), False where loading one must raise DeviceError instead:
    a test then checks that, so it runs on every host and device and passes or fails, never skips."""
    import acestep_ggml

    monkeypatch.setenv("ACESTEP_GGML_INT8", "1")
    return device == "cpu" and acestep_ggml._core.int8_supported()


# int8 matmuls against the float32 reference: weights rounded per output channel and activations
# per row, each to 1/127 of the row's largest magnitude.  For Gaussian rows that is about 1 %
# relative per product; it compounds through the layers of a stack.  Measured on the tiny models
# (4 to 17 seeds each, relative L2): DiT <= 0.7 %, condition encoder <= 1.9 %, detokenizer <= 2.4 %;
# the Qwen3 stacks of width 64, text encoder <= 4.6 % (cosine >= 0.9989) and LM logits <= 6.3 %
# (cosine >= 0.9980), have bars of their own.  Each bar is about 1.6x the worst seen.
COS_INT8, REL_INT8 = 0.998, 4e-2
COS_INT8_QWEN3, REL_INT8_QWEN3 = 0.996, 0.10


@pytest.fixture
def strict_device(monkeypatch):
    """ACESTEP_GGML_STRICT_DEVICE=1 for one test: any graph node off the model's device is an error."""
    monkeypatch.setenv("ACESTEP_GGML_STRICT_DEVICE", "1")


@pytest.fixture(scope="session")
def tiny_models() -> fixtures.TinyModels:
    """torch reference modules (eval, float32) with fresh random weights each session."""
    seed = fresh_seed("tiny model")
    return fixtures.build_models(seed)


@pytest.fixture(scope="session")
def lm_tokenizer_dir(tmp_path_factory) -> Path:
    """Qwen3 tokenizer + 64000 audio-code tokens (vocabulary 215669)."""
    path = tmp_path_factory.mktemp("lm_tokenizer")
    fixtures.write_lm_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def tiny_original_dir(tiny_models, lm_tokenizer_dir, tmp_path_factory) -> Path:
    """The original ACE-Step checkpoint layout of tiny_models."""
    return fixtures.save_original(tiny_models, tmp_path_factory.mktemp("original") / "checkpoints", lm_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_diffusers_dir(tiny_models, tmp_path_factory) -> Path:
    """A diffusers AceStepPipeline directory of tiny_models."""
    return fixtures.save_diffusers(tiny_models, tmp_path_factory.mktemp("diffusers") / "pipeline")


# A tiny VAE whose sample rate makes 25 latents per second (hop 8 at "200 Hz"), so the
# pipeline's duration arithmetic is the real one while the audio stays short.
SYNTH_VAE = dict(encoder_hidden_size=128, downsampling_ratios=[2, 4], channel_multiples=[1, 2], decoder_channels=8,
                 decoder_input_channels=64, audio_channels=2, sampling_rate=200)


@pytest.fixture(scope="session")
def synth_models(lm_tokenizer_dir, tmp_path_factory):
    """Tiny models for whole pipelines: (torch models, original checkpoint dir, {dtype: GGUF dir}, seed)."""
    return _synth_models(lm_tokenizer_dir, tmp_path_factory, "synth")


@pytest.fixture(scope="session")
def synth_xl_models(lm_tokenizer_dir, tmp_path_factory):
    """As synth_models, XL-shaped: the DiT wider than the condition encoder (fixtures.TINY_XL_DIT)."""
    return _synth_models(lm_tokenizer_dir, tmp_path_factory, "synth-xl", fixtures.TINY_XL_DIT)


@pytest.fixture(params=["2b", "xl"])
def pipeline_models(request):
    """synth_models, then synth_xl_models: for the parity tests that cover both DiT shapes."""
    return request.getfixturevalue("synth_models" if request.param == "2b" else "synth_xl_models")


def _synth_models(lm_tokenizer_dir, tmp_path_factory, name, dit=None):
    from _vae_gguf import make_reference as make_vae_reference

    from acestep_ggml.convert import convert

    seed = fresh_seed(f"{name} model")
    models = fixtures.build_models(seed, dit=dit, vae=SYNTH_VAE)
    # The generic random init makes the VAE chaotic: bf16 rounding of its weights alone moves
    # PyTorch's own output to cosine 0.4-0.99.  A variance-preserving init behaves like a
    # trained VAE (bf16 weights: cosine 0.99995), so bf16 bars test our numerics.
    models.vae.load_state_dict(make_vae_reference(SYNTH_VAE, seed).state_dict())
    root = fixtures.save_original(models, tmp_path_factory.mktemp(name) / "checkpoints", lm_tokenizer_dir)
    out = {}
    for dtype in ("f32", "bf16"):
        out[dtype] = tmp_path_factory.mktemp(f"{name}-{dtype}")
        convert(root, out[dtype], dtype=dtype, quiet=True)
    return models, root, out, seed
