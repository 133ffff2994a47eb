"""The ACE-Step VAE (AutoencoderOobleck): 25 Hz latents <-> 48 kHz stereo audio."""
from __future__ import annotations

import os
from typing import Callable, Optional

import numpy as np

from . import _core
from ._threads import resolve_threads
from .errors import InputError

# Tiling, in latent frames (1920 samples each).  The decoder and encoder see about
# 9 frames either side of a frame (3-tap convs and three dilated 7-tap residual units
# at each rate), so 12 frames of overlap make tiled output equal to untiled up to
# float rounding.  Inside a tile the decoder's last three blocks, whose 256 and 128
# channels at 12 to 48 kHz dominate its memory, run on pieces of DEFAULT_SUB_CHUNK frames
# (each with the few samples of context its receptive field reads), which cuts the compute
# memory per frame of tile eightfold, so that tiles can be long and their overlap a small
# share of the work.  On the CPU, 1024-frame tiles (41 s of audio: a 30 s song is one tile,
# where 128-frame tiles recomputed 16 % of its frames) take a 1.0 GiB compute buffer with the
# real model (BF16 file); see benchmarks/bench_vae.py.  A GPU takes its tiles from its free
# memory (VAE.default_chunk).
DEFAULT_CHUNK = 1024
DEFAULT_OVERLAP = 12
DEFAULT_SUB_CHUNK = 32


def _array(x, what: str) -> np.ndarray:
    a = np.asarray(x)
    if not (np.issubdtype(a.dtype, np.floating)):
        raise InputError(f"{what} must be a real floating-point array, got dtype {a.dtype}")
    return a


class VAE:
    """A VAE loaded once from an ``acestep-vae`` GGUF.

    ``decode`` and ``encode`` run in overlapping time tiles so that memory does not
    grow with the duration; ``chunk=0`` runs one untiled pass, ``chunk=None`` tiles of
    ``default_chunk`` frames.
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", n_threads: int | None = None):
        self._vae = _core.VAE(os.fspath(path), device, resolve_threads(n_threads))

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
        z = _array(latents, "latents")
        if z.ndim not in (2, 3):
            raise InputError(f"latents must have shape (T, {self.latent_channels}) or (B, T, {self.latent_channels}), "
                             f"got {z.ndim} dimensions {z.shape}")
        out = self._vae.decode(z if z.ndim == 3 else z[None], self._chunk(chunk), int(overlap), progress,
                               int(sub_chunk))
        return out if z.ndim == 3 else out[0]

    def encode(self, audio, sample: bool = False, seed: int | None = None, *, chunk: Optional[int] = None,
               overlap: int = DEFAULT_OVERLAP, progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
        """Audio (2, N) or (B, 2, N) -> latents (N // hop, C) or (B, N // hop, C).

        Returns the posterior mean, or with ``sample=True`` a draw mean + std * noise
        (std = softplus(scale) + 1e-4), the noise seeded by ``seed``.
        """
        a = _array(audio, "audio")
        if a.ndim not in (2, 3):
            raise InputError(f"audio must have shape ({self.audio_channels}, N) or (B, {self.audio_channels}, N), "
                             f"got {a.ndim} dimensions {a.shape}")
        mean, std = self._vae.encode(a if a.ndim == 3 else a[None], self._chunk(chunk), int(overlap), progress)
        z = mean
        if sample:
            noise = np.random.default_rng(seed).standard_normal(mean.shape, dtype=np.float32)
            z = mean + std * noise
        return z if a.ndim == 3 else z[0]
