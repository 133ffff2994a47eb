"""VAE decode of 30 s of audio (750 latent frames) at the real ACE-Step configuration, random weights:
ours (F32 and BF16 files, tiled with the default options) against PyTorch fp32 and bf16.

Each variant runs in its own subprocess so that its peak RSS (VmHWM) is its own.
Usage: PYTHONPATH=src python benchmarks/bench_vae.py [--frames 750] [--variants ggml-f32,ggml-bf16,torch-fp32,torch-bf16]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def run_variant(variant: str, gguf_dir: str, frames: int, chunk: int | None, overlap: int | None) -> dict:
    import numpy as np

    z = np.random.default_rng(0).standard_normal((1, frames, 64)).astype(np.float32)
    if variant.startswith("ggml"):
        import acestep_ggml as A

        kind = variant.split("-")[1]
        t0 = time.perf_counter()
        vae = A.VAE(os.path.join(gguf_dir, f"{kind}.gguf"))
        load = time.perf_counter() - t0
        opts = {k: v for k, v in (("chunk", chunk), ("overlap", overlap)) if v is not None}
        c0, t0 = time.process_time(), time.perf_counter()
        audio = vae.decode(z, **opts)
    else:
        import torch
        from _vae_gguf import FULL, make_reference

        dtype = torch.bfloat16 if variant == "torch-bf16" else torch.float32
        t0 = time.perf_counter()
        model = make_reference(FULL, 0).to(dtype)
        load = time.perf_counter() - t0
        c0, t0 = time.process_time(), time.perf_counter()
        with torch.no_grad():
            audio = model.decode(torch.from_numpy(z).transpose(1, 2).to(dtype)).sample.float().numpy()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert audio.shape[-1] == frames * 1920 and np.all(np.isfinite(audio))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2**20  # KiB -> GiB
    return {"variant": variant, "wall_s": wall, "cpu_s": cpu, "load_s": load, "peak_gib": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=750)
    ap.add_argument("--variants", default="ggml-f32,ggml-bf16,torch-fp32,torch-bf16")
    ap.add_argument("--chunk", type=int, default=None, help="ours: tile chunk in frames (default: the library's)")
    ap.add_argument("--overlap", type=int, default=None)
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._child:
        print(json.dumps(run_variant(args._child, args._dir, args.frames, args.chunk, args.overlap)))
        return

    variants = args.variants.split(",")
    with tempfile.TemporaryDirectory() as d:
        if any(v.startswith("ggml") for v in variants):
            from _vae_gguf import FULL, make_reference, write_gguf

            model = make_reference(FULL, 0)
            write_gguf(model, os.path.join(d, "f32.gguf"), "f32")
            write_gguf(model, os.path.join(d, "bf16.gguf"), "bf16")
            del model
        results = []
        for v in variants:
            cmd = [sys.executable, __file__, "--_child", v, "--_dir", d, "--frames", str(args.frames)]
            for k in ("chunk", "overlap"):
                if getattr(args, k) is not None:
                    cmd += [f"--{k}", str(getattr(args, k))]
            out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
            if out.returncode:
                sys.exit(f"{v} failed:\n{out.stderr}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(r)
            print(f"{v:12s} {r['wall_s']:7.2f} s  CPU {r['cpu_s']:7.2f} s  peak RSS {r['peak_gib']:5.2f} GiB  "
                  f"(load {r['load_s']:.1f} s)", flush=True)
    # CPU seconds are printed too: on a shared machine they track the work done
    # when wall time mostly tracks the neighbours.
    print(f"\n{args.frames} frames = {args.frames * 1920 / 48000:.1f} s of audio, {os.cpu_count()} threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    base = {r["variant"]: r for r in results}
    for r in results:
        ratios = "  ".join(f"{base[t]['wall_s'] / r['wall_s']:.2f}x wall, {base[t]['cpu_s'] / r['cpu_s']:.2f}x CPU vs {t}"
                           for t in ("torch-fp32", "torch-bf16") if t in base)
        print(f"{r['variant']:12s} {r['wall_s']:7.2f} s  CPU {r['cpu_s']:7.2f} s  {r['peak_gib']:5.2f} GiB  {ratios}")


if __name__ == "__main__":
    main()
