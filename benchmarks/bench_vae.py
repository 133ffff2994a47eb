"""VAE decode of 30 s of audio (750 latent frames) at the real ACE-Step configuration, random weights:
ours (F32 and BF16 files, tiled with the default options) against PyTorch fp32 and bf16.  With
--encode, the encode of as much audio (frames * 1920 samples) instead.

Each variant runs in its own subprocess so that its peak RSS (VmHWM) is its own.  A variant
suffixed ``@base`` runs another build of the package, named by --baseline (a folder holding
``acestep_ggml``, e.g. an older checkout's src/), with that build's default tiling: list the two
alternately to compare before and after under the same load.
Usage: PYTHONPATH=src python benchmarks/bench_vae.py [--frames 750] [--encode] [--variants ggml-f32,ggml-bf16,torch-bf16]
       PYTHONPATH=src python benchmarks/bench_vae.py --baseline OLD --variants ggml-bf16@base,ggml-bf16,ggml-bf16@base,ggml-bf16
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
sys.path.insert(0, HERE)

from _common import cpu_summary, peak_gib  # noqa: E402 (after the path setup)


def run_variant(variant: str, gguf_dir: str, frames: int, chunk: int | None, overlap: int | None,
                encode: bool = False) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    if encode:
        x = (0.5 * rng.standard_normal((1, 2, frames * 1920))).astype(np.float32)
    else:
        x = rng.standard_normal((1, frames, 64)).astype(np.float32)
    if variant.startswith("ggml"):
        import acestep_ggml as A

        kind = variant.split("@")[0].split("-")[1]
        t0 = time.perf_counter()
        vae = A.VAE(os.path.join(gguf_dir, f"{kind}.gguf"))
        load = time.perf_counter() - t0
        opts = {k: v for k, v in (("chunk", chunk), ("overlap", overlap)) if v is not None}
        c0, t0 = time.process_time(), time.perf_counter()
        out = vae.encode(x, **opts) if encode else vae.decode(x, **opts)
    else:
        import torch
        from _vae_gguf import FULL, make_reference

        dtype = torch.bfloat16 if variant == "torch-bf16" else torch.float32
        t0 = time.perf_counter()
        model = make_reference(FULL, 0).to(dtype)
        load = time.perf_counter() - t0
        c0, t0 = time.process_time(), time.perf_counter()
        with torch.no_grad():
            if encode:
                out = model.encode(torch.from_numpy(x).to(dtype)).latent_dist.mean.float().transpose(1, 2).numpy()
            else:
                out = model.decode(torch.from_numpy(x).transpose(1, 2).to(dtype)).sample.float().numpy()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert (out.shape[1] == frames if encode else out.shape[-1] == frames * 1920) and np.all(np.isfinite(out))
    return {"variant": variant, "wall_s": wall, "cpu_s": cpu, "load_s": load, "peak_gib": peak_gib()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=750)
    ap.add_argument("--variants", default="ggml-f32,ggml-bf16,torch-fp32,torch-bf16")
    ap.add_argument("--chunk", type=int, default=None, help="ours: tile chunk in frames (default: the library's)")
    ap.add_argument("--overlap", type=int, default=None)
    ap.add_argument("--encode", action="store_true", help="time the encode of frames * 1920 samples instead")
    ap.add_argument("--baseline", default=None, help="folder with another build of acestep_ggml, for VARIANT@base")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._child:
        print(json.dumps(run_variant(args._child, args._dir, args.frames, args.chunk, args.overlap, args.encode)))
        return

    variants = args.variants.split(",")
    if any(v.endswith("@base") for v in variants) and not args.baseline:
        sys.exit("variants @base need --baseline")
    print(cpu_summary(os.cpu_count()), flush=True)
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
            cmd += ["--encode"] if args.encode else []
            for k in ("chunk", "overlap"):
                if getattr(args, k) is not None:
                    cmd += [f"--{k}", str(getattr(args, k))]
            env = dict(os.environ)
            if v.endswith("@base"):
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.baseline, env.get("PYTHONPATH")]))
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode:
                sys.exit(f"{v} failed:\n{out.stderr}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(r)
            print(f"{v:15s} {r['wall_s']:7.2f} s  CPU {r['cpu_s']:7.2f} s  peak RSS {r['peak_gib']:5.2f} GiB  "
                  f"(load {r['load_s']:.1f} s; load average {os.getloadavg()[0]:.1f})", flush=True)
    # CPU seconds are printed too: on a shared machine they track the work done
    # when wall time mostly tracks the neighbours.
    print(f"\n{'encode' if args.encode else 'decode'}: {args.frames} frames = {args.frames * 1920 / 48000:.1f} s of audio, "
          f"{os.cpu_count()} threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    # Repeated variants are summed: means of wall and CPU seconds, the largest peak.
    runs: dict[str, list[dict]] = {}
    for r in results:
        runs.setdefault(r["variant"], []).append(r)
    mean = {v: {k: sum(r[k] for r in rs) / len(rs) for k in ("wall_s", "cpu_s")} | {"peak_gib": max(r["peak_gib"] for r in rs)}
            for v, rs in runs.items()}
    for v, m in mean.items():
        refs = [t for t in ("torch-fp32", "torch-bf16", f"{v}@base") if t in mean and t != v]
        ratios = "  ".join(f"{mean[t]['wall_s'] / m['wall_s']:.2f}x wall, {mean[t]['cpu_s'] / m['cpu_s']:.2f}x CPU vs {t}"
                           for t in refs)
        print(f"{v:15s} {m['wall_s']:7.2f} s  CPU {m['cpu_s']:7.2f} s  {m['peak_gib']:5.2f} GiB  "
              f"({len(runs[v])} run{'s' if len(runs[v]) > 1 else ''})  {ratios}")


if __name__ == "__main__":
    main()
