"""The models of ACE-Step 1.5, each a thin wrapper over its C++ graph (numpy in, numpy out): the
Qwen3 text encoder, the condition encoder, the audio-code detokenizer and audio tokenizer, the
diffusion transformer and the VAE.  The 5 Hz LM, with its generation loop, is acestep_ggml.lm."""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core, flow
from .constants import SHIFT, TURBO_STEPS, resolve_threads
from .errors import InputError

# The VAE's tiling, in latent frames (1920 samples each).  The decoder and encoder see about
# 9 frames either side of a frame (3-tap convs and three dilated 7-tap residual units
# at each rate), so 12 frames of overlap make tiled output equal to untiled up to
# float rounding.  Inside a tile the decoder's last three blocks, whose 256 and 128
# channels at 12 to 48 kHz dominate its memory, run on pieces of DEFAULT_SUB_CHUNK frames
# (each with the few samples of context its receptive field reads), which cuts the compute
# memory per frame of tile eightfold, so that tiles can be long and their overlap a small
# share of the work.  The encoder's input conv and first three blocks (128 and 256 channels at
# 48 to 6 kHz) run on pieces the same way.  On the CPU, 1024-frame tiles (41 s of audio: a 30 s song is one tile,
# where 128-frame tiles recomputed 16 % of its frames) take a 1.0 GiB compute buffer with the
# real model (BF16 file); see benchmarks/bench_vae.py.  A GPU takes its tiles from its free
# memory (VAE.default_chunk).
DEFAULT_CHUNK = 1024
DEFAULT_OVERLAP = 12
DEFAULT_SUB_CHUNK = 32


def _floats(x, what: str) -> np.ndarray:
    """A real floating-point array, or InputError naming what it is."""
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.floating):
        raise InputError(f"{what} must be a real floating-point array, got dtype {a.dtype}")
    return a


def _int_array(values, what: str) -> np.ndarray:
    """Integers as int64, or InputError naming the first value that is not an integer."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise InputError(f"{what} must be a 1-D sequence, got shape {arr.shape}")
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
        if bad.size:
            i = int(bad[0])
            raise InputError(f"{what} must be integers: {arr[i].item()!r} at index {i} is not")
        return arr.astype(np.int64)
    for i, v in enumerate(arr.tolist()):
        if isinstance(v, bool) or not isinstance(v, int):
            raise InputError(f"{what} must be integers: {v!r} at index {i} is not")
    return arr.astype(np.int64)


ModelFile = Union[str, os.PathLike, _core.GGUFFile]


def _file(source: ModelFile):
    """What the core's constructors take: an open GGUFFile (shared by the models of one file, so that
    it is opened once) or a path."""
    return source if isinstance(source, _core.GGUFFile) else os.fspath(source)


class TextEncoder:
    """Qwen3 text encoder (GGUF architecture ``acestep-text-enc``).

    ``encode(ids)``: token ids ``(T,)`` -> last hidden state ``(T, hidden)`` (1024 for
    Qwen3-Embedding-0.6B), after the final norm, causal attention as in the pipeline.
    ``embed(ids)``: ``(T,)`` -> ``(T, hidden)`` embedding-table rows only (the lyric input).
    """

    def __init__(self, path: ModelFile, device: str = "cpu", n_threads: Optional[int] = None):
        self._m = _core._TextEncoder(_file(path), device, resolve_threads(n_threads))

    @property
    def hidden_size(self) -> int:
        return self._m.hidden

    @property
    def vocab_size(self) -> int:
        return self._m.vocab_size

    def encode(self, ids: Sequence[int]) -> np.ndarray:
        return self._m.encode(_int_array(ids, "token ids"))

    def embed(self, ids: Sequence[int]) -> np.ndarray:
        return self._m.embed(_int_array(ids, "token ids"))


class ConditionEncoder:
    """Condition encoder (tensors ``encoder.*`` of an ``acestep-dit`` GGUF) plus the text
    encoder's embedding table (for lyric tokens), from an ``acestep-text-enc`` GGUF.

    ``encode(text_hidden_states (Tt, 1024), lyric_ids (Tl,), refer_latent (Tr, 64) or None,
    text_mask (Tt,) or None, lyric_mask (Tl,) or None)`` -> ``(states (Tl + 1 + Tt, 2048),
    mask (Tl + 1 + Tt,) bool)``: lyric, timbre and text states packed with valid tokens first,
    as diffusers' AceStepConditionEncoder does.  Without a reference latent the timbre encoder
    reads the first 750 frames of ``silence_latent``.
    """

    def __init__(self, dit_path: ModelFile, text_encoder_path: ModelFile, device: str = "cpu",
                 n_threads: Optional[int] = None):
        self._m = _core._ConditionEncoder(_file(dit_path), _file(text_encoder_path), device, resolve_threads(n_threads))

    @property
    def hidden_size(self) -> int:
        return self._m.hidden

    @property
    def null_condition_emb(self) -> np.ndarray:
        """``(hidden,)``: the learned unconditional embedding, broadcast over the sequence for CFG."""
        return self._m.null_condition_emb

    @property
    def silence_latent(self) -> np.ndarray:
        """``(15000, 64)``: the VAE latent of silence shipped in the DiT file."""
        return self._m.silence_latent

    def encode(self, text_hidden_states: np.ndarray, lyric_ids: Sequence[int],
               refer_latent: Optional[np.ndarray] = None, text_mask: Optional[np.ndarray] = None,
               lyric_mask: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        return self._m.encode(text_hidden_states, _int_array(lyric_ids, "lyric token ids"), refer_latent,
                              None if text_mask is None else np.asarray(text_mask, dtype=np.uint8),
                              None if lyric_mask is None else np.asarray(lyric_mask, dtype=np.uint8))


class Detokenizer:
    """Audio-code detokenizer (``tokenizer.quantizer.project_out`` and ``detokenizer.*`` of an
    ``acestep-dit`` GGUF): ``decode(codes (N,) ints in [0, 64000))`` -> 25 Hz latents ``(5N, 64)``."""

    def __init__(self, dit_path: ModelFile, device: str = "cpu", n_threads: Optional[int] = None):
        self._m = _core._Detokenizer(_file(dit_path), device, resolve_threads(n_threads))

    @property
    def codebook_size(self) -> int:
        return self._m.codebook_size

    def decode(self, codes: Sequence[int]) -> np.ndarray:
        return self._m.decode(_int_array(codes, "audio codes"))


class AudioTokenizer:
    """Audio tokenizer (``tokenizer.*`` of an ``acestep-dit`` GGUF), the inverse of the
    Detokenizer: ``tokenize(latents (T, 64))`` -> 5 Hz codes ``(ceil(T / 5),)`` int64 in [0, 64000),
    a last short window filled from the silence latent as diffusers' ``AceStepAudioTokenizer.tokenize``."""

    def __init__(self, dit_path: ModelFile, device: str = "cpu", n_threads: Optional[int] = None):
        self._m = _core._AudioTokenizer(_file(dit_path), device, resolve_threads(n_threads))

    @property
    def codebook_size(self) -> int:
        return self._m.codebook_size

    def tokenize(self, latents: np.ndarray) -> np.ndarray:
        return self._m.tokenize(latents)


