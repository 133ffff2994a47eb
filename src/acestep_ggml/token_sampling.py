"""Next-token sampling as the reference LM does it: classifier-free guidance on the logits,
then top-k, then top-p (nucleus), then temperature; temperature 0 is greedy."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .constants import LM_TEMPERATURE, LM_TOP_P
from .errors import InputError

_TOP_P_SHORTLIST = 1024


def guided(cond: np.ndarray, uncond: np.ndarray, scale: float) -> np.ndarray:
    """CFG logits: uncond + scale * (cond - uncond)."""
    cond = np.asarray(cond, dtype=np.float32)
    uncond = np.asarray(uncond, dtype=np.float32)
    return uncond + np.float32(scale) * (cond - uncond)


def check_params(temperature: float, top_p: Optional[float], top_k: Optional[int]) -> None:
    if not np.isfinite(temperature) or temperature < 0:
        raise InputError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 0:
        raise InputError(f"top_k must be >= 0 (0 or None = off), got {top_k}")


def sample(logits: np.ndarray, rng: np.random.Generator, temperature: float = LM_TEMPERATURE,
           top_p: Optional[float] = LM_TOP_P, top_k: Optional[int] = None) -> int:
    """One token id from 1-D logits (entries of -inf are never drawn)."""
    x = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return int(np.argmax(x))
    if top_k:
        k = min(int(top_k), x.size)
        kth = np.partition(x, x.size - k)[x.size - k]
        x = np.where(x < kth, -np.inf, x)
    if top_p is not None and 0.0 < top_p < 1.0:
        # Keep the smallest set of most likely tokens whose mass reaches top_p, always the first.
        # Sorting all 64000+ logits took most of a token's sampling time; when the best
        # _TOP_P_SHORTLIST already hold more than top_p of the mass (a trained model, nearly
        # always), sorting those is enough: every token past them is dropped either way.
        e = np.exp(x - np.max(x))
        total = e.sum()
        order = None
        if x.size > 2 * _TOP_P_SHORTLIST:
            short = np.argpartition(-x, _TOP_P_SHORTLIST - 1)[:_TOP_P_SHORTLIST]
            if e[short].sum() > top_p * total:
                order = short[np.argsort(-x[short], kind="stable")]
        if order is None:
            order = np.argsort(-x, kind="stable")
        cum = np.cumsum(e[order] / total)
        drop = np.empty_like(cum, dtype=bool)
        drop[0] = False
        drop[1:] = cum[:-1] > top_p
        keep = order[~drop]
        x, kept = np.full_like(x, -np.inf), x
        x[keep] = kept[keep]
    x = x / temperature
    p = np.exp(x - np.max(x))
    p /= p.sum()
    return int(rng.choice(p.size, p=p))
