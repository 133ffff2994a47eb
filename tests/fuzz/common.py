"""What the fuzzers share: the seed (printed, ACESTEP_FUZZ_SEED replays it), the tiny well-formed
model files they start from, a CLI run classified as ok or a finding, and the corpus of found cases."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
CORPUS = HERE / "corpus"
# The models' kinds, by the architecture their GGUF states, and the command that runs each.
KINDS = {"acestep-dit": "synth", "acestep-text-enc": "synth", "acestep-vae": "synth", "acestep-lm": "lm"}
CAPTION = "warm analog pads, slow"


def fuzz_seed(what: str, seed: int | None = None) -> int:
    """A fresh seed for `what` (or the one given), printed; ACESTEP_FUZZ_SEED=N replays it."""
    env = os.environ.get("ACESTEP_FUZZ_SEED")
    if seed is None:
        seed = int(env) if env else int.from_bytes(os.urandom(4), "little") % 2**31
    print(f"\n{what} seed: {seed} (replay: ACESTEP_FUZZ_SEED={seed})", flush=True)
    return seed


def build_tiny_models(out: Path, seed: int = 0) -> Path:
    """The folder of tiny F32 GGUFs of every kind (DiT, text encoder, VAE, LM with its tokenizer),
    as the tests' synth_models fixture makes them (torch, diffusers, transformers).  Kept across
    runs: made once when `out` holds no GGUF."""
    out = Path(out)
    if len(list(out.glob("*.gguf"))) >= 4:
        return out
    sys.path.insert(0, str(TESTS))
    import tempfile

    import fixtures
    from _vae_gguf import make_reference
    from conftest import SYNTH_VAE

    from acestep_ggml.convert import convert

    models = fixtures.build_models(seed, vae=SYNTH_VAE)
    models.vae.load_state_dict(make_reference(SYNTH_VAE, seed).state_dict())
    with tempfile.TemporaryDirectory() as tmp:
        tok = Path(tmp) / "tok"
        fixtures.write_lm_tokenizer(tok)
        root = fixtures.save_original(models, Path(tmp) / "checkpoints", tok)
        out.mkdir(parents=True, exist_ok=True)
        convert(root, out, dtype="f32", quiet=True)
    return out


def files_by_kind(folder: Path) -> dict[str, Path]:
    """{architecture: path} of a folder of GGUFs."""
    from acestep_ggml import _core

    return {_core.GGUFFile(str(p)).architecture: p for p in sorted(Path(folder).glob("*.gguf"))}


def exchange_dir(root: Path) -> Path:
    """An exchange directory synth reads: a caption, 10 s."""
    d = root / "exchange"
    if not d.exists():
        d.mkdir(parents=True)
        (d / "caption").write_text(CAPTION)
        (d / "duration").write_text("10")
    return d


def child_env(env: dict | None = None) -> dict:
    """The environment of a fuzzed process: this one's, offline, with the acestep_ggml that this
    process imported (its folder first on PYTHONPATH, absolute: children may run elsewhere)."""
    import acestep_ggml

    paths = [str(Path(acestep_ggml.__file__).resolve().parent.parent), str(TESTS)]
    paths += [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {}), "PYTHONPATH": os.pathsep.join(paths)}


@dataclass
class Outcome:
    """One run: `ok` for success or a clean `error: ...` with exit 2; else a finding."""

    kind: str  # ok-success, ok-error, signal, hang, traceback, exit
    returncode: int | None
    seconds: float
    error_line: str
    tail: str

    @property
    def ok(self) -> bool:
        return self.kind.startswith("ok")


def run_cli(args: list[str], timeout: float, env: dict | None = None) -> Outcome:
    """`python -m acestep_ggml *args` in its own process group, killed whole at the timeout."""
    env = child_env(env)
    t0 = time.monotonic()
    p = subprocess.Popen(
        [sys.executable, "-m", "acestep_ggml", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        env=env,
        start_new_session=True,
    )
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        return Outcome("hang", None, time.monotonic() - t0, "", err[-2000:])
    dt = time.monotonic() - t0
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    if p.returncode < 0:
        kind = "signal"
    elif "Traceback (most recent call last)" in err:
        kind = "traceback"
    elif p.returncode == 0:
        kind = "ok-success"
    elif p.returncode == 2 and len(lines) == 1:
        kind = "ok-error"
    else:
        kind = "exit"  # a non-zero exit without our one error line (a C++ abort caught by Python, ...)
    return Outcome(kind, p.returncode, dt, lines[0] if lines else "", err[-2000:])


def save_finding(target: str, case: dict, outcome: Outcome) -> Path:
    """Keeps a found case as tests/fuzz/corpus/<target>-<n>.json (replayed by tests/test_fuzz_*.py)."""
    CORPUS.mkdir(exist_ok=True)
    n = len(list(CORPUS.glob(f"{target}-*.json")))
    path = CORPUS / f"{target}-{n:03d}.json"
    path.write_text(json.dumps({"case": case, "found": asdict(outcome)}, indent=1, default=str) + "\n")
    return path
