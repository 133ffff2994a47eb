"""The portable build against the native one, interleaved in one run: VAE decode (bench_vae.py's
measurement) and one DiT forward (bench_dit.py's), real sizes, random weights, each run in its
own process.  "native" is this checkout's dev build (scripts/dev_build.sh: ggml and our kernels
-march=native, PYTHONPATH=src); "portable" is an installed wheel, every CPU variant, chosen at
import: give its Python (a venv made with --system-site-packages, so that the benchmarks' torch
reference models are found).

    python benchmarks/bench_wheel.py --portable /tmp/venv/bin/python [--rounds 3] [--vae-frames 250]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "src")
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def build_env(name: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if name == "native":
        env["PYTHONPATH"] = os.path.abspath(SRC)
    return env


def last_json(cmd: list, env: dict) -> dict:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--portable", required=True, help="the Python of an environment with the wheel installed")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vae-frames", type=int, default=250)
    ap.add_argument("--dit-frames", type=int, default=750)
    ap.add_argument("--dtype", default="bf16", help="weight type of both files")
    args = ap.parse_args()
    pythons = {"native": sys.executable, "portable": args.portable}
    describe = ("import json, acestep_ggml as A; i = A._core.build_info(); print(json.dumps("
                "{'file': A.__file__, 'variant': i['cpu_variant'], 'features': sorted(i['cpu_features'])}))")
    for name, py in pythons.items():
        info = last_json([py, "-c", describe], build_env(name))
        print(f"{name:9s} {info['file']}\n          cpu variant {info['variant']}: {' '.join(info['features'])}")

    with tempfile.TemporaryDirectory(prefix="bench_wheel_") as d:
        from _vae_gguf import FULL, make_reference, write_gguf

        write_gguf(make_reference(FULL, 0), os.path.join(d, f"{args.dtype}.gguf"), args.dtype)
        dit = [os.path.join(HERE, "bench_dit.py"), "--dir", d, "--frames", str(args.dit_frames), "--types",
               args.dtype, "--repeats", "1", "--seed", "0"]
        subprocess.run([sys.executable, *dit, "--phase", "write"], check=True, capture_output=True,
                       env=build_env("native"))
        times = {(stage, name): [] for stage in ("vae", "dit") for name in pythons}
        for r in range(args.rounds):
            for name, py in pythons.items():  # interleaved: both builds see the same neighbours
                vae = last_json([py, os.path.join(HERE, "bench_vae.py"), "--_child", f"ggml-{args.dtype}", "--_dir", d,
                                 "--frames", str(args.vae_frames)], build_env(name))
                times["vae", name].append(vae["wall_s"])
                fwd = last_json([py, *dit, "--phase", "ggml", "--dtype", args.dtype], build_env(name))
                times["dit", name].append(min(fwd["times_s"]))
                print(f"round {r + 1} {name:9s} VAE decode {vae['wall_s']:7.2f} s (CPU {vae['cpu_s']:.1f} s)   "
                      f"DiT forward {min(fwd['times_s']):6.2f} s   load average {os.getloadavg()[0]:.1f}", flush=True)
    print(f"\n{os.cpu_count()} threads; VAE {args.vae_frames} frames, DiT {args.dit_frames} frames, {args.dtype} weights")
    for stage in ("vae", "dit"):
        med = {n: statistics.median(times[stage, n]) for n in pythons}
        spread = {n: (min(times[stage, n]), max(times[stage, n])) for n in pythons}
        print(f"{stage.upper():4s} " + "   ".join(f"{n} median {med[n]:.2f} s ({spread[n][0]:.2f}-{spread[n][1]:.2f})"
                                                for n in pythons)
              + f"   portable/native {med['portable'] / med['native']:.3f}")


if __name__ == "__main__":
    main()
