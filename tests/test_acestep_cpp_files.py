"""The published model files, written by acestep.cpp's converter (tests/_acestep_cpp.py writes
them the same way), give the same metadata, codes and audio as our own conversion of the same
BF16 checkpoint, for every model kind and for `lm`, `synth` and `generate`."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from _acestep_cpp import convert_like_acestep_cpp, to_bf16_checkpoint
from conftest import fresh_seed

from acestep_ggml import hub
from acestep_ggml.convert import convert
from acestep_ggml.lm import LM
from acestep_ggml.pipeline import Pipeline, Synthesizer
from acestep_ggml.request import Request


@pytest.fixture(scope="module")
def both(synth_models, tmp_path_factory):
    """(our GGUF folder, acestep.cpp-style GGUF folder) of one BF16 checkpoint."""
    _, root, _, seed = synth_models
    base = tmp_path_factory.mktemp("acestep_cpp")
    ckpt = base / "checkpoints"
    shutil.copytree(root, ckpt)
    to_bf16_checkpoint(ckpt)
    ours, theirs = base / "ours", base / "theirs"
    convert(ckpt, ours, dtype="bf16", quiet=True)
    convert_like_acestep_cpp(ckpt, theirs)
    return ours, theirs


def test_every_kind_is_found_and_keys_left_out_when_false(both):
    from acestep_ggml._core import GGUFFile

    _, theirs = both
    found = hub.find_models(theirs)
    assert sorted(found.files) == ["acestep-dit", "acestep-lm", "acestep-text-enc", "acestep-vae"]
    for path in theirs.iterdir():
        keys = GGUFFile(str(path)).metadata()
        assert "tokenizer.huggingface.json" not in keys and "tokenizer.ggml.token_type" not in keys
        if "tokenizer.ggml.tokens" in keys:
            assert GGUFFile(str(path)).get("tokenizer.ggml.tokens")[-1] != "<|endoftext|>"


def test_lm_gives_the_same_metadata_and_codes(both):
    ours, theirs = both
    req = Request(caption="lo-fi: rain on the window", lyrics="[Verse]\n夜空中最亮的星", duration=10)
    seed = fresh_seed()
    kw = dict(seed=seed, temperature=1.0, top_p=None)
    a = LM.from_models(ours, n_threads=1).generate(req, **kw)
    b = LM.from_models(theirs, n_threads=1).generate(req, **kw)
    assert a == b, f"seed {seed}"
    assert len(a.codes) == 50


def test_synth_and_generate_give_the_same_audio(both):
    ours, theirs = both
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    req = Request(caption="calm piano", lyrics="la la", codes=rng.integers(0, 64000, 40).tolist(), bpm=90,
                  keyscale="C major", timesignature=4, language="en")
    a = Synthesizer(ours, n_threads=1)(req, seed=seed)
    b = Synthesizer(theirs, n_threads=1)(req, seed=seed)
    assert a.audio.shape == b.audio.shape
    # Identical weights and types: the same numbers, up to accumulation order at most.
    np.testing.assert_allclose(b.audio, a.audio, rtol=0, atol=1e-5, err_msg=f"seed {seed}")
    kw = dict(duration=10, seed=seed, bpm=100, keyscale="A minor", timesignature=4)
    a = Pipeline(ours, n_threads=1).generate("calm piano", "la la", **kw)
    b = Pipeline(theirs, n_threads=1).generate("calm piano", "la la", **kw)
    assert a.request == b.request, f"seed {seed}"
    np.testing.assert_allclose(b.audio, a.audio, rtol=0, atol=1e-5, err_msg=f"seed {seed}")


def test_turbo_read_from_the_key_warns_above_eight_steps(both):
    _, theirs = both
    synth = Synthesizer(theirs, n_threads=1)
    assert synth.is_turbo
    req = Request(caption="calm piano", duration=1)
    with pytest.warns(UserWarning, match="distilled for 8 steps"):
        synth(req, seed=1, steps=9)


def test_xl_files_load_and_give_the_same_audio(synth_xl_models, tmp_path):
    """An XL DiT as acestep.cpp's converter writes it (its acestep.encoder_* keys, original names,
    encoder.timbre_encoder.special_token) loads as XL and renders as our own conversion does."""
    from acestep_ggml._core import GGUFFile

    _, root, _, _ = synth_xl_models
    ckpt = tmp_path / "checkpoints"
    shutil.copytree(root, ckpt)
    to_bf16_checkpoint(ckpt)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    convert(ckpt, ours, dtype="bf16", quiet=True)
    convert_like_acestep_cpp(ckpt, theirs)
    (dit,) = theirs.glob("acestep-v15-xl-turbo-BF16.gguf")
    h = GGUFFile(str(dit)).hparams
    assert h.timbre_cls and h.hidden_size > h.encoder_hidden_size
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    req = Request(caption="calm piano", lyrics="la la", codes=rng.integers(0, 64000, 20).tolist(), bpm=90,
                  keyscale="C major", timesignature=4, language="en")
    a = Synthesizer(ours, n_threads=1)(req, seed=seed)
    b = Synthesizer(theirs, n_threads=1)(req, seed=seed)
    # Identical weights and types: the same numbers, up to accumulation order at most.
    np.testing.assert_allclose(b.audio, a.audio, rtol=0, atol=1e-5, err_msg=f"seed {seed}")
