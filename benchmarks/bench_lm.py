"""5 Hz LM at the real 0.6B size (random weights): prefill of 200 tokens and guided decode
(batch of two: cond + uncond, and unguided) per token, ours (BF16, Q8_0) against transformers
(fp32, bf16) in one run, each engine in its own process for its peak memory.  Also the
memory-bandwidth bound: weight bytes read per decode step over a numpy-measured bandwidth.

    PYTHONPATH=src python benchmarks/bench_lm.py [--steps 32] [--threads N]
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

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

PROMPT, UNCOND = 200, 150


def _config():
    from transformers import Qwen3Config

    # Qwen3-0.6B's shape (tied head) over the LM's 151669 + 64000 vocabulary.
    return Qwen3Config(vocab_size=215669, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
                       tie_word_embeddings=True, max_position_embeddings=40960,
                       rope_parameters={"rope_type": "default", "rope_theta": 1e6})


def _peak_gib() -> float:
    # VmHWM starts afresh at exec; ru_maxrss would carry over the parent's peak.
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib / 2**20


def _ours(path: str, steps: int, threads: int) -> dict:
    import acestep_ggml

    t = time.perf_counter()
    lm = acestep_ggml.LM(path, n_threads=threads)
    load = time.perf_counter() - t
    rng = np.random.default_rng(0)
    code0 = lm.first_code
    res = {"load_s": load}
    # Three decode loops: guided (cond + uncond) with the whole head, guided with the head
    # cut to the 64000 audio-code rows (what the code phase runs), and unguided codes-only.
    for key, n_seq, lo, hi in (("guided_full", 2, 0, None), ("guided", 2, code0, code0 + 64000),
                               ("single", 1, code0, code0 + 64000)):
        lm.reset(n_seq, PROMPT + steps + 8)
        t = time.perf_counter()
        lm.prefill(0, rng.integers(0, 151669, PROMPT))
        res.setdefault("prefill_s", time.perf_counter() - t)
        if n_seq == 2:
            lm.prefill(1, rng.integers(0, 151669, UNCOND))
        lm.decode([1] * n_seq, lo, hi)
        t = time.perf_counter()
        for _ in range(steps):
            lm.decode([code0] * n_seq, lo, hi)
        res[key + "_ms"] = (time.perf_counter() - t) / steps * 1e3
    return res


def _torch(dtype: str, steps: int, threads: int) -> dict:
    import torch
    from transformers import Qwen3ForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    t = time.perf_counter()
    model = Qwen3ForCausalLM(_config()).to(getattr(torch, dtype)).eval()
    load = time.perf_counter() - t
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        ids = torch.from_numpy(rng.integers(0, 151669, PROMPT))[None]
        t = time.perf_counter()
        model(ids, use_cache=True)
        prefill = time.perf_counter() - t
        # Unguided decode: one sequence.
        past, tok = model(ids, use_cache=True).past_key_values, torch.full((1, 1), 151669)
        model(tok, past_key_values=past, use_cache=True)
        t = time.perf_counter()
        for _ in range(steps):
            past = model(tok, past_key_values=past, use_cache=True).past_key_values
        single = (time.perf_counter() - t) / steps
        # Guided decode as the reference runs it: cond and uncond left-padded into one batch.
        batch = torch.zeros(2, PROMPT, dtype=torch.long)
        mask = torch.ones(2, PROMPT, dtype=torch.long)
        batch[0] = ids[0]
        batch[1, PROMPT - UNCOND:] = torch.from_numpy(rng.integers(0, 151669, UNCOND))
        mask[1, :PROMPT - UNCOND] = 0
        out = model(batch, attention_mask=mask, use_cache=True)
        past, tok = out.past_key_values, torch.full((2, 1), 151669)
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
        out = model(tok, attention_mask=mask, past_key_values=past, use_cache=True)
        past = out.past_key_values
        t = time.perf_counter()
        for _ in range(steps):
            mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
            past = model(tok, attention_mask=mask, past_key_values=past, use_cache=True).past_key_values
        decode = (time.perf_counter() - t) / steps
    # transformers always computes the whole head.
    return {"load_s": load, "prefill_s": prefill, "guided_full_ms": decode * 1e3, "guided_ms": decode * 1e3,
            "single_ms": single * 1e3}


def _bandwidth_gbs() -> float:
    a = np.ones(2**28 // 4, dtype=np.float32)  # 256 MiB
    b = np.empty_like(a)
    best = 1e9
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.nbytes / best / 1e9  # read + write


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.engine:
        r = _ours(args.path, args.steps, args.threads) if args.engine == "ours" else \
            _torch(args.engine, args.steps, args.threads)
        r["peak_gib"] = _peak_gib()
        print(json.dumps(r))
        return

    import torch
    from _lm_gguf import write_lm
    from transformers import Qwen3ForCausalLM

    tmp = tempfile.mkdtemp(prefix="bench_lm_")
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(_config()).eval()
    n_params = sum(p.numel() for p in model.parameters())
    files = {}
    for dtype in ("bf16", "q8_0"):
        files[dtype] = os.path.join(tmp, f"lm-{dtype}.gguf")
        write_lm(files[dtype], model, dtype=dtype)
    del model
    runs = [(f"ours {d.upper()}", ["--engine", "ours", "--path", files[d]]) for d in files]
    runs += [(f"transformers {d}", ["--engine", d]) for d in ("float32", "bfloat16")]
    results = {}
    for name, extra in runs:
        cmd = [sys.executable, __file__, "--steps", str(args.steps), "--threads", str(args.threads)] + extra
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
    shutil.rmtree(tmp, ignore_errors=True)
    bw = _bandwidth_gbs()
    print(f"Qwen3 0.6B shape, vocab 215669, {n_params / 1e6:.0f} M parameters, {args.threads} threads, "
          f"prompt {PROMPT}, {args.steps} decode steps")
    print(f"numpy copy bandwidth: {bw:.1f} GB/s; bound = weight bytes read per step / bandwidth")
    print("decode ms per token: 'guided' = cond + uncond batch (CFG) with the head cut to the 64000 audio-code "
          "rows as the code phase runs it (transformers: whole head); 'full head' = all 215669 rows; "
          "'single' = no guidance, codes-only head")
    print(f"{'engine':<24}{'load s':>8}{'prefill s':>11}{'guided':>8}{'full head':>10}{'single':>8}"
          f"{'peak GiB':>10}{'bound':>7}")
    ref = results["transformers bfloat16"]
    bytes_per = {"ours BF16": 2.0, "ours Q8_0": 34 / 32, "transformers float32": 4.0, "transformers bfloat16": 2.0}
    head_rows_cut = 151669 * 1024  # weights the codes-only head skips
    for name, r in results.items():
        n_read = n_params - (head_rows_cut if name.startswith("ours") else 0)
        bound = n_read * bytes_per[name] / (bw * 1e9) * 1e3
        print(f"{name:<24}{r['load_s']:>8.2f}{r['prefill_s']:>11.3f}{r['guided_ms']:>8.1f}{r['guided_full_ms']:>10.1f}"
              f"{r['single_ms']:>8.1f}{r['peak_gib']:>10.2f}{bound:>7.1f}")
    for name in ("ours BF16", "ours Q8_0"):
        r = results[name]
        print(f"{name} speed-up over transformers bf16: guided {ref['guided_ms'] / r['guided_ms']:.2f}x "
              f"(full head {ref['guided_full_ms'] / r['guided_full_ms']:.2f}x), "
              f"unguided {ref['single_ms'] / r['single_ms']:.2f}x")


if __name__ == "__main__":
    main()
