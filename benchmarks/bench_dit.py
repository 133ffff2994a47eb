"""One DiT forward at the real size (random weights): ours with BF16 / F16 / Q8_0 weight files
(and ``int8``: the BF16 file with ACESTEP_GGML_INT8=1, int8 matmuls on AVX-512 VNNI) against
PyTorch fp32 and bf16, in one run.  Prints time, throughput, peak memory and accuracy
against PyTorch fp32.

Each measurement runs in its own subprocess so that its peak RSS is its own.

    PYTHONPATH=src python benchmarks/bench_dit.py [--frames 750] [--enc 200] [--types bf16,f16,q8_0]
    PYTHONPATH=src python benchmarks/bench_dit.py --baseline OLD --rounds 2 --torch ""

--baseline OLD also times another build of the package (a folder holding its ``acestep_ggml``), its
runs interleaved with this build's, ``--rounds`` times each, on the same files and inputs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

REAL = dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=24, num_attention_heads=16,
            num_key_value_heads=8, head_dim=128, in_channels=192, audio_acoustic_hidden_dim=64, patch_size=2,
            rope_theta=1000000.0, rms_norm_eps=1e-6, sliding_window=128)


def _model(seed):
    import torch
    from _dit_gguf import tiny_dit
    torch.set_num_threads(os.cpu_count())
    return tiny_dit(seed, **REAL)


def _peak_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _flops(frames, enc):
    # Matmul FLOPs: every weight sees the N = frames / 2 tokens, except the cross-attention K/V
    # projections (encoder tokens); attention scores and mixing on top.
    c = REAL
    H, Im, L, D = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["head_dim"]
    hq, hk = c["num_attention_heads"] * D, c["num_key_value_heads"] * D
    n = (frames + 1) // 2
    per_layer = 2 * n * (2 * (H * hq + hq * H) + H * hk * 2 + 3 * H * Im) + 2 * enc * (2 * H * hk)
    attn = 4 * hq * n * (min(n, 2 * c["sliding_window"] + 1) + n) / 2 + 4 * hq * n * enc
    return L * (per_layer + attn)


def phase_write(args):
    from _dit_gguf import write_dit_gguf

    import acestep_ggml
    model = _model(args.seed)
    rng = np.random.default_rng(args.seed)
    np.savez(os.path.join(args.dir, "inputs.npz"), x=rng.standard_normal((1, args.frames, 64), dtype=np.float32),
             src=rng.standard_normal((1, args.frames, 64), dtype=np.float32),
             enc=rng.standard_normal((1, args.enc, 2048), dtype=np.float32), t=np.array([0.75], np.float32))
    for ty in sorted({_file_type(ty) for ty in args.types.split(",")}):
        write_dit_gguf(model, os.path.join(args.dir, f"dit-{ty}.gguf"), weight_type=ty,
                       quantize=acestep_ggml._core.quantize)
    return {}


def _file_type(ty):
    """The weight file a measured type runs from: int8 packs the BF16 file's weights at load."""
    return "bf16" if ty == "int8" else ty


def phase_torch(args):
    import torch
    model = _model(args.seed)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = model.to(dtype)
    d = np.load(os.path.join(args.dir, "inputs.npz"))
    x, src, enc, t = (torch.from_numpy(d[k]).to(dtype) for k in ("x", "src", "enc", "t"))
    ctx = torch.cat([src, torch.ones_like(src)], dim=-1)
    times = []
    with torch.no_grad():
        for _ in range(args.repeats + 1):
            t0 = time.perf_counter()
            v = model(x, t, t, enc, ctx, return_dict=False)[0]
            times.append(time.perf_counter() - t0)
    out = v.float().numpy()
    np.save(os.path.join(args.dir, f"out-torch-{args.dtype}.npy"), out)
    return {"first_s": times[0], "times_s": times[1:]}


def phase_ggml(args):
    import acestep_ggml
    t0 = time.perf_counter()
    dit = acestep_ggml.DiT(os.path.join(args.dir, f"dit-{_file_type(args.dtype)}.gguf"))
    load_s = time.perf_counter() - t0
    d = np.load(os.path.join(args.dir, "inputs.npz"))
    times = []
    for _ in range(args.repeats + 1):  # the first call also builds and allocates the graph
        t0 = time.perf_counter()
        v = dit.forward(d["x"], d["t"], d["enc"], d["src"])
        times.append(time.perf_counter() - t0)
    np.save(os.path.join(args.dir, f"out-ggml-{args.dtype}.npy"), v)
    return {"load_s": load_s, "first_s": times[0], "times_s": times[1:], "weight_gib": dit._m.weight_bytes / 2**30}


