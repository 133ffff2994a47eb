"""The ACE-Step 1.5 diffusion transformer over the native core, and its sampling loop."""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import numpy as np

from . import _core, flow
from ._threads import resolve_threads
from .errors import InputError


class DiT:
    """The DiT of an acestep-dit GGUF: ``forward`` predicts the flow velocity.

    Latents are time-first: ``(T, 64)`` or ``(B, T, 64)`` float arrays at 25 frames per second.
    ``sample`` uploads a generation's conditions once and reuses one step graph across steps.
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", n_threads: Optional[int] = None):
        self._m = _core.DiT(os.fspath(path), device, resolve_threads(n_threads))
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
               noise: Optional[np.ndarray] = None, num_steps: int = 8, shift: float = 3.0,
               timesteps: Optional[Sequence[float]] = None, guidance_scale: float = 1.0,
               null_encoder_states=None, cfg_interval: tuple[float, float] = (0.0, 1.0),
               callback: Optional[Callable[[int, float, np.ndarray, np.ndarray], None]] = None,
               non_cover_states=None, cover_strength: float = 1.0) -> np.ndarray:
        """Runs the flow-matching sampler from seeded (or given) noise to clean latents ``(T, 64)``.

        Turbo checkpoints: leave ``guidance_scale`` at 1.  Base/SFT: ``guidance_scale > 1`` with
        ``null_encoder_states`` (the condition encoder's null embedding broadcast to the encoder
        length) runs the conditional and null passes as one batch of two and combines them with APG.
        ``noise`` defaults to :func:`acestep_ggml.flow.initial_noise` of ``seed``.
        A cover with ``cover_strength < 1`` moves by ``strength · v + (1 − strength) · v_non_cover``,
        ``v_non_cover`` the unguided velocity under ``non_cover_states`` (the text2music prompt).
        """
        src = np.asarray(src_latents, dtype=np.float32)
        if src.ndim != 2:
            raise InputError("src_latents must be (T, 64) for sample()")
        if noise is None:
            noise = flow.initial_noise(src.shape[0], seed, src.shape[1])
        noise = np.asarray(noise, dtype=np.float32)
        if noise.shape != src.shape:
            raise InputError(f"noise has shape {noise.shape}, src_latents {src.shape}")
        mask = np.ones_like(src) if chunk_mask is None else np.asarray(chunk_mask, dtype=np.float32)
        enc = np.asarray(encoder_states, dtype=np.float32)
        conds = enc[None]
        if guidance_scale > 1.0:
            if null_encoder_states is None:
                raise InputError("guidance_scale > 1 needs null_encoder_states")
            null = np.asarray(null_encoder_states, dtype=np.float32)
            if null.shape != enc.shape:
                raise InputError(f"null_encoder_states has shape {null.shape}, encoder_states {enc.shape}")
            conds = np.stack([enc, null])
        blend = non_cover_states is not None and cover_strength < 1.0
        non_cover = np.asarray(non_cover_states, dtype=np.float32)[None] if blend else None
        # Once per generation: the (cond, null) pair and the latents stay on the device; a step
        # sends x_t and t, as a batch of two where guided and of one (the conditional row) elsewhere.
        # A blended cover's text2music prompt has its own length, so it cannot share that batch:
        # its conditions are swapped in for one pass per step (only then is the K/V work per step).
        self._m.set_conditions(conds, src[None], mask[None])

        def velocity(x, t, guided):
            if blend:
                self._m.set_conditions(conds, src[None], mask[None])
            v = self._m.step(x[None], np.full(2 if guided else 1, t, dtype=np.float32))
            return (v[0], v[1]) if guided else v[0]

        def mix(x, t, v):
            self._m.set_conditions(non_cover, src[None], mask[None])
            v_non_cover = self._m.step(x[None], np.full(1, t, dtype=np.float32))[0]
            return cover_strength * v + (1.0 - cover_strength) * v_non_cover

        return flow.sample(velocity, noise, num_steps=num_steps, shift=shift, timesteps=timesteps,
                              guidance_scale=guidance_scale, cfg_interval=cfg_interval, callback=callback,
                              mix=mix if blend else None)


def _batch(a, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind != "f":
        raise InputError(f"{what} must be a floating-point array, got dtype {arr.dtype}")
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim != 3:
        raise InputError(f"{what} must have 2 or 3 dimensions, got {arr.ndim}")
    return arr
