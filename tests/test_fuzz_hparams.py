"""Hyperparameter mutation, short run (tests/fuzz/hparams.py; docs/hardening.md has the long runs):
one value of one tiny model file changed in place, then a real `synth` or `lm` run; each ends in
success or one ``error: ...`` line with exit 2, never a signal, a hang or a traceback.  Also the
cases found so far (tests/fuzz/corpus/hparams-*.json) and those the issue reported."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from fuzz import hparams
from fuzz.common import CORPUS, files_by_kind, fuzz_seed

CASES = int(os.environ.get("ACESTEP_FUZZ_CASES", "6"))
TIMEOUT = 180  # the hang was past 3 minutes; a tiny model's run takes seconds

# The two findings (hyperparameter fuzz of 140 cases at c14d019), then this fuzzer's:
# each with the words its one error line holds.
KNOWN = [
    {
        "kind": "acestep-text-enc",
        "where": "gguf",
        "key": "acestep-text-enc.attention.layer_norm_rms_epsilon",
        "value": math.nan,
        "command": "synth",
        "expect": "layer_norm_rms_epsilon = nan",
        "was": "SIGABRT in rms_norm",
    },
    {
        "kind": "acestep-lm",
        "where": "gguf",
        "key": "acestep-lm.attention.layer_norm_rms_epsilon",
        "value": math.nan,
        "command": "lm",
        "lm_metadata": False,
        "expect": "layer_norm_rms_epsilon = nan",
        "was": "lm hung past 3 min",
    },
    {
        "kind": "acestep-lm",
        "where": "gguf",
        "key": "acestep-lm.rope.freq_base",
        "value": 1e-45,
        "command": "lm",
        "lm_metadata": False,
        "expect": "rope.freq_base = 1.4013e-45 must be at least 1",
        "was": "NaN logits, numpy's ValueError: a traceback",
    },
    {
        "kind": "acestep-dit",
        "where": "gguf",
        "key": "acestep-dit.rope.freq_base",
        "value": 0.5,
        "command": "synth",
        "expect": "rope.freq_base = 0.5 must be at least 1",
        "was": "(the same check, the DiT's reader)",
    },
]


@pytest.fixture(scope="module")
def models(synth_models) -> Path:
    return synth_models[2]["f32"]


def _check(case: dict, models: Path, tmp_path: Path):
    out = hparams.run_case(case, models, tmp_path, TIMEOUT)
    assert out.ok, f"{out.kind} (exit {out.returncode}) for {json.dumps(case)}:\n{out.tail}"
    return out


@pytest.mark.parametrize("case", KNOWN, ids=[f"{c['command']}-{c['key'].split('.')[-1]}" for c in KNOWN])
def test_known_findings(models, tmp_path, case):
    out = _check(case, models, tmp_path)
    assert out.kind == "ok-error" and case["expect"] in out.error_line, out.error_line


def test_random_mutations(models, tmp_path):
    files = files_by_kind(models)
    seed = fuzz_seed("hparams")
    for i, case in hparams.cases(seed, CASES, files):
        print(i, json.dumps(case))
        _check(case, models, tmp_path)


@pytest.mark.parametrize("path", sorted(CORPUS.glob("hparams-*.json")), ids=lambda p: p.stem)
def test_corpus(models, tmp_path, path):
    _check(json.loads(path.read_text())["case"], models, tmp_path)