class DiT:
    """The DiT of an acestep-dit GGUF: ``forward`` predicts the flow velocity.

    Latents are time-first: ``(T, 64)`` or ``(B, T, 64)`` float arrays at 25 frames per second.
    ``sample`` uploads a generation's conditions once and reuses one step graph across steps.
    """

    def __init__(self, path: ModelFile, device: str = "cpu", n_threads: Optional[int] = None):
        self._m = _core.DiT(_file(path), device, resolve_threads(n_threads))
        self.config: dict = self._m.config

    def forward(self, x_t, t, encoder_states, src_latents, chunk_mask=None) -> np.ndarray:
        """Velocity at ``x_t`` and time ``t`` (a float, or one per batch row).

        ``encoder_states``: ``(S, D)`` or ``(B, S, D)`` condition-encoder output;
        ``src_latents``: like ``x_t``; ``chunk_mask``: like ``x_t``, ones (text2music) when omitted.
        Returns an array shaped like ``x_t``.
        """
        x = np.asarray(x_t)
        unbatched = x.ndim == 2
        xb = _batch(x, "x_t")
        src = _batch(src_latents, "src_latents")
        enc = _batch(encoder_states, "encoder_states")
        mask = np.ones_like(src, dtype=np.float32) if chunk_mask is None else _batch(chunk_mask, "chunk_mask")
        b = xb.shape[0]
        # One set of conditions may serve a whole batch of latents (e.g. several seeds).
        src, mask, enc = (np.broadcast_to(a, (b,) + a.shape[1:]) if a.shape[0] == 1 and b > 1 else a
                          for a in (src, mask, enc))
        tt = np.asarray(t, dtype=np.float32).reshape(-1)
        if tt.size == 1 and b > 1:
            tt = np.full(b, tt[0], dtype=np.float32)
        v = self._m.forward(xb, tt, enc, src, mask)
        return v[0] if unbatched else v

    __call__ = forward

    def sample(self, encoder_states, src_latents, chunk_mask=None, *, seed: int = 0,
               noise: Optional[np.ndarray] = None, num_steps: int = TURBO_STEPS, shift: float = SHIFT,
               timesteps: Optional[Sequence[float]] = None, guidance_scale: float = 1.0,
               null_encoder_states=None, cfg_interval: tuple[float, float] = (0.0, 1.0),
               callback: Optional[Callable[[int, float, np.ndarray, np.ndarray], None]] = None,
               non_cover_states=None, cover_strength: float = 1.0, **options) -> np.ndarray:
        """Runs the flow-matching sampler from seeded (or given) noise to clean latents ``(T, 64)``,
        or ``(B, T, 64)`` for a batch: then every array has the batch first (encoder states
        ``(B, S, D)``), item b draws from ``seed[b]`` (a list) or ``seed + b``, and the DiT runs the
        items in one graph per step.
        ``options``: the solver, guidance, DCW and repaint options of :func:`acestep_ggml.flow.sample`
        (its SDE noise is drawn from ``seed``).

        Turbo checkpoints: leave ``guidance_scale`` at 1.  Base/SFT: ``guidance_scale > 1`` with
        ``null_encoder_states`` (the condition encoder's null embedding broadcast to the encoder
        length) runs the conditional and null passes as one batch of two and combines them with APG.
        ``noise`` defaults to :func:`acestep_ggml.flow.initial_noise` of ``seed``.
        A cover with ``cover_strength < 1`` moves by ``strength · v + (1 − strength) · v_non_cover``,
        ``v_non_cover`` the unguided velocity under ``non_cover_states`` (the text2music prompt).
        """
        src = np.asarray(src_latents, dtype=np.float32)
        if src.ndim not in (2, 3):
            raise InputError("src_latents must be (T, 64), or (B, T, 64) for a batch, for sample()")
        batched = src.ndim == 3
        srcb = src if batched else src[None]
        B, T, C = srcb.shape
        seeds = [int(s) for s in seed] if isinstance(seed, (list, tuple, np.ndarray)) else \
            [int(seed) + b for b in range(B)]
        if len(seeds) != B:
            raise InputError(f"{len(seeds)} seeds for a batch of {B}")
        if noise is None:
            noise = np.stack([flow.initial_noise(T, s, C) for s in seeds]) if batched else \
                flow.initial_noise(T, seeds[0], C)
        noise = np.asarray(noise, dtype=np.float32)
        if noise.shape != src.shape:
            raise InputError(f"noise has shape {noise.shape}, src_latents {src.shape}")
        mask = np.ones_like(src) if chunk_mask is None else np.asarray(chunk_mask, dtype=np.float32)
        maskb = mask if batched else mask[None]
        enc = np.asarray(encoder_states, dtype=np.float32)
        conds = enc if batched else enc[None]
        if conds.ndim != 3 or conds.shape[0] != B:
            raise InputError(f"encoder_states has shape {enc.shape} for src_latents {src.shape}")
        guided = guidance_scale > 1.0
        if guided:
            if null_encoder_states is None:
                raise InputError("guidance_scale > 1 needs null_encoder_states")
            null = np.asarray(null_encoder_states, dtype=np.float32)
            if null.shape != enc.shape:
                raise InputError(f"null_encoder_states has shape {null.shape}, encoder_states {enc.shape}")
            conds = np.concatenate([conds, null if batched else null[None]])  # B cond rows, then B null rows
        blend = non_cover_states is not None and cover_strength < 1.0
        non_cover = None
        if blend:
            non_cover = np.asarray(non_cover_states, dtype=np.float32)
            non_cover = non_cover if batched else non_cover[None]
        # Once per generation: the conditions and the latents stay on the device; a step sends
        # x_t and t, as a batch of 2B where guided (B conditional rows, then B null rows) and of B
        # (the conditional rows) elsewhere; one item shares its latents between its two rows.
        # A blended cover's text2music prompt has its own length, so it cannot share that batch:
        # its conditions are swapped in for one pass per step (only then is the K/V work per step).
        pair = guided and B > 1
        src_c, mask_c = (np.concatenate([srcb, srcb]), np.concatenate([maskb, maskb])) if pair else (srcb, maskb)
        self._m.set_conditions(conds, src_c, mask_c)

        def velocity(x, t, guided):
            if blend:
                self._m.set_conditions(conds, src_c, mask_c)
            xb = x if batched else x[None]
            if guided:
                v = self._m.step(np.concatenate([xb, xb]) if B > 1 else xb, np.full(2 * B, t, dtype=np.float32))
                return (v[:B], v[B:]) if batched else (v[0], v[1])
            v = self._m.step(xb, np.full(B, t, dtype=np.float32))
            return v if batched else v[0]

        def mix(x, t, v):
            self._m.set_conditions(non_cover, srcb, maskb)
            v_non_cover = self._m.step(x if batched else x[None], np.full(B, t, dtype=np.float32))
            return cover_strength * v + (1.0 - cover_strength) * (v_non_cover if batched else v_non_cover[0])

        return flow.sample(velocity, noise, num_steps=num_steps, shift=shift, timesteps=timesteps,
                           guidance_scale=guidance_scale, cfg_interval=cfg_interval, callback=callback,
                           mix=mix if blend else None, seed=seeds, **options)


