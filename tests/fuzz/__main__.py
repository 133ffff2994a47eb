"""The fuzzers' command line (docs/hardening.md):

    PYTHONPATH=src:tests python -m fuzz hparams --cases 60 [--seed N] [--models DIR] [--save]
    PYTHONPATH=src:tests python -m fuzz bytes --cases 200
    PYTHONPATH=src:tests python -m fuzz inputs --cases 2000      (exchange, audio, server requests, adapters)

ACESTEP_FUZZ_SEED=N replays a run (as --seed N).  --models: a folder of tiny GGUFs of every kind,
made there with torch when it holds none (default ~/.cache/acestep-ggml/fuzz-models).  Prints one
line per case and a summary; exit 1 when anything was found (--save keeps each found case in
tests/fuzz/corpus/, which tests/test_fuzz_*.py replay)."""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

from .common import build_tiny_models, files_by_kind, fuzz_seed, save_finding


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fuzz")
    p.add_argument("target", choices=["hparams", "bytes", "inputs"])
    p.add_argument("--cases", type=int, default=60)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--models", type=Path, default=Path.home() / ".cache/acestep-ggml/fuzz-models")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds a CLI run may take before it is a hang")
    p.add_argument("--save", action="store_true", help="keep found cases in tests/fuzz/corpus/")
    p.add_argument("--only", default=None, help="hparams/bytes: one model kind (acestep-dit, ...)")
    args = p.parse_args(argv)
    seed = fuzz_seed(args.target, args.seed)
    t0 = time.monotonic()
    counts: collections.Counter = collections.Counter()
    found = []
    if args.target == "inputs":
        from .inputs import run_all

        results = run_all(seed, args.cases, args.models)
        for name, n in results.items():
            print(f"{name}: {n} cases, 0 findings")
        return 0
    models = build_tiny_models(args.models)
    files = files_by_kind(models)
    if args.only:
        files = {args.only: files[args.only]}
    if args.target == "hparams":
        from .hparams import cases, run_case

        todo = cases(seed, args.cases, files)
    else:
        from .bytes import cases, run_case

        todo = cases(seed, args.cases, files)
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{args.target}-") as tmp:
        for i, case in todo:
            out = run_case(case, models, Path(tmp), args.timeout)
            counts[out.kind] += 1
            line = out.error_line[:150] if out.ok else out.tail[-600:]
            print(f"[{i}] {out.kind} {out.seconds:.1f}s {json.dumps(case, default=str)[:300]}\n    {line}", flush=True)
            if not out.ok:
                found.append((case, out))
                if args.save:
                    print(f"    saved {save_finding(args.target, case, out)}")
    if args.target == "bytes":
        from .bytes import close

        close()
    print(
        f"{args.target}: {sum(counts.values())} cases in {time.monotonic() - t0:.0f} s, seed {seed}: "
        f"{dict(counts)}; findings: {len(found)}"
    )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
