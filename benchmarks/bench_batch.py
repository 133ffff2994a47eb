"""Rows per hour of `batch`: one table rendered in this process (one worker with all cores, then
with one thread) and on a Ray cluster (``--workers`` workers, the cores shared out), each timed
from the call to its end, so model loads, the cluster connection and the workers' start are in it.

    pip install ".[ray]"                   # and the test extras for --tiny: pip install ".[test]"
    python benchmarks/bench_batch.py --tiny [--rows 12] [--seconds 30] [--no-lm] [--workers 2]
    python benchmarks/bench_batch.py --models DIR [--address ADDR] ...

--tiny renders with the tests' tiny models, made in a temporary folder by a child process: one
that has loaded torch has its OpenMP wait policy fixed (active spinning) before acestep_ggml can
make it passive, and two ggml threads spinning on a loaded machine are many times slower.
--models takes a folder of GGUFs.  Without --address a private Ray cluster with this machine's
cores is started on loopback and stopped at the end (tests/_ray_cluster.py).  Rows run the LM
unless --no-lm.  --repeat runs the three in turn that many times, against drifting load.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)

from _common import cpu_summary  # noqa: E402 (after the path setup)


def make_tiny_models(folder: Path) -> Path:
    """The tests' whole-pipeline tiny models (conftest.synth_models), as F32 GGUFs."""
    import conftest
    import fixtures
    from _vae_gguf import make_reference

    from acestep_ggml.convert import convert

    fixtures.write_lm_tokenizer(folder / "tokenizer")
    models = fixtures.build_models(0, vae=conftest.SYNTH_VAE)
    models.vae.load_state_dict(make_reference(conftest.SYNTH_VAE, 0).state_dict())
    fixtures.save_original(models, folder / "checkpoints", folder / "tokenizer")
    convert(folder / "checkpoints", folder / "gguf", dtype="f32", quiet=True)
    return folder / "gguf"


def made_tiny_models(folder: Path) -> Path:
    subprocess.run([sys.executable, __file__, "--make-tiny", str(folder)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return folder / "gguf"


def timed(label: str, table: Path, models: Path, out: Path, rows: int, **kwargs) -> None:
    from acestep_ggml.batch import render_table

    start = time.perf_counter()
    result = render_table(table, models, out, quiet=True, **kwargs)
    wall = time.perf_counter() - start
    assert result.rendered == rows and not result.failed, result.failed
    per_row = sorted(r["seconds"] for r in result.records)
    print(f"{label:<34}{wall:9.1f} s{3600 * rows / wall:11.0f} rows/h   median row {per_row[len(per_row) // 2]:.2f} s",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--tiny", action="store_true", help="the tests' tiny models")
    src.add_argument("--models", type=Path, help="a folder of GGUFs")
    src.add_argument("--make-tiny", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--seconds", type=int, default=30, help="song length")
    ap.add_argument("--no-lm", action="store_true", help="rows without the LM")
    ap.add_argument("--workers", type=int, default=2, help="Ray workers (default 2)")
    ap.add_argument("--address", help="a running Ray cluster (default: a private one started here)")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    if args.make_tiny:
        make_tiny_models(args.make_tiny)
        return
    cores = os.cpu_count()
    work = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    cluster = None
    try:
        models = made_tiny_models(work) if args.tiny else args.models
        table = work / "songs.jsonl"
        table.write_text("".join(json.dumps({"id": f"song{i}", "caption": "lofi piano with soft drums",
                                             "duration": args.seconds, "bpm": 90, "keyscale": "C major",
                                             "timesignature": 4, "language": "en", "seed": i,
                                             "use_lm": not args.no_lm}) + "\n" for i in range(args.rows)))
        print(cpu_summary(cores), flush=True)
        print(f"{args.rows} rows of {args.seconds} s, {'no LM' if args.no_lm else 'with the LM'}, "
              f"{'tiny models' if args.tiny else models}", flush=True)
        address = args.address
        if address is None:
            from _ray_cluster import LocalCluster

            cluster = LocalCluster(head_cpus=cores)
            address = cluster.address
        cpus = max(1, cores // args.workers)
        one = work / "one.jsonl"
        one.write_text(table.read_text().splitlines()[0] + "\n")
        timed("Ray, the first row alone (fixed cost)", one, models, work / "first", 1, ray=True, address=address,
              workers=args.workers, cpus_per_worker=cpus)
        for i in range(args.repeat):
            timed(f"in this process, {cores} threads", table, models, work / f"here{i}", args.rows)
            timed("in this process, 1 thread", table, models, work / f"one{i}", args.rows, n_threads=1)
            timed(f"Ray, {args.workers} workers x {cpus} threads", table, models, work / f"ray{i}", args.rows,
                  ray=True, address=address, workers=args.workers, cpus_per_worker=cpus)
        print(cpu_summary(cores))
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