def _batch(a, what: str) -> np.ndarray:
    """A (T, C) or (B, T, C) float array as (B, T, C)."""
    arr = _floats(a, what)
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim != 3:
        raise InputError(f"{what} must have 2 or 3 dimensions, got {arr.ndim}")
    return arr


class VAE:
    """A VAE loaded once from an ``acestep-vae`` GGUF.

    ``decode`` and ``encode`` run in overlapping time tiles so that memory does not
    grow with the duration; ``chunk=0`` runs one untiled pass, ``chunk=None`` tiles of
    ``default_chunk`` frames.
    """

    def __init__(self, path: ModelFile, device: str = "cpu", n_threads: int | None = None):
        self._vae = _core.VAE(_file(path), device, resolve_threads(n_threads))

    @property
    def sample_rate(self) -> int:
        return self._vae.sample_rate

    @property
    def hop_length(self) -> int:
        """Audio samples per latent frame (1920 for ACE-Step)."""
        return self._vae.hop_length

    @property
    def latent_channels(self) -> int:
        return self._vae.latent_channels

    @property
    def audio_channels(self) -> int:
        return self._vae.audio_channels

    @property
    def default_chunk(self) -> int:
        """Frames per tile when ``chunk`` is None: DEFAULT_CHUNK on the CPU; on a GPU as many
        as a quarter of its free memory holds (at most 4 GiB), measured on first use."""
        return self._vae.default_chunk(DEFAULT_CHUNK, DEFAULT_SUB_CHUNK)

    def _chunk(self, chunk: Optional[int]) -> int:
        return self.default_chunk if chunk is None else int(chunk)

    @property
    def compute_type(self) -> str:
        """'f32' for F32 files, 'f16' for BF16 / F16 ones."""
        return self._vae.compute_type

    def decode(self, latents, *, chunk: Optional[int] = None, overlap: int = DEFAULT_OVERLAP,
               sub_chunk: int = DEFAULT_SUB_CHUNK, progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
        """Latents (T, C) or (B, T, C) -> audio (audio_channels, T * hop) or (B, audio_channels, T * hop).

        Inside each tile the decoder's last blocks run on pieces of ``sub_chunk`` frames
        (0: the whole tile at once); the output is the same either way, up to float rounding.
        ``progress(done, total)`` is called after each tile; Ctrl-C stops between tiles."""
        z = _floats(latents, "latents")
        if z.ndim not in (2, 3):
            raise InputError(f"latents must have shape (T, {self.latent_channels}) or (B, T, {self.latent_channels}), "
                             f"got {z.ndim} dimensions {z.shape}")
        out = self._vae.decode(z if z.ndim == 3 else z[None], self._chunk(chunk), int(overlap), progress,
                               int(sub_chunk))
        return out if z.ndim == 3 else out[0]

    def encode(self, audio, sample: bool = False, seed: int | None = None, *, chunk: Optional[int] = None,
               overlap: int = DEFAULT_OVERLAP, sub_chunk: int = DEFAULT_SUB_CHUNK,
               progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
        """Audio (2, N) or (B, 2, N) -> latents (N // hop, C) or (B, N // hop, C).

        Returns the posterior mean, or with ``sample=True`` a draw mean + std * noise
        (std = softplus(scale) + 1e-4), the noise seeded by ``seed``.  Inside each tile the
        encoder's first blocks run on pieces of ``sub_chunk`` frames (0: the whole tile at
        once); the output is the same either way, up to float rounding.
        """
        a = _floats(audio, "audio")
        if a.ndim not in (2, 3):
            raise InputError(f"audio must have shape ({self.audio_channels}, N) or (B, {self.audio_channels}, N), "
                             f"got {a.ndim} dimensions {a.shape}")
        mean, std = self._vae.encode(a if a.ndim == 3 else a[None], self._chunk(chunk), int(overlap), progress,
                                     int(sub_chunk))
        z = mean
        if sample:
            noise = np.random.default_rng(seed).standard_normal(mean.shape, dtype=np.float32)
            z = mean + std * noise
        return z if a.ndim == 3 else z[0]
