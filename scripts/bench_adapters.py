"""Speed and memory of adapters on a DiT of real width (hidden 2048, intermediate 6144, 16/8
heads of 128) with fewer layers: a step without adapters, with run-time LoRA / LoKr, and
the merge at load.  Per-layer costs scale to the 24 layers of the 2B DiT.

    PYTHONPATH=src:tests python3 scripts/bench_adapters.py [--layers 2] [--threads 2] [--frames 250]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _dit_gguf import tiny_dit, write_dit_gguf
from safetensors.torch import save_file

import acestep_ggml
from acestep_ggml.adapters import Applied, load_adapter

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]


def lora_folder(targets, folder: Path, r: int, modules):
    folder.mkdir()
    tensors = {}
    g = torch.Generator().manual_seed(0)
    for name, (out, inp) in targets.items():
        path = name[len("decoder."):-len(".weight")]
        if path.split(".")[-1] in modules:
            tensors[f"base_model.model.{path}.lora_A.weight"] = torch.randn(r, inp, generator=g) * 0.01
            tensors[f"base_model.model.{path}.lora_B.weight"] = torch.randn(out, r, generator=g) * 0.01
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": 2 * r,
                                                            "target_modules": modules}))


def lokr_file(targets, path: Path):
    """Upstream's LoKr defaults: every Linear, both factors full (dim 64, factor -1)."""
    tensors = {}
    g = torch.Generator().manual_seed(0)
    for name, (out, inp) in targets.items():
        def pair(n):
            a = max(d for d in range(1, int(n ** 0.5) + 1) if n % d == 0)
            return a, n // a
        (a, c), (b, d) = pair(out), pair(inp)
        stem = "lycoris_" + name[len("decoder."):-len(".weight")].replace(".", "_")
        tensors[stem + ".lokr_w1"] = torch.randn(a, b, generator=g) * 0.01
        tensors[stem + ".lokr_w2"] = torch.randn(c, d, generator=g) * 0.01
        tensors[stem + ".alpha"] = torch.tensor(64.0)
    save_file(tensors, str(path))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=250)
    ap.add_argument("--dtype", default="bf16")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    model = tiny_dit(0, hidden_size=2048, intermediate_size=6144, num_hidden_layers=args.layers,
                     num_attention_heads=16, num_key_value_heads=8, head_dim=128, sliding_window=128)
    gguf = tmp / "dit.gguf"
    write_dit_gguf(model, str(gguf), weight_type=args.dtype, quantize=acestep_ggml._core.quantize)
    del model
    rng = np.random.default_rng(0)
    T, S = args.frames, 64
    x, src = rng.standard_normal((2, T, 64), dtype=np.float32), rng.standard_normal((2, T, 64), dtype=np.float32)
    mask, enc = np.ones((2, T, 64), np.float32), rng.standard_normal((2, S, 2048), dtype=np.float32)
    t = np.array([0.5, 0.5], np.float32)

    def step_time(dit, n=3):
        dit._m.set_conditions(enc, src, mask)
        dit._m.step(x, t)  # builds the graph
        t0 = time.perf_counter()
        for _ in range(n):
            dit._m.step(x, t)
        return (time.perf_counter() - t0) / n

    dit = acestep_ggml.DiT(gguf, n_threads=args.threads)
    targets = {n: tuple(s) for n, s in dit._m.adaptable()}
    lora_folder(targets, tmp / "lora16", 16, ATTN)
    lora_folder(targets, tmp / "lora64", 64, ATTN + ["gate_proj", "up_proj", "down_proj"])
    lokr_file(targets, tmp / "lokr.safetensors")
    rows = {"base": (step_time(dit), 0.0, 0)}
    for label, path in [("LoRA r16 q/k/v/o", tmp / "lora16"), ("LoRA r64 attn+MLP", tmp / "lora64"),
                        ("LoKr full factors, every Linear", tmp / "lokr.safetensors")]:
        adapter = load_adapter(path, targets)
        for mode in ("merge", "runtime"):
            applied = Applied(dit._m, mode)
            t0 = time.perf_counter()
            applied.set([(adapter, 1.0)])
            apply_s = time.perf_counter() - t0
            rows[f"{label}, {mode}"] = (step_time(dit), apply_s, dit._m.adapter_bytes)
            applied.set([])
    print(f"{args.layers} layers of the 2B DiT's width, {args.dtype} file, {T} frames, batch 2, {args.threads} threads")
    print("| case | step s | apply s | adapter MiB on device |")
    for k, (s, a, b) in rows.items():
        print(f"| {k} | {s:.3f} | {a:.2f} | {b / 2**20:.1f} |")


if __name__ == "__main__":
    main()
