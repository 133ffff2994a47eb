"""Weights served from the model file's mapping (core/weights.cpp): the same results as weights
read into memory, and a file truncated or rewritten after it was opened gives a ModelFileError or
the new file's results, never a SIGBUS."""

from __future__ import annotations

import os

import numpy as np
import pytest
from _vae_gguf import TINY, make_reference, write_gguf
from conftest import fresh_seed

import acestep_ggml as A

SEED = fresh_seed()


@pytest.fixture()
def vae_path(tmp_path):
    path = tmp_path / "vae.gguf"
    write_gguf(make_reference(TINY, SEED), path, "f32")
    return path


def _latents(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 6, TINY["decoder_input_channels"])).astype(np.float32)


def _audio(seed: int) -> np.ndarray:
    return (0.5 * np.random.default_rng(seed).standard_normal((1, 2, 6 * 8 * 2))).astype(np.float32)


# The mapped tensors are the file's bytes, as the copied ones are: results are bit-identical.
def test_mapped_and_copied_weights_agree(vae_path, monkeypatch):
    z = _latents(SEED)
    outs = []
    for mmap in ("1", "0"):
        monkeypatch.setenv("ACESTEP_GGML_MMAP", mmap)
        outs.append(A.VAE(vae_path).decode(z, chunk=0))
    assert np.array_equal(outs[0], outs[1]), f"seed {SEED}"


def test_truncated_after_open(vae_path):
    f = A.GGUFFile(str(vae_path))
    os.truncate(vae_path, os.path.getsize(vae_path) - 64)
    with pytest.raises(A.ModelFileError, match="truncated after it was opened") as e:
        A.VAE(f)
    assert str(vae_path) in str(e.value)


# The encoder's weights load on the first encode, from the file already mapped for the decoder.
def test_truncated_between_loads(vae_path):
    vae = A.VAE(vae_path)
    os.truncate(vae_path, os.path.getsize(vae_path) // 2)
    with pytest.raises(A.ModelFileError, match="truncated after it was opened"):
        vae.encode(_audio(SEED), chunk=0)


# Rewritten in place with other weights of the same layout before the load: the load sees the
# new bytes (the mapping is made at load), through the mapping and the reads alike.
def test_rewritten_in_place_after_open(vae_path, tmp_path):
    other = tmp_path / "other.gguf"
    write_gguf(make_reference(TINY, SEED + 1), other, "f32")
    assert os.path.getsize(other) == os.path.getsize(vae_path)
    f = A.GGUFFile(str(vae_path))
    with open(vae_path, "r+b") as out:
        out.write(other.read_bytes())
    z = _latents(SEED + 2)
    got, want = A.VAE(f).decode(z, chunk=0), A.VAE(other).decode(z, chunk=0)
    assert np.array_equal(got, want), f"seed {SEED}"
