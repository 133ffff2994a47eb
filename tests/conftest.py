"""Session-wide tiny reference models and their checkpoints in both layouts, built once
per test session under a temporary directory."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import fixtures  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models() -> fixtures.TinyModels:
    """torch reference modules (eval, float32) with fresh random weights each session."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"\ntiny model seed: {seed}")
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
