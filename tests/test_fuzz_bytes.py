"""Byte mutation of every GGUF kind, short run (tests/fuzz/bytes.py; docs/hardening.md has the
long runs): each mutated file opened through the Python API and run a few frames, one in four
also through `synth` or `lm`; never a crash, a hang, a traceback or an exception outside the
package's error family.  Also the cases found so far (tests/fuzz/corpus/bytes-*.json)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fuzz import bytes as byte_fuzz
from fuzz.common import CORPUS, files_by_kind, fuzz_seed

CASES = int(os.environ.get("ACESTEP_FUZZ_CASES_BYTES", "30"))
TIMEOUT = 180


@pytest.fixture(scope="module")
def models(synth_models) -> Path:
    yield synth_models[2]["f32"]
    byte_fuzz.close()


def _check(case: dict, models: Path, tmp_path: Path):
    out = byte_fuzz.run_case(case, models, tmp_path, TIMEOUT)
    assert out.ok, f"{out.kind} (exit {out.returncode}) for {json.dumps(case)}:\n{out.tail}"


def test_random_mutations(models, tmp_path):
    files = files_by_kind(models)
    seed = fuzz_seed("bytes")
    for i, case in byte_fuzz.cases(seed, CASES, files):
        print(i, json.dumps(case))
        _check(case, models, tmp_path)


@pytest.mark.parametrize("path", sorted(CORPUS.glob("bytes-*.json")), ids=lambda p: p.stem)
def test_corpus(models, tmp_path, path):
    _check(json.loads(path.read_text())["case"], models, tmp_path)
