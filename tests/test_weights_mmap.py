"""Weights served from the model file's mapping (core/weights.cpp): the same results as weights
read into memory, a freed model's pages leave the resident set while the file stays open, and a
file truncated or rewritten after it was opened gives a ModelFileError or the new file's results,
never a SIGBUS."""

from __future__ import annotations

import gc
import os
import re

import numpy as np
import pytest
from _dit_gguf import tiny_dit, write_dit_gguf
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


def _resident(path) -> int:
    """Bytes of `path`'s mappings resident in this process (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total


# Two DiTs on one open file hold each mapped tensor; the pages leave the process with the last of
# them (before this, a freed condition encoder's weights stayed resident through the DiT's stage:
# a 10 s song peaked at 5.75 GiB instead of 3.2).  The survivor's results do not change.
def test_freed_weights_leave_the_resident_set(tmp_path):
    # Wide enough that most of the file is matrices spanning many whole pages (4 KiB).
    path = tmp_path / "dit-f32.gguf"
    write_dit_gguf(tiny_dit(SEED, hidden_size=256, intermediate_size=768, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=64), str(path))
    rng = np.random.default_rng(SEED)
    t = 20
    x, src = (rng.standard_normal((1, t, 64), dtype=np.float32) for _ in range(2))
    enc = rng.standard_normal((1, 6, 256), dtype=np.float32)
    tt = np.array([0.5], np.float32)
    f = A.GGUFFile(str(path))
    a, b = A.DiT(f, n_threads=1), A.DiT(f, n_threads=1)
    want = a.forward(x, tt, enc, src)
    np.testing.assert_array_equal(b.forward(x, tt, enc, src), want)
    both = _resident(path)
    assert both > 0.8 * os.path.getsize(path), (both, os.path.getsize(path))  # served from the mapping
    del a
    gc.collect()
    assert _resident(path) >= both - 2 * 4096, "pages left while another model still serves them"
    np.testing.assert_array_equal(b.forward(x, tt, enc, src), want)
    del b
    gc.collect()
    left = _resident(path)
    print(f"resident {both} bytes with the models, {left} after; file {os.path.getsize(path)}")
    assert left < 0.2 * both, (left, both)
