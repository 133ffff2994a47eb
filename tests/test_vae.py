"""VAE: parity with diffusers' AutoencoderOobleck, tiling, posterior sampling, audio files, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _vae_gguf import REAL_SHAPE, TINY, f32_file, make_reference, write_gguf
from conftest import fresh_seed

import acestep_ggml as A

# Fresh weights and inputs every run; the seed is in every assertion message.
SEED = fresh_seed()
CONFIGS = {"tiny": TINY, "real_shape": REAL_SHAPE}


def cos_rel(ours, ref):
    a, b = np.ravel(ours).astype(np.float64), np.ravel(ref).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))), float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request, tmp_path_factory):
    name = request.param
    ref = make_reference(CONFIGS[name], SEED)
    d = tmp_path_factory.mktemp(f"vae_{name}")
    write_gguf(ref, d / "f32.gguf", "f32")
    write_gguf(ref, d / "bf16.gguf", "bf16")
    return name, ref, d


@pytest.fixture(scope="module")
def real_shape_file(tmp_path_factory):
    return f32_file(tmp_path_factory, REAL_SHAPE, SEED, "vae_real")


@pytest.fixture(scope="module")
def real_shape(real_shape_file, device):
    ref, path = real_shape_file
    return ref, A.VAE(path, device=device)


def latents_for(ref, frames, rng, batch=2):
    return rng.standard_normal((batch, frames, ref.config.decoder_input_channels)).astype(np.float32)


def audio_for(ref, samples, rng, batch=2):
    return (0.5 * rng.standard_normal((batch, ref.config.audio_channels, samples))).astype(np.float32)


def torch_decode(ref, z, dtype=torch.float32):
    with torch.no_grad():
        return ref.decode(torch.from_numpy(z).transpose(1, 2).to(dtype)).sample.float().numpy()


def torch_encode(ref, a, dtype=torch.float32):
    with torch.no_grad():
        d = ref.encode(torch.from_numpy(a).to(dtype)).latent_dist
        return d.mean.float().transpose(1, 2).numpy(), d.std.float().transpose(1, 2).numpy()


# F32 weights and activations: only summation order differs from torch, so anything
# short of 0.9999 cosine / 1e-3 relative L2 is a real mismatch.
F32_COS, F32_REL = 0.9999, 1e-3


def test_decode_matches_reference_f32(model, device, f32_rel):
    name, ref, d = model
    rng = np.random.default_rng(SEED)
    z = latents_for(ref, 7, rng)
    # the last block in pieces of 3 frames, as inside the pipeline's longer tiles
    ours = A.VAE(d / "f32.gguf", device=device).decode(z, chunk=0, sub_chunk=3)
    want = torch_decode(ref, z)
    assert ours.shape == want.shape == (2, 2, 7 * ref.hop_length)
    c, r = cos_rel(ours, want)
    assert c >= F32_COS and r <= f32_rel(F32_REL), f"{name} seed {SEED}: cosine {c:.6f}, rel L2 {r:.2e}"


def test_encode_matches_reference_f32(model, device, f32_rel):
    name, ref, d = model
    rng = np.random.default_rng(SEED + 1)
    # a ragged tail: the last partial frame's samples still reach the last latent
    a = audio_for(ref, 6 * ref.hop_length + 77, rng)
    mean, std = A.VAE(d / "f32.gguf", device=device)._vae.encode(a, 0, 0)
    want_mean, want_std = torch_encode(ref, a)
    assert mean.shape == want_mean.shape == (2, 6 + 77 // ref.hop_length, ref.config.decoder_input_channels)
    for what, ours, want in (("mean", mean, want_mean), ("std", std, want_std)):
        c, r = cos_rel(ours, want)
        assert c >= F32_COS and r <= f32_rel(F32_REL), f"{name} {what} seed {SEED}: cosine {c:.6f}, rel L2 {r:.2e}"


# BF16 files run with bf16-rounded weights and F16 activations.  The bar is PyTorch's
# own bf16 error on the same weights and input (SPEC: 6.6e-3 on the real VAE; random
# weights give more): ours must stay within it.
def torch_bf16(name):
    """The same random model cast to bf16 (a fresh copy: casting back would keep the rounding)."""
    return make_reference(CONFIGS[name], SEED).to(torch.bfloat16)


# Ours from a BF16 file against PyTorch's own bf16 run, both against fp32.  Over 25 seeds on the
# CPU the ratio ours / PyTorch averaged 0.52 (at most 0.82 on the tiny model, 0.59 at the real
# shape), but a tiny model's PyTorch error is one small sample (the encode reads 3 hops of audio):
# seed 777688869 had it at 9.4e-3 with ours at 1.14e-2 (1.21x).  So the tiny model gets 1.5x.
TORCH_BF16_SLACK = {"tiny": 1.5, "real_shape": 1.0}


def test_decode_bf16_within_torch_bf16_error(model, device, bf16_bar):
    name, ref, d = model
    rng = np.random.default_rng(SEED + 2)
    z = latents_for(ref, 7, rng, batch=1)
    ours = A.VAE(d / "bf16.gguf", device=device).decode(z, chunk=0)
    want = torch_decode(ref, z)
    _, r_ours = cos_rel(ours, want)
    _, r_torch = cos_rel(torch_decode(torch_bf16(name), z, torch.bfloat16), want)
    assert r_ours <= bf16_bar(TORCH_BF16_SLACK[name] * r_torch), \
        f"{name} seed {SEED}: ours-bf16 rel L2 {r_ours:.2e} > torch-bf16 {r_torch:.2e}"


def test_encode_bf16_within_torch_bf16_error(model, device, bf16_bar):
    name, ref, d = model
    rng = np.random.default_rng(SEED + 3)
    a = audio_for(ref, 3 * ref.hop_length, rng, batch=1)
    ours = A.VAE(d / "bf16.gguf", device=device).encode(a, chunk=0)
    want, _ = torch_encode(ref, a)
    _, r_ours = cos_rel(ours, want)
    _, r_torch = cos_rel(torch_encode(torch_bf16(name), a, torch.bfloat16)[0], want)
    assert r_ours <= bf16_bar(TORCH_BF16_SLACK[name] * r_torch), \
        f"{name} seed {SEED}: ours-bf16 rel L2 {r_ours:.2e} > torch-bf16 {r_torch:.2e}"


# Tiles: a frame depends on about 9 latent frames either side (3-tap convs and three
# dilated 7-tap residual units per rate: 3 + 1 + 39/10 + ... frames), so with 12 frames
# of overlap each kept sample sees exactly the data the untiled pass sees, and only
# float rounding may differ: different matmul shapes and Winograd F(4,7) tiles that fall
# on other frames (measured up to 1.1e-5 relative).  A truncated receptive field would
# show as 1e-2 or more, so 5e-5 keeps the test sharp.
TILE_REL = 5e-5


def test_tiled_decode_matches_untiled(real_shape):
    ref, vae = real_shape
    rng = np.random.default_rng(SEED + 4)
    z = latents_for(ref, 45, rng)
    whole = vae.decode(z, chunk=0)
    tiled = vae.decode(z, chunk=10, overlap=12)
    c, r = cos_rel(tiled, whole)
    assert r <= TILE_REL, f"seed {SEED}: tiled vs untiled rel L2 {r:.2e}, cosine {c:.8f}"


# Pieces: inside a tile the last decoder block runs on pieces of sub_chunk frames, each widened
# by the samples its receptive field reads, so again only float rounding may differ from the
# whole tile, and a halo one sample short would show far above TILE_REL.  Pieces of one frame
# are narrower than their halo; 7 leaves a ragged last piece.
@pytest.mark.parametrize("ops", ["device", "stock"])
def test_decode_in_pieces_matches_whole_tiles(real_shape_file, device, ops, monkeypatch):
    ref, path = real_shape_file
    if ops == "stock":  # the GPU path, on any device
        monkeypatch.setenv("ACESTEP_GGML_VAE_OPS", "stock")
    vae = A.VAE(path, device=device)
    rng = np.random.default_rng(SEED + 8)
    z = latents_for(ref, 45, rng, batch=1)
    whole = vae.decode(z, chunk=0, sub_chunk=0)
    for chunk, sub_chunk in ((0, 1), (0, 7), (0, 16), (20, 7)):
        pieces = vae.decode(z, chunk=chunk, overlap=12, sub_chunk=sub_chunk)
        c, r = cos_rel(pieces, whole)
        assert r <= TILE_REL, f"{ops} seed {SEED}: chunk {chunk}, sub_chunk {sub_chunk}: rel L2 {r:.2e}, cosine {c:.8f}"


# The encoder's first blocks run on pieces the same way, each piece starting on a multiple of
# their downsampling and widened by the samples their receptive field reads; the audio's length,
# 45 frames and 1000 samples, is a multiple of neither the piece nor the frame.
@pytest.mark.parametrize("ops", ["device", "stock"])
def test_encode_in_pieces_matches_whole_tiles(real_shape_file, device, ops, monkeypatch):
    ref, path = real_shape_file
    if ops == "stock":  # the GPU path, on any device
        monkeypatch.setenv("ACESTEP_GGML_VAE_OPS", "stock")
    vae = A.VAE(path, device=device)
    rng = np.random.default_rng(SEED + 9)
    a = audio_for(ref, 45 * ref.hop_length + 1000, rng, batch=1)
    whole = vae.encode(a, chunk=0, sub_chunk=0)
    for chunk, sub_chunk in ((0, 1), (0, 7), (0, 16), (20, 7)):
        pieces = vae.encode(a, chunk=chunk, overlap=12, sub_chunk=sub_chunk)
        c, r = cos_rel(pieces, whole)
        assert r <= TILE_REL, f"{ops} seed {SEED}: chunk {chunk}, sub_chunk {sub_chunk}: rel L2 {r:.2e}, cosine {c:.8f}"


# Tiles and pieces together against diffusers' one full encode, F32: only summation order
# differs, so the F32 bars above hold for the mean and the std alike.
def test_encode_in_tiles_and_pieces_matches_reference(real_shape_file, device, f32_rel):
    ref, path = real_shape_file
    rng = np.random.default_rng(SEED + 10)
    a = audio_for(ref, 45 * ref.hop_length + 1000, rng, batch=1)
    mean, std = A.VAE(path, device=device)._vae.encode(a, 20, 12, None, 7)
    want_mean, want_std = torch_encode(ref, a)
    assert mean.shape == want_mean.shape == (1, 45, 64)
    for what, ours, want in (("mean", mean, want_mean), ("std", std, want_std)):
        c, r = cos_rel(ours, want)
        assert c >= F32_COS and r <= f32_rel(F32_REL), f"{what} seed {SEED}: cosine {c:.6f}, rel L2 {r:.2e}"


def test_tiled_encode_matches_untiled(real_shape):
    ref, vae = real_shape
    rng = np.random.default_rng(SEED + 5)
    a = audio_for(ref, 30 * ref.hop_length + 1000, rng, batch=1)
    whole = vae.encode(a, chunk=0)
    tiled = vae.encode(a, chunk=8, overlap=12)
    assert tiled.shape == whole.shape == (1, 30, 64)
    c, r = cos_rel(tiled, whole)
    assert r <= TILE_REL, f"seed {SEED}: tiled vs untiled rel L2 {r:.2e}, cosine {c:.8f}"


def test_tile_progress_and_stopping_between_tiles(real_shape):
    _, vae = real_shape
    z = np.zeros((2, 25, 64), np.float32)
    seen = []
    vae.decode(z, chunk=10, overlap=2, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 6) for i in range(1, 7)]  # 3 tiles per item, 2 items
    seen.clear()
    vae.encode(np.zeros((1, 2, 25 * 1920), np.float32), chunk=10, overlap=2,
               progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]

    def stop(done, total):
        if done == 2:
            raise KeyboardInterrupt  # what Ctrl-C raises inside the callback

    with pytest.raises(KeyboardInterrupt):
        vae.decode(z, chunk=10, overlap=2, progress=stop)


def test_unbatched_shapes(real_shape):
    ref, vae = real_shape
    rng = np.random.default_rng(SEED + 6)
    z = latents_for(ref, 3, rng, batch=1)
    assert vae.decode(z[0]).shape == (2, 3 * 1920)
    np.testing.assert_array_equal(vae.decode(z[0]), vae.decode(z)[0])
    a = audio_for(ref, 2 * 1920, rng, batch=1)
    assert vae.encode(a[0]).shape == (2, 64)
    assert (vae.sample_rate, vae.hop_length) == (48000, 1920)


def test_encode_sample_is_seeded_posterior_draw(real_shape):
    ref, vae = real_shape
    rng = np.random.default_rng(SEED + 7)
    a = audio_for(ref, 10 * 1920, rng, batch=1)
    mean, std = vae._vae.encode(a, 0, 0)
    s1 = vae.encode(a, sample=True, seed=SEED, chunk=0)
    s2 = vae.encode(a, sample=True, seed=SEED, chunk=0)
    s3 = vae.encode(a, sample=True, seed=SEED + 1, chunk=0)
    np.testing.assert_array_equal(s1, s2)
    assert not np.array_equal(s1, s3)
    noise = (s1 - mean) / std
    # 640 standard normal draws: mean within 0.2 and std within 0.15 of 1 are > 5 sigma bounds
    assert abs(noise.mean()) < 0.2 and abs(noise.std() - 1) < 0.15, f"seed {SEED}"
    assert np.all(std > 1e-4)


# ---------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("bad, words", [
    (np.zeros((4, 63), np.float32), "64 channels"),
    (np.zeros((4, 64), np.int32), "dtype int32"),
    (np.zeros((4, 64), np.complex64), "dtype complex64"),
    (np.array([[None] * 64] * 4), "dtype object"),
    (np.zeros((0, 64), np.float32), "empty"),
    (np.zeros((64,), np.float32), "1 dimensions"),
    (np.zeros((1, 1, 4, 64), np.float32), "4 dimensions"),
    (np.full((4, 64), np.nan, np.float32), "NaN"),
    (np.full((4, 64), np.inf, np.float32), "NaN or infinity"),
])
def test_decode_rejects_bad_latents(real_shape, bad, words):
    _, vae = real_shape
    with pytest.raises(A.InputError, match=words):
        vae.decode(bad)


@pytest.mark.parametrize("bad, words", [
    (np.zeros((1, 3840), np.float32), "2 channels"),
    (np.zeros((2, 3840), np.int16), "dtype int16"),
    (np.zeros((2, 3840), np.complex128), "dtype complex128"),
    (np.zeros((2, 0), np.float32), "empty"),
    (np.zeros((2, 1000), np.float32), "fewer than one latent frame"),
    (np.zeros((3840,), np.float32), "1 dimensions"),
    (np.full((2, 3840), np.nan, np.float32), "NaN"),
])
def test_encode_rejects_bad_audio(real_shape, bad, words):
    _, vae = real_shape
    with pytest.raises(A.InputError, match=words):
        vae.encode(bad)


def test_bad_tiling_options(real_shape):
    _, vae = real_shape
    z = np.zeros((4, 64), np.float32)
    with pytest.raises(A.InputError, match="chunk"):
        vae.decode(z, chunk=-1)
    with pytest.raises(A.InputError, match="overlap"):
        vae.decode(z, chunk=2, overlap=-3)
    with pytest.raises(A.InputError, match="sub_chunk"):
        vae.decode(z, sub_chunk=-1)


def test_wrong_model_file(tmp_path):
    import gguf

    path = tmp_path / "dit.gguf"
    w = gguf.GGUFWriter(str(path), "acestep-dit")
    w.add_tensor("x", np.zeros(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(A.ModelFileError, match="acestep-vae"):
        A.VAE(path)
    with pytest.raises(A.ModelFileError):
        A.VAE(tmp_path / "missing.gguf")