def _run(args, phase, dtype="", pythonpath=None):
    env = dict(os.environ)
    if phase == "ggml":
        env["ACESTEP_GGML_INT8"] = "1" if dtype == "int8" else "0"
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath] + [p for p in [env.get("PYTHONPATH")] if p])
    cmd = [sys.executable, __file__, "--phase", phase, "--dtype", dtype, "--dir", args.dir,
           "--frames", str(args.frames), "--enc", str(args.enc), "--types", args.types,
           "--repeats", str(args.repeats), "--seed", str(args.seed)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=750, help="latent frames (25 per second)")
    p.add_argument("--enc", type=int, default=200, help="encoder tokens")
    p.add_argument("--types", default="bf16,f16,q8_0", help="our weight types to measure")
    p.add_argument("--torch", default="fp32,bf16",
                   help="PyTorch dtypes to measure (bf16 takes many minutes on CPUs without native BF16)")
    p.add_argument("--repeats", type=int, default=2, help="timed forwards after the first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phase", default="", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="", help=argparse.SUPPRESS)
    p.add_argument("--dir", default="", help="where the GGUFs and outputs go (default: a temporary folder)")
    p.add_argument("--baseline", default="", help="a folder holding another build's acestep_ggml, timed interleaved")
    p.add_argument("--rounds", type=int, default=1, help="runs of each of our builds (interleaved with --baseline)")
    args = p.parse_args()

    if args.phase:
        res = {"write": phase_write, "torch": phase_torch, "ggml": phase_ggml}[args.phase](args)
        res["peak_gib"] = _peak_gib()
        print(json.dumps(res))
        return

    tmp = None
    if not args.dir:
        tmp = tempfile.TemporaryDirectory(prefix="bench_dit_")
        args.dir = tmp.name
    print(f"DiT forward: {args.frames} latent frames ({(args.frames + 1) // 2} tokens), {args.enc} encoder tokens, "
          f"{os.cpu_count()} threads, {_flops(args.frames, args.enc) / 1e12:.2f} TFLOP")
    _run(args, "write")
    results = {}
    torch_types = [t for t in args.torch.split(",") if t]
    if "fp32" not in torch_types and not args.baseline:
        torch_types.insert(0, "fp32")  # the accuracy reference
    for dt in torch_types:
        results[f"torch {dt}"] = (_run(args, "torch", dt), f"out-torch-{dt}.npy")
    builds = ([("@base", os.path.abspath(args.baseline))] if args.baseline else []) + [("", None)]
    for _ in range(args.rounds):
        for ty in args.types.split(","):
            for suffix, path in builds:
                r = _run(args, "ggml", ty, path)
                name = f"ggml {ty}{suffix}"
                if name in results:  # keep every round's times and the highest peak
                    old = results[name][0]
                    r = {**r, "times_s": old["times_s"] + r["times_s"], "peak_gib": max(old["peak_gib"], r["peak_gib"])}
                results[name] = (r, f"out-ggml-{ty}.npy")

    ref_file = os.path.join(args.dir, "out-torch-fp32.npy")
    ref = np.load(ref_file).astype(np.float64).ravel() if os.path.exists(ref_file) else None
    base_name = "torch bf16" if "torch bf16" in results else "torch fp32" if "torch fp32" in results else next(iter(results))
    base = min(results[base_name][0]["times_s"])
    flops = _flops(args.frames, args.enc)
    print(f"{'run':<12} {'best s':>8} {'first s':>8} {'GFLOP/s':>8} {'vs ' + base_name:>14} {'peak GiB':>9} "
          f"{'cos vs fp32':>12} {'rel L2':>9}")
    for name, (r, out) in results.items():
        o = np.load(os.path.join(args.dir, out)).astype(np.float64).ravel()
        cos = o @ ref / (np.linalg.norm(o) * np.linalg.norm(ref)) if ref is not None else float("nan")
        rel = np.linalg.norm(o - ref) / np.linalg.norm(ref) if ref is not None else float("nan")
        best = min(r["times_s"])
        print(f"{name:<12} {best:8.2f} {r['first_s']:8.2f} {flops / best / 1e9:8.0f} {base / best:13.2f}x "
              f"{r['peak_gib']:9.2f} {cos:12.6f} {rel:9.2e}")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
