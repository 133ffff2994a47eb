"""atheris on the exchange-directory reader, audio loading and the server's request parsing,
short runs (tests/fuzz/inputs.py; docs/hardening.md has the long runs), and the inputs found so
far (tests/fuzz/corpus/inputs-<target>-*) replayed in this process."""

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
def test_atheris(target):
    need("atheris", "pip install atheris (in the [test] extra)")
    if target == "server":
        need("fastapi", 'pip install "acestep-ggml[server]"')
    seed = fuzz_seed(f"inputs {target}")
    r = subprocess.run(
        [sys.executable, "-m", "fuzz.inputs", target, "--cases", str(CASES), "--seed", str(seed)],
        cwd=TESTS,
        capture_output=True,
        text=True,
        timeout=600,
        env=child_env(),
    )
    assert r.returncode == 0 and f"Done {CASES} runs" in r.stderr, r.stderr[-4000:]


def test_corpus():
    """Every input found so far (tests/fuzz/corpus/inputs-<target>-*), replayed; none yet, so this
    is one test over the folder rather than a parameter per file (an empty parameter set skips)."""
    for path in sorted(p for p in CORPUS.glob("inputs-*") if p.is_file()):
        print("replaying", path.name)
        inputs.replay(path.name.split("-")[1], path.read_bytes())
