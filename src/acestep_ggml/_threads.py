"""The one default for CPU threads: all cores, as ggml's CPU backend is fastest with them."""
from __future__ import annotations

import os
from typing import Optional


def resolve_threads(n_threads: Optional[int]) -> int:
    return int(n_threads) if n_threads else (os.cpu_count() or 1)
