"""Quantized files at the real sizes (random weights): file size, quantize time, load time, peak
memory, speed and quality of each type against the BF16 file, for one model per run.

    PYTHONPATH=src flock /tmp/acestep-bigmem.lock python benchmarks/bench_quant.py --model dit-2b

Writing the BF16 file peaks near 9 GiB for the 0.6B LM and the 2B DiT (the random PyTorch model
and the writer's copy), hence the lock; with --dir of an earlier run the file is reused.
    ... --model lm-0.6b | lm-1.7b | lm-4b | text-0.6b  [--types bf16,q8_0,q6_k,q5_k_m,q4_k_m,q5_0,q4_0]

The BF16 file is written from a random PyTorch model (the tests' writers), every other type is
made from it by `acestep_ggml.convert.quantize.quantize_file` (what `quantize IN OUT TYPE` runs).
Each type then runs in its own process (its peak RSS is its own):

* DiT: one forward (velocity) of --frames latent frames and 200 encoder tokens; cosine of the
  velocity against BF16's.
* LM: prefill of 64 tokens, then --steps decode steps fed a fixed token sequence (teacher
  forcing), whole head: logits cosine and top-1 agreement against BF16's at every position; then
  the audio codes of a --codes/5-second song under the FSM (CFG 2.0, metadata given so the chain
  of thought is skipped), greedy and sampled (temperature 0.85, fixed seed): position-wise
  agreement with BF16's codes and the common prefix.
* text encoder: the hidden states of 200 tokens; cosine against BF16's.
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

from _common import cpu_summary, peak_gib  # noqa: E402

DIT_2B = dict(
    hidden_size=2048,
    intermediate_size=6144,
    num_hidden_layers=24,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    in_channels=192,
    audio_acoustic_hidden_dim=64,
    patch_size=2,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    sliding_window=128,
)
# Qwen3 shapes of the LMs (tied heads) and of Qwen3-Embedding-0.6B.
QWEN3 = {
    "lm-0.6b": dict(
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
    ),
    "lm-1.7b": dict(
        hidden_size=2048,
        intermediate_size=6144,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
    ),
    "lm-4b": dict(
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
    ),
}
QWEN3["text-0.6b"] = QWEN3["lm-0.6b"]
PROMPT, ENC = 64, 200


def _qwen3_config(model: str):
    from transformers import Qwen3Config

    lm = model.startswith("lm")
    return Qwen3Config(
        vocab_size=151669 + (64000 if lm else 0),
        rms_norm_eps=1e-6,
        tie_word_embeddings=lm,
        max_position_embeddings=40960,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        **QWEN3[model],
    )


def phase_write(args) -> dict:
    """The random model as a BF16 GGUF, built in bfloat16 to halve the memory."""
    import torch

    torch.manual_seed(args.seed)
    torch.set_default_dtype(torch.bfloat16)
    path = os.path.join(args.dir, "model-bf16.gguf")
    t = time.perf_counter()
    if args.model == "dit-2b":
        from _dit_gguf import tiny_dit, write_dit_gguf

        write_dit_gguf(tiny_dit(args.seed, **DIT_2B), path, weight_type="bf16")
    else:
        from transformers import Qwen3ForCausalLM, Qwen3Model

        cfg = _qwen3_config(args.model)
        model = (Qwen3ForCausalLM if args.model.startswith("lm") else Qwen3Model)(cfg).eval()
        with torch.no_grad():  # transformers' init: N(0, 0.02) matrices, unit norms; add spread to the norms
            for p in model.parameters():
                if p.ndim == 1:
                    p.copy_(1 + 0.2 * torch.randn_like(p))
        if args.model.startswith("lm"):
            from _lm_gguf import write_lm

            write_lm(path, model, dtype="bf16")
        else:
            from _text_gguf import write_text_encoder

            write_text_encoder(path, model, bf16=True)
    return {"write_s": time.perf_counter() - t}


def phase_quantize(args) -> dict:
    from acestep_ggml.convert.quantize import quantize_file

    t = time.perf_counter()
    quantize_file(os.path.join(args.dir, "model-bf16.gguf"), os.path.join(args.dir, f"model-{args.dtype}.gguf"), args.dtype)
    return {"quantize_s": time.perf_counter() - t}


def phase_run(args) -> dict:
    import acestep_ggml
    from acestep_ggml.exchange import Request

    path = os.path.join(args.dir, f"model-{args.dtype}.gguf")
    rng = np.random.default_rng(args.seed)
    res = {"file_gib": os.path.getsize(path) / 2**30}
    t = time.perf_counter()
    if args.model == "dit-2b":
        m = acestep_ggml.DiT(path, n_threads=args.threads)
        res["load_s"] = time.perf_counter() - t
        f = lambda *s: rng.standard_normal(s, dtype=np.float32)  # noqa: E731
        x, src, enc, tt = f(1, args.frames, 64), f(1, args.frames, 64), f(1, ENC, 2048), np.array([0.75], np.float32)
        times = []
        for _ in range(2):  # the first call also builds and allocates the graph
            t = time.perf_counter()
            v = m.forward(x, tt, enc, src)
            times.append(time.perf_counter() - t)
        res["forward_s"] = times[-1]
        np.save(os.path.join(args.dir, f"out-{args.dtype}.npy"), v)
    elif args.model.startswith("text"):
        m = acestep_ggml.TextEncoder(path, n_threads=args.threads)
        res["load_s"] = time.perf_counter() - t
        ids = rng.integers(0, 151669, ENC)
        m.encode(ids[:8])
        t = time.perf_counter()
        h = m.encode(ids)
        res["encode_s"] = time.perf_counter() - t
        np.save(os.path.join(args.dir, f"out-{args.dtype}.npy"), h)
    else:
        lm = acestep_ggml.LM(path, n_threads=args.threads)
        res["load_s"] = time.perf_counter() - t
        ids = rng.integers(0, 151669, PROMPT + args.steps)
        lm.reset(1, PROMPT + args.steps + 8)
        t = time.perf_counter()
        logits = [lm.prefill(0, ids[:PROMPT])]
        res["prefill_s"] = time.perf_counter() - t
        t = time.perf_counter()
        for tok in ids[PROMPT : PROMPT + args.steps - 1]:
            logits.append(lm.decode([int(tok)])[0])
        res["decode_ms"] = (time.perf_counter() - t) / max(1, args.steps - 1) * 1e3
        np.save(os.path.join(args.dir, f"out-{args.dtype}.npy"), np.stack(logits))
        req = Request(
            caption="dreamy synth-pop, female vocals",
            lyrics="[Verse]\nneon lights over the bay",
            bpm=120,
            keyscale="F# minor",
            timesignature=4,
            duration=args.codes // 5,
        )
        t = time.perf_counter()
        greedy = lm.generate(req, temperature=0.0, seed=0).codes
        res["codes_ms"] = (time.perf_counter() - t) / max(1, len(greedy)) * 1e3
        sampled = lm.generate(req, seed=1).codes
        np.save(os.path.join(args.dir, f"codes-{args.dtype}.npy"), np.array([greedy, sampled]))
    return res


def _run(args, phase, dtype=""):
    cmd = [
        sys.executable,
        __file__,
        "--phase",
        phase,
        "--dtype",
        dtype,
        "--dir",
        args.dir,
        "--model",
        args.model,
        "--frames",
        str(args.frames),
        "--steps",
        str(args.steps),
        "--codes",
        str(args.codes),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
    ]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _cos(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="dit-2b", choices=["dit-2b", *QWEN3])
    p.add_argument("--types", default="bf16,q8_0,q6_k,q5_k_m,q4_k_m,q5_0,q4_0")
    p.add_argument("--frames", type=int, default=250, help="DiT latent frames (25 per second)")
    p.add_argument("--steps", type=int, default=32, help="LM teacher-forced decode steps")
    p.add_argument("--codes", type=int, default=50, help="LM audio codes under the FSM (5 per second, 50 to 3000)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default="", help="where the GGUFs go (default: a temporary folder, removed)")
    p.add_argument("--phase", default="", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        r = {"write": phase_write, "quantize": phase_quantize, "run": phase_run}[args.phase](args)
        r["peak_gib"] = peak_gib()
        r["load_avg"] = os.getloadavg()[0]
        print(json.dumps(r))
        return

    tmp = None
    if not args.dir:
        tmp = args.dir = tempfile.mkdtemp(prefix="bench_quant_")
    types = args.types.split(",")
    print(cpu_summary(args.threads))
    if not os.path.exists(os.path.join(args.dir, "model-bf16.gguf")):  # a --dir of an earlier run keeps it
        w = _run(args, "write")
        print(f"{args.model}: BF16 file written in {w['write_s']:.0f} s (peak {w['peak_gib']:.1f} GiB)", flush=True)
    results = {}
    for ty in types:
        r = _run(args, "quantize", ty) if ty != "bf16" else {"quantize_s": 0.0}
        r.update(_run(args, "run", ty))
        results[ty] = r
        print(ty, json.dumps(r), flush=True)
    ref = np.load(os.path.join(args.dir, "out-bf16.npy"))
    lm = args.model.startswith("lm")
    if lm:
        ref_codes = np.load(os.path.join(args.dir, "codes-bf16.npy"))
    head = f"{'type':<8}{'file GiB':>9}{'quant s':>8}{'load s':>7}{'peak GiB':>9}"
    head += {"dit-2b": f"{'forward s':>10}{'cos':>10}", "text-0.6b": f"{'encode s':>9}{'cos':>10}"}.get(args.model, "")
    if lm:
        head += (
            f"{'prefill s':>10}{'ms/token':>9}{'codes ms':>9}{'cos':>10}{'top-1':>7}{'greedy':>8}{'prefix':>7}"
            f"{'sampled':>8}{'prefix':>7}"
        )
    print(head + f"{'load avg':>9}")
    for ty, r in results.items():
        out = np.load(os.path.join(args.dir, f"out-{ty}.npy"))
        line = f"{ty:<8}{r['file_gib']:>9.2f}{r['quantize_s']:>8.0f}{r['load_s']:>7.1f}{r['peak_gib']:>9.2f}"
        if args.model == "dit-2b":
            line += f"{r['forward_s']:>10.2f}{_cos(out, ref):>10.6f}"
        elif not lm:
            line += f"{r['encode_s']:>9.2f}{_cos(out, ref):>10.6f}"
        else:
            cos = np.mean([_cos(a, b) for a, b in zip(out, ref)])
            top1 = np.mean(out.argmax(-1) == ref.argmax(-1))
            codes = np.load(os.path.join(args.dir, f"codes-{ty}.npy"))
            agree = [float(np.mean(codes[i] == ref_codes[i])) for i in range(2)]
            prefix = [int(np.argmin(np.r_[codes[i] == ref_codes[i], False])) for i in range(2)]
            line += (
                f"{r['prefill_s']:>10.2f}{r['decode_ms']:>9.1f}{r['codes_ms']:>9.1f}{cos:>10.6f}{top1:>7.3f}"
                f"{agree[0]:>8.2f}{prefix[0]:>7d}{agree[1]:>8.2f}{prefix[1]:>7d}"
            )
        print(line + f"{r['load_avg']:>9.1f}")
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
