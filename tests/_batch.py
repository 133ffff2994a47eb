"""Helpers of the batch tests (tests/test_batch*.py)."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import acestep_ggml as ace
from acestep_ggml import batch

# Equal to a single run: the same arrays through a 16-bit WAV file (its rounding alone keeps
# the cosine above 1 - 1e-8 for these songs).
COSINE = 0.9999


def need(module: str):
    """The module, else a skip; in CI (CI set) a module that does not import fails the test
    (or, called at a module's top, its collection) instead."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs this test, and {module} does not import: {e}", pytrace=False)
        pytest.skip(f"{module} does not import: {e}", allow_module_level=True)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def manifest(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / batch.MANIFEST).read_text().splitlines()]


def single_run(models, row: dict, device: str = "cpu") -> np.ndarray:
    """What `generate` renders for a table row (its fields, its seed), with one thread as the
    batch's workers have (the LM's sampling may tip another way at another thread count)."""
    fields = {k: v for k, v in row.items() if k not in batch.OUTPUT_COLUMNS}
    return ace.generate(models, device=device, n_threads=1, **fields).audio


def assert_equals_single_run(models, out: Path, row: dict, seed: int, device: str = "cpu") -> None:
    """The row's file holds what `generate` renders with the row's fields and ``seed``."""
    audio, _ = sf.read(str(out / batch.output_name(row)), dtype="float32", always_2d=True)
    expected = single_run(models, dict(row, seed=seed), device)
    assert audio.T.shape == expected.shape, row["id"]
    assert cosine(audio.T, expected) >= COSINE, row["id"]


def slow_rows(n: int, seconds: int = 30) -> list[dict]:
    """Rows that run the LM (about 6 s each for 30 s on one thread here): long enough to stop
    a run while they render."""
    return [{"id": f"slow{i}", "caption": "slow strings", "duration": seconds, "bpm": 90, "keyscale": "C major",
             "timesignature": 4, "language": "en", "seed": i} for i in range(n)]


def cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    """`python -m acestep_ggml batch ARGS`, running."""
    return subprocess.Popen([sys.executable, "-m", "acestep_ggml", "batch", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
