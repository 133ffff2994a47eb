"""5 Hz LM at the real 0.6B size (random weights): prefill of 200 tokens and guided decode
(batch of two: cond + uncond, and unguided) per token, ours (BF16, Q8_0, and INT8: the BF16 file
with ACESTEP_GGML_INT8=1) against transformers
(fp32, bf16) in one run, each engine in its own process for its peak memory.  Decode is timed in
wall and CPU milliseconds per token (CPU: all threads of the process).  Also the
memory-bandwidth bound: weight bytes read per decode step over a numpy-measured bandwidth.

    PYTHONPATH=src python benchmarks/bench_lm.py [--steps 32] [--threads N] [--no-torch]
        [--baseline DIR] [--rounds N]

--baseline DIR times another build of ours too (DIR holds its `acestep_ggml` package, e.g. a copy
of an older commit's src/ after its build), alternating with this one for --rounds rounds: a
before/after in one run on a shared machine.  ACESTEP_GGML_PROFILE=1 prints each run's per-op profile.
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)

from _common import cpu_summary, peak_gib  # noqa: E402 (after the path setup)

PROMPT, UNCOND = 200, 150


def _config():
    from transformers import Qwen3Config

    # Qwen3-0.6B's shape (tied head) over the LM's 151669 + 64000 vocabulary.
    return Qwen3Config(vocab_size=215669, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
                       tie_word_embeddings=True, max_position_embeddings=40960,
                       rope_parameters={"rope_type": "default", "rope_theta": 1e6})


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
        t, c = time.perf_counter(), time.process_time()
        for _ in range(steps):
            lm.decode([code0] * n_seq, lo, hi)
        res[key + "_ms"] = (time.perf_counter() - t) / steps * 1e3
        res[key + "_cpu_ms"] = (time.process_time() - c) / steps * 1e3
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
        t, c = time.perf_counter(), time.process_time()
        for _ in range(steps):
            mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
            past = model(tok, attention_mask=mask, past_key_values=past, use_cache=True).past_key_values
        decode, cpu = (time.perf_counter() - t) / steps, (time.process_time() - c) / steps
    # transformers always computes the whole head.
    return {"load_s": load, "prefill_s": prefill, "guided_full_ms": decode * 1e3, "guided_ms": decode * 1e3,
            "guided_cpu_ms": cpu * 1e3, "single_ms": single * 1e3}


def _bandwidth_gbs() -> float:
    a = np.ones(2**28 // 4, dtype=np.float32)  # 256 MiB
    b = np.empty_like(a)
    best = 1e9
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.nbytes / best / 1e9  # read + write


def _bound_ms(name: str, n_params: int, bw: float) -> float:
    """Weight bytes one decode step reads over the bandwidth: ours reads the codes-only head."""
    bytes_per = {"BF16": 2.0, "Q8_0": 34 / 32, "INT8": 1.0, "float32": 4.0, "bfloat16": 2.0}
    dtype = name.split()[1]
    head_rows_cut = 151669 * 1024 if name.startswith("ours") else 0  # weights the codes-only head skips
    return (n_params - head_rows_cut) * bytes_per[dtype] / (bw * 1e9) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--no-torch", action="store_true", help="time ours only")
    ap.add_argument("--baseline", help="a folder holding another build's acestep_ggml package, timed alternately "
                                       "with this one")
    ap.add_argument("--rounds", type=int, default=1, help="runs of each of ours (alternating with --baseline)")
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.engine:
        r = _ours(args.path, args.steps, args.threads) if args.engine == "ours" else \
            _torch(args.engine, args.steps, args.threads)
        r["peak_gib"] = peak_gib()
        r["load_avg"] = os.getloadavg()[0]
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
    files["int8"] = files["bf16"]  # ACESTEP_GGML_INT8=1: the BF16 file's layers packed to int8 at load
    del model
    builds = ([(" (baseline)", os.path.abspath(args.baseline))] if args.baseline else []) + [("", None)]
    runs = [(f"ours {d.upper()}{tag}", ["--engine", "ours", "--path", files[d]], pythonpath)
            for _ in range(args.rounds) for d in files for tag, pythonpath in builds]
    if not args.no_torch:
        runs += [(f"transformers {d}", ["--engine", d], None) for d in ("float32", "bfloat16")]
    results = []
    try:
        for name, extra, pythonpath in runs:
            cmd = [sys.executable, __file__, "--steps", str(args.steps), "--threads", str(args.threads)] + extra
            env = dict(os.environ, PYTHONPATH=pythonpath) if pythonpath else dict(os.environ)
            env["ACESTEP_GGML_INT8"] = "1" if name.startswith("ours INT8") else "0"
            # stderr passes through: ACESTEP_GGML_PROFILE's per-op table.
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout
            results.append((name, json.loads(out.strip().splitlines()[-1])))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bw = _bandwidth_gbs()
    print(cpu_summary(args.threads))
    print(f"Qwen3 0.6B shape, vocab 215669, {n_params / 1e6:.0f} M parameters, prompt {PROMPT}, "
          f"{args.steps} decode steps")
    print(f"numpy copy bandwidth: {bw:.1f} GB/s; bound = weight bytes read per step / bandwidth")
    print("decode ms per token: 'guided' = cond + uncond batch (CFG) with the head cut to the 64000 audio-code "
          "rows as the code phase runs it (transformers: whole head), wall and CPU (all threads); 'full head' = "
          "all 215669 rows; 'single' = no guidance, codes-only head; 'load avg' = 1-minute load average after the run")
    print(f"{'engine':<28}{'load s':>8}{'prefill s':>11}{'guided':>8}{'CPU':>7}{'full head':>10}{'single':>8}"
          f"{'peak GiB':>10}{'load avg':>9}{'bound':>7}")
    for name, r in results:
        print(f"{name:<28}{r['load_s']:>8.2f}{r['prefill_s']:>11.3f}{r['guided_ms']:>8.1f}{r['guided_cpu_ms']:>7.1f}"
              f"{r['guided_full_ms']:>10.1f}{r['single_ms']:>8.1f}{r['peak_gib']:>10.2f}{r['load_avg']:>9.1f}"
              f"{_bound_ms(name, n_params, bw):>7.1f}")

    def best(name, key="guided_ms"):
        return min(r[key] for n, r in results if n == name)

    for d in files:
        name = f"ours {d.upper()}"
        line = f"{name}: guided {best(name):.1f} ms/token (best of {args.rounds}), " \
               f"{best(name) / _bound_ms(name, n_params, bw):.2f}x the bound"
        if args.baseline:
            line += f"; baseline {best(name + ' (baseline)'):.1f} ms, " \
                    f"{best(name + ' (baseline)') / best(name):.2f}x slower"
        if not args.no_torch:
            ref = dict(results)["transformers bfloat16"]
            r = {k: best(name, k) for k in ("guided_ms", "guided_full_ms", "single_ms")}
            line += f"; over transformers bf16: guided {ref['guided_ms'] / r['guided_ms']:.2f}x " \
                    f"(full head {ref['guided_full_ms'] / r['guided_full_ms']:.2f}x), " \
                    f"unguided {ref['single_ms'] / r['single_ms']:.2f}x"
        print(line)


if __name__ == "__main__":
    main()
