"""Text side at real sizes with random weights: text encoder (~70 tokens), condition encoder
(~170 lyric tokens + 750 timbre frames), detokenizer (150 codes).  Ours (BF16 and F32 GGUF)
against PyTorch fp32 and bf16, each run in its own process so that its peak RSS is its own.
``ours-matmul``: attention as mul_mat + soft_max (ACESTEP_GGML_ATTN=matmul); ``ours-int8``: the BF16
file with ACESTEP_GGML_INT8=1 (int8 matmuls, AVX-512 VNNI CPUs).

    PYTHONPATH=src:tests python benchmarks/bench_text.py [--repeat 3] [--workdir DIR] [--runs torch:bf16,ours-int8:bf16]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

N_TEXT, N_LYRIC, N_CODES, VOCAB = 70, 170, 150, 151669
STAGES = ["text", "cond", "detok"]


def text_config():
    from transformers import Qwen3Config
    return Qwen3Config(vocab_size=VOCAB, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
                       rope_parameters={"rope_type": "default", "rope_theta": 1e6})


def dit_dims():
    return dict(text_hidden_dim=1024, timbre_hidden_dim=64, lyric_layers=8, timbre_layers=4, detok_layers=2,
                hidden_size=2048, intermediate_size=6144, num_attention_heads=16, num_key_value_heads=8,
                head_dim=128, sliding_window=128)


def write_files(workdir):
    import torch
    from _text_gguf import dit_side_models, write_dit, write_text_encoder
    from transformers import Qwen3Model
    torch.manual_seed(0)
    text = Qwen3Model(text_config()).eval()
    for bf16 in (False, True):
        write_text_encoder(os.path.join(workdir, f"text_{'bf16' if bf16 else 'f32'}.gguf"), text, bf16=bf16)
    del text
    cond, tok, detok = dit_side_models(0, **dit_dims())
    for bf16 in (False, True):
        write_dit(os.path.join(workdir, f"dit_{'bf16' if bf16 else 'f32'}.gguf"), cond, tok, detok, window=128,
                  bf16=bf16)


def inputs():
    rng = np.random.default_rng(0)
    return dict(ids=rng.integers(0, 151643, N_TEXT), lyric=rng.integers(0, 151643, N_LYRIC),
                text_h=rng.standard_normal((N_TEXT, 1024)).astype(np.float32),
                codes=rng.integers(0, 64000, N_CODES))


def run_ours(stage, kind, workdir, repeat):
    import acestep_ggml
    x = inputs()
    t0 = time.perf_counter()
    if stage == "text":
        m = acestep_ggml.TextEncoder(os.path.join(workdir, f"text_{kind}.gguf"))
        fn = lambda: m.encode(x["ids"])
    elif stage == "cond":
        m = acestep_ggml.ConditionEncoder(os.path.join(workdir, f"dit_{kind}.gguf"),
                                          os.path.join(workdir, f"text_{kind}.gguf"))
        fn = lambda: m.encode(x["text_h"], x["lyric"])
    else:
        m = acestep_ggml.Detokenizer(os.path.join(workdir, f"dit_{kind}.gguf"))
        fn = lambda: m.decode(x["codes"])
    load = time.perf_counter() - t0
    return load, fn


def run_torch(stage, kind, repeat):
    import torch
    from _text_gguf import dit_side_models
    from transformers import Qwen3Model
    dtype = torch.bfloat16 if kind == "bf16" else torch.float32
    x = inputs()
    t0 = time.perf_counter()
    if stage == "text":
        m = Qwen3Model(text_config()).eval().to(dtype)
        ids = torch.from_numpy(x["ids"])[None]
        fn = lambda: m(input_ids=ids).last_hidden_state
    else:
        cond, tok, detok = dit_side_models(0, with_cond=stage == "cond", **dit_dims())
        if stage == "cond":
            emb = torch.nn.Embedding(VOCAB, 1024).to(dtype)
            cond = cond.to(dtype)
            lyric = torch.from_numpy(x["lyric"])[None]
            text_h = torch.from_numpy(x["text_h"])[None].to(dtype)

            def fn():
                return cond(text_hidden_states=text_h, text_attention_mask=torch.ones(1, N_TEXT, dtype=torch.bool),
                            lyric_hidden_states=emb(lyric),
                            lyric_attention_mask=torch.ones(1, N_LYRIC, dtype=torch.bool),
                            refer_audio_acoustic_hidden_states_packed=cond.silence_latent[:, :750, :],
                            refer_audio_order_mask=torch.zeros(1, dtype=torch.long))
        else:
            tok, detok = tok.to(dtype), detok.to(dtype)
            codes = torch.from_numpy(x["codes"])[None]
            fn = lambda: detok(tok.quantizer.get_output_from_indices(codes))
    load = time.perf_counter() - t0

    def no_grad():
        with torch.no_grad():
            return fn()
    return load, no_grad


def child(args):
    if args.impl == "ours":
        load, fn = run_ours(args.stage, args.kind, args.workdir, args.repeat)
    else:
        load, fn = run_torch(args.stage, args.kind, args.repeat)
    fn()  # warm-up: first-touch of weights, graph allocation
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child would report its parent's peak.
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024 ** 2  # KiB -> GiB
    print(json.dumps(dict(load=load, best=min(times), median=float(np.median(times)), peak_gib=peak)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workdir")
    p.add_argument("--stage", choices=STAGES)
    p.add_argument("--impl", choices=["ours", "ours-matmul", "ours-int8", "torch"])
    p.add_argument("--kind", choices=["f32", "bf16"])
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--runs", default="torch:f32,torch:bf16,ours:f32,ours:bf16,ours-matmul:bf16,ours-int8:bf16",
                   help="impl:weights pairs to run, in order")
    args = p.parse_args()
    if args.stage:
        if args.impl in ("ours-matmul", "ours-int8"):
            args.impl = "ours"
        return child(args)

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_text_")
    if not os.path.exists(os.path.join(workdir, "dit_bf16.gguf")):
        print(f"writing random GGUFs to {workdir} ...", flush=True)
        write_files(workdir)
    print(f"threads: {os.cpu_count()}; timings in seconds (best / median of {args.repeat} after a warm-up)")
    print(f"{'stage':6} {'impl':12} {'weights':7} {'best':>8} {'median':>8} {'peak GiB':>9} {'vs torch bf16':>14}")
    for stage in args.stages.split(","):
        results = {}
        for impl, kind in (r.split(":") for r in args.runs.split(",")):
            env = dict(os.environ)
            if impl == "ours-matmul":
                env["ACESTEP_GGML_ATTN"] = "matmul"
            env["ACESTEP_GGML_INT8"] = "1" if impl == "ours-int8" else "0"
            out = subprocess.run([sys.executable, __file__, "--stage", stage, "--impl", impl, "--kind", kind,
                                  "--workdir", workdir, "--repeat", str(args.repeat)],
                                 capture_output=True, text=True, env=env)
            if out.returncode != 0:
                print(f"{stage:6} {impl:12} {kind:7} failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[(impl, kind)] = r
            ref = results.get(("torch", "bf16"))
            ratio = f"{ref['best'] / r['best']:.2f}x" if ref else ""
            print(f"{stage:6} {impl:12} {kind:7} {r['best']:8.3f} {r['median']:8.3f} {r['peak_gib']:9.2f} "
                  f"{ratio:>14}", flush=True)


if __name__ == "__main__":
    main()
