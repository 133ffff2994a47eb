"""Sampler defaults per checkpoint: one decision (acestep_ggml.checkpoints.sampler_defaults),
from the file's is_turbo and the name's tokens as upstream's _has_token splits them."""
from __future__ import annotations

import shutil
import warnings

import pytest

from acestep_ggml import Request, Synthesizer
from acestep_ggml.checkpoints import sampler_defaults


@pytest.mark.parametrize("name, is_turbo, want", [
    ("acestep-v15-turbo-BF16.gguf", True, ("turbo", 8, 3.0, 1.0)),
    ("acestep-v15-xl-turbo-Q8_0.gguf", True, ("turbo", 8, 3.0, 1.0)),
    ("acestep-v15-turbo-shift1-BF16.gguf", True, ("turbo-shift1", 8, 1.0, 1.0)),
    ("acestep-v15-turbo-shift3-Q4_K_M.gguf", True, ("turbo-shift3", 8, 3.0, 1.0)),
    ("acestep-v15-turbo-continuous-BF16.gguf", True, ("turbo-continuous", 8, 3.0, 1.0)),
    ("acestep-v15-sft-BF16.gguf", False, ("sft", 50, 3.0, 7.0)),
    ("acestep-v15-xl-sft-BF16.gguf", False, ("sft", 50, 3.0, 7.0)),
    ("acestep-v15-base-BF16.gguf", False, ("base", 32, 3.0, 7.0)),
    # A merge follows the config it was converted with; "sftturbo50" is neither token.
    ("acestep-v15-sftturbo50-BF16.gguf", True, ("turbo", 8, 3.0, 1.0)),
    ("acestep-v15-sftturbo50-BF16.gguf", False, ("base", 32, 3.0, 7.0)),
    ("/models/v15_turbo_shift1/dit.gguf", True, ("turbo-shift1", 8, 1.0, 1.0)),
])
def test_sampler_defaults_per_checkpoint(name, is_turbo, want):
    d = sampler_defaults(name, is_turbo)
    assert (d.variant, d.steps, d.shift, d.guidance) == want


def test_continuous_turbo_takes_any_shift_from_1_to_5():
    d = sampler_defaults("acestep-v15-turbo-continuous-BF16.gguf", True)
    assert d.shift_range == (1.0, 5.0)
    assert sampler_defaults("acestep-v15-turbo-shift1.gguf", True).shift_range == (1.0, 1.0)
    assert sampler_defaults("acestep-v15-sft.gguf", False).shift_range is None


def test_synthesizer_takes_the_files_defaults(synth_models, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(synth_models[2]["f32"], folder)
    dit = folder / "acestep-v15-turbo-F32.gguf"
    dit.rename(folder / "acestep-v15-turbo-shift1-F32.gguf")
    synth = Synthesizer(folder, n_threads=1)
    assert synth.is_turbo and synth.defaults.variant == "turbo-shift1" and synth.defaults.shift == 1.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        synth(Request(caption="x", duration=1), steps=1, seed=0, shift=3.0)
    assert any("distilled for shift 1" in str(w.message) for w in caught)
