"""atheris on the exchange-directory reader, audio loading, the server's request parsing and
adapter files (on the session's tiny DiT), short runs (tests/fuzz/inputs.py; docs/hardening.md has
the long runs), and the inputs found so far (tests/fuzz/corpus/inputs-<target>-*) replayed in this
process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _server import need
from fuzz import inputs
from fuzz.common import CORPUS, child_env, fuzz_seed

CASES = int(os.environ.get("ACESTEP_FUZZ_CASES_INPUTS", "400"))
TESTS = Path(__file__).parent


@pytest.mark.parametrize("target", sorted(inputs.TARGETS))
def test_atheris(target, request):
    need("atheris", "pip install atheris (in the [test] extra)")
    if target == "server":
        need("fastapi", 'pip install "acestep-ggml[server]"')
    # The adapter target loads adapters against the session's tiny DiT (made once, with torch).
    models = ["--models", str(request.getfixturevalue("synth_models")[2]["f32"])] if target == "adapter" else []
    seed = fuzz_seed(f"inputs {target}")
    r = subprocess.run(
        [sys.executable, "-m", "fuzz.inputs", target, "--cases", str(CASES), "--seed", str(seed), *models],
        cwd=TESTS,
        capture_output=True,
        text=True,
        timeout=600,
        env=child_env(),
    )
    assert r.returncode == 0 and f"Done {CASES} runs" in r.stderr, r.stderr[-4000:]


def test_corpus(request):
    """Every input found so far (tests/fuzz/corpus/inputs-<target>-*), replayed: one test over the
    folder rather than a parameter per file (an empty parameter set would skip)."""
    paths = sorted(p for p in CORPUS.glob("inputs-*") if p.is_file())
    if any(p.name.startswith("inputs-adapter-") for p in paths):
        inputs.MODELS = request.getfixturevalue("synth_models")[2]["f32"]
    for path in paths:
        print("replaying", path.name)
        inputs.replay(path.name.split("-")[1], path.read_bytes())
