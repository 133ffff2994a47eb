"""Sampler defaults per checkpoint: one decision (acestep_ggml.checkpoints.sampler_defaults),
from the file's is_turbo and the name's tokens as upstream's _has_token splits them."""
from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import types
import warnings
from pathlib import Path

import numpy as np
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


def test_a_shift_the_files_config_names_is_the_default():
    d = sampler_defaults("acestep-v15-turbo-continuous-BF16.gguf", True, config_shift=4.5)
    assert (d.variant, d.steps, d.shift, d.shift_range) == ("turbo-continuous", 8, 4.5, (1.0, 5.0))
    assert sampler_defaults("acestep-v15-sft-BF16.gguf", False, config_shift=1.0).shift == 1.0


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


def _original_source(relpath: str) -> Path:
    """A file of the original package (ace-step15-fork), found without importing it; in CI its
    absence fails the test."""
    spec = importlib.util.find_spec("acestep")
    path = Path(spec.origin).parent / relpath if spec and spec.origin else None
    if path is None or not path.exists():
        if os.environ.get("CI"):
            pytest.fail("CI runs this test: pip install --no-deps ace-step15-fork", pytrace=False)
        pytest.skip("the original ACE-Step package is not installed: pip install --no-deps ace-step15-fork")
    return path


def _original_function(relpath: str, name: str, **namespace):
    """Function ``name`` of the original package's ``relpath``, run from its own source.  Its
    module imports gradio (not a dependency here), so only the function is compiled, with the
    names it uses given in ``namespace``."""
    path = _original_source(relpath)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    scope = dict(namespace)
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(path), "exec"), scope)
    return scope[name]


def test_turbo_and_base_defaults_are_the_original_packages():
    """The original package's UI sets steps and shift by family (gradio_ui/events/generation_handlers.py
    get_model_type_ui_settings: turbo 8 / 3.0, base 32 / 3.0) and its API's guidance default
    (inference.py GenerationParams.guidance_scale, 7.0) for the guided models.  SFT's 50 steps come from
    newer upstream (acestep/ui/gradio/events/generation/model_config.py get_ui_control_config @ 34c7c4e:
    ``steps = 50 if is_sft else 32``, shift 3.0 for every family), which the package predates."""
    gr = types.SimpleNamespace(update=lambda **kw: kw)
    settings = _original_function("gradio_ui/events/generation_handlers.py", "get_model_type_ui_settings",
                                  gr=gr, TASK_TYPES_TURBO=[], TASK_TYPES_BASE=[])
    tree = ast.parse(_original_source("inference.py").read_text(encoding="utf-8"))
    params = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "GenerationParams")
    guidance = next(ast.literal_eval(s.value) for s in params.body
                    if isinstance(s, ast.AnnAssign) and s.target.id == "guidance_scale")
    for name, is_turbo in (("acestep-v15-turbo-BF16.gguf", True), ("acestep-v15-base-BF16.gguf", False),
                           ("acestep-v15-xl-turbo-BF16.gguf", True), ("acestep-v15-xl-base-BF16.gguf", False)):
        steps, _, _, shift, *_ = settings(is_turbo)
        d = sampler_defaults(name, is_turbo)
        assert (d.steps, d.shift) == (steps["value"], shift["value"]), name
        assert d.guidance == (1.0 if is_turbo else guidance), name  # turbo: CFG-distilled, guidance forced to 1
    assert sampler_defaults("acestep-v15-xl-sft-BF16.gguf", False).steps == 50


def test_the_turbo_default_schedule_is_the_original_shift3_table():
    """The turbo default (8 steps, shift 3) against the table the original package trains the
    turbo DiT on (training/trainer.py TURBO_SHIFT3_TIMESTEPS, "same as inference"); upstream's
    turbo generate_audio holds the same 8-step table (acestep/models/turbo/modeling_acestep_v15_turbo.py
    @ 14bd1db SHIFT_TIMESTEPS[3.0]).  Continuous turbo takes the same formula at any shift in 1..5."""
    from acestep_ggml.flow import timestep_schedule

    tree = ast.parse(_original_source("training/trainer.py").read_text(encoding="utf-8"))
    table = next(ast.literal_eval(n.value) for n in tree.body
                 if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "TURBO_SHIFT3_TIMESTEPS")
    d = sampler_defaults("acestep-v15-turbo-BF16.gguf", True)
    # Our schedule is float32 (as diffusers computes it): the table to float32 rounding.
    np.testing.assert_allclose(timestep_schedule(d.steps, d.shift), table, rtol=0, atol=1e-7)
    lo, hi = sampler_defaults("acestep-v15-turbo-continuous-BF16.gguf", True).shift_range
    t = np.linspace(1, 0, 9)[:-1]
    np.testing.assert_allclose(timestep_schedule(8, hi), hi * t / (1 + (hi - 1) * t), rtol=0, atol=1e-7)
