"""The DiT stage of a batch: songs per hour of ``DiT.sample`` over N items in one graph per step
(issue #23), at a real size (a random 2B turbo DiT GGUF, e.g. one bench_dit.py or bench_quant.py
made) for a song of --seconds, 8 turbo steps (B = N, unguided).

    python benchmarks/bench_dit_batch.py DIT.gguf [--seconds 30] [--batch-sizes 1,2,4] [--threads 2]
                                         [--steps 8] [--timed-steps 2]

Each N runs in its own process: conditions set once, then --timed-steps steps after a first
(graph-building) one (--no-warmup: none); the song's DiT time is set_conditions + steps x the mean step.  Peak RSS of
that process is printed beside it.  Text encoder, condition encoder, VAE and LM are not in it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import cpu_summary, peak_gib  # noqa: E402 (after the path setup)

ENCODER_TOKENS = 300  # a caption prompt plus lyrics, about what the condition encoder gives


def child(args) -> dict:
    import numpy as np

    from acestep_ggml import _core
    from acestep_ggml.models import DiT

    n, frames = args.n, int(args.seconds * 25)
    dit = DiT(_core.GGUFFile(args.dit), n_threads=args.threads)
    m = dit._m
    rng = np.random.default_rng(0)
    enc = rng.standard_normal((n, ENCODER_TOKENS, dit.config["encoder_hidden_size"] if "encoder_hidden_size" in
                                dit.config else 2048), dtype=np.float32)
    src = rng.standard_normal((n, frames, 64), dtype=np.float32)
    x = rng.standard_normal((n, frames, 64), dtype=np.float32)
    t0 = time.perf_counter()
    m.set_conditions(enc, src, np.ones_like(src))
    t_cond = time.perf_counter() - t0
    if args.warmup:
        m.step(x, np.full(n, 1.0, dtype=np.float32))  # builds and allocates the step graph
    t0 = time.perf_counter()
    for i in range(args.timed_steps):
        m.step(x, np.full(n, 0.9 - 0.1 * i, dtype=np.float32))
    step = (time.perf_counter() - t0) / args.timed_steps
    return {"cond": t_cond, "step": step, "song": t_cond + args.steps * step, "peak": peak_gib()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dit")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--batch-sizes", default="1,2,4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--timed-steps", type=int, default=2)
    ap.add_argument("--no-warmup", dest="warmup", action="store_false",
                    help="time the first step too (its graph build takes milliseconds; saves a step per N)")
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.n:
        print(json.dumps(child(args)))
        return
    print(cpu_summary(args.threads), flush=True)
    print(f"DiT stage, {args.seconds:g} s song ({int(args.seconds * 25)} latent frames), {args.steps} steps, "
          f"{ENCODER_TOKENS} encoder tokens, {args.threads} threads")
    print(f"{'N':>3}{'conditions s':>14}{'step s':>10}{'DiT s/batch':>13}{'songs/hour':>12}{'peak GiB':>10}")
    for n in (int(b) for b in args.batch_sizes.split(",")):
        out = subprocess.run([sys.executable, __file__, args.dit, "--n", str(n), "--seconds", str(args.seconds),
                              "--threads", str(args.threads), "--steps", str(args.steps),
                              "--timed-steps", str(args.timed_steps), *([] if args.warmup else ["--no-warmup"])],
                             capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"N = {n} failed:\n{out.stderr[-3000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{n:>3}{r['cond']:>14.2f}{r['step']:>10.2f}{r['song']:>13.1f}{3600 * n / r['song']:>12.1f}"
              f"{r['peak']:>10.2f}", flush=True)
    print(cpu_summary(args.threads))


if __name__ == "__main__":
    main()
