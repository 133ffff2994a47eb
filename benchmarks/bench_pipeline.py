"""A whole song, as a user waits for it: ``Pipeline.generate`` (LM 0.6B with CFG and a chain of
thought, text encoder, condition encoder, detokenizer, 8 turbo DiT steps, VAE) at real sizes with
random weights, against the same work in PyTorch in the same run (transformers for the LM,
diffusers' AceStepPipeline for the rest) on the same weights, in PyTorch's fastest dtype on this
host (bf16 with AVX512-BF16 or AMX, else fp32).

Prints per stage: seconds and peak RSS (model loads apart), the wall time, and the headline:
seconds of compute per second of music.  Each engine and song length runs in its own process.

    pip install torch==2.13.0 ".[test]"        # the README's test install: the PyTorch reference
    python benchmarks/bench_pipeline.py [--seconds 30,120] [--no-torch] [--threads N] [--workdir DIR]
                                        [--acestep-cpp DIR] [--int8]

--acestep-cpp names a folder holding an ace-synth built from acestep.cpp (built by you, per its
README): its synth of the same song on the same GGUF files is timed in the same run.

The random checkpoints (BF16 safetensors, ~7 GB, and our GGUFs, ~6 GB) go to a temporary folder
that is deleted at the end, unless --workdir names one to keep for later runs.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)

from _common import cpu_summary, peak_gib, reset_peak, torch_fastest_dtype  # noqa: E402 (after the path setup)

CAPTION = "upbeat synth-pop with punchy drums, bright analog pads and a catchy female vocal"
LYRICS = ("[verse]\nNeon lights across the avenue\nEvery signal leads me back to you\n"
          "[chorus]\nWe are running through the night\nHearts on fire, burning bright\n") * 2
LM_DIR = "acestep-5Hz-lm-0.6B"
# ACE-Step 1.5 at its published sizes: the turbo DiT (2048 wide, 24 layers), Qwen3-0.6B-shaped
# text encoder and 5 Hz LM, the Oobleck VAE.
REAL_DIT = {"hidden_size": 2048, "intermediate_size": 6144, "num_attention_heads": 16, "num_key_value_heads": 8,
            "head_dim": 128, "num_hidden_layers": 24, "num_lyric_encoder_hidden_layers": 8,
            "num_timbre_encoder_hidden_layers": 4, "num_attention_pooler_hidden_layers": 2, "sliding_window": 128,
            "text_hidden_dim": 1024}
# diffusers' AutoencoderOobleck decodes a whole song at once unless tiling is enabled, which
# AceStepPipeline does not do: untiled, a 120 s song ran out of 24 GiB in fp32.  Longer songs get
# its tiling (512-frame tiles, 64 frames of overlap), as a user short of memory would set it.
TORCH_UNTILED_SECONDS = 60
REAL_QWEN3 = {"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
              "num_key_value_heads": 8, "head_dim": 128}


# ---------------------------------------------------------------------------
# Stage clock: spans between progress events, model loads apart, peak RSS per span.

class Clock:
    def __init__(self):
        self.current, self.since, self.cpu = None, time.perf_counter(), time.process_time()
        self.spans: dict[str, list[float]] = {}  # name -> [seconds, peak GiB, CPU seconds of all threads]
        reset_peak()

    def enter(self, name):
        """Closes the running span and starts `name` (None: nothing is timed until the next enter)."""
        now, cpu = time.perf_counter(), time.process_time()
        if self.current is not None:
            s = self.spans.setdefault(self.current, [0.0, 0.0, 0.0])
            s[0] += now - self.since
            s[1] = max(s[1], peak_gib())
            s[2] += cpu - self.cpu
        reset_peak()
        self.current, self.since, self.cpu = name, now, cpu


def run_ours(args) -> dict:
    from acestep_ggml import Pipeline
    from acestep_ggml.fsm import cot_text

    clock = Clock()
    pipe = Pipeline(args.gguf, n_threads=args.threads, lm="0.6B", quiet=True)
    # progress stages and the synth stage's model names, by the row they are timed in
    stage = {"lm-metadata": "LM", "lm-codes": "LM", "text": "text encoder", "condition": "condition encoder",
             "codes": "detokenizer", "detokenizer": "detokenizer", "dit": "DiT", "vae": "VAE"}
    tokens = {}

    def progress(name, done, total):
        tokens[name] = done
        if stage[name] != clock.current:
            clock.enter(stage[name])

    # Loads are timed apart; the model's own stage starts when its load ends (the VAE reports
    # progress only after its first tile).
    synth_model = pipe.synth._model

    def timed_model(name):
        if name in pipe.synth._loaded:
            return synth_model(name)
        clock.enter(f"load {stage[name]}")
        m = synth_model(name)
        clock.enter(stage[name])
        return m

    pipe.synth._model = timed_model
    t0 = time.perf_counter()
    clock.enter("load LM")
    batch = {} if args.batch_size is None else {"batch_size": args.batch_size}
    song = pipe.generate(CAPTION, LYRICS, duration=args.seconds, seed=args.seed, progress=progress,
                         use_lm=not args.no_lm, **batch)
    clock.enter(None)
    song = song[0] if isinstance(song, list) else song
    r = song.request
    # What PyTorch is given so that it does the same work: the LM's chain of thought (its
    # caption and language included) and codes; the DiT prompt with that caption.
    values = {"bpm": r.bpm, "caption": r.caption, "duration": args.seconds, "keyscale": r.keyscale,
              "language": r.language, "timesignature": r.timesignature}
    cot = cot_text({k: None if v is None else str(v) for k, v in values.items()})
    return {"wall": time.perf_counter() - t0, "spans": clock.spans, "n_cot": tokens.get("lm-metadata", 0),
            "codes": list(map(int, r.codes)), "bpm": r.bpm, "keyscale": r.keyscale, "timesignature": r.timesignature,
            "caption": r.caption, "language": r.language, "cot": cot}


def _lm_tokens(model, prompts, n_new, lo, hi, rng):
    """Decoding as the reference runs it: with two prompts (cond and uncond, left-padded into one
    batch) CFG on the logits, with one plain sampling; tokens drawn from ids lo..hi-1; n_new
    tokens (the count ours made)."""
    import torch

    from acestep_ggml.token_sampling import guided, sample

    n = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), n, dtype=torch.long)
    mask = torch.zeros(len(prompts), n, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, n - len(p):] = torch.tensor(p)
        mask[i, n - len(p):] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    out = model(ids, attention_mask=mask, position_ids=pos, use_cache=True)
    for _ in range(n_new):
        logits = out.logits[:, -1, lo:hi].float().numpy()
        tok = lo + sample(guided(logits[0], logits[1], 2.0) if len(prompts) == 2 else logits[0], rng)
        mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=torch.long)], 1)
        pos = pos[:, -1:] + 1
        out = model(torch.full((len(prompts), 1), tok), attention_mask=mask, position_ids=pos,
                    past_key_values=out.past_key_values, use_cache=True)


def run_torch(args, ours) -> dict:
    import numpy as np
    import torch
    from diffusers import AceStepPipeline
    from tokenizers import Tokenizer
    from transformers import Qwen3ForCausalLM

    from acestep_ggml.lm import codes_prompt, codes_uncond_prompt, cot_prompt

    torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.torch_dtype]
    clock = Clock()
    t0 = time.perf_counter()
    clock.enter("load LM")
    lm_dir = os.path.join(args.workdir, "lm", LM_DIR)
    model = Qwen3ForCausalLM.from_pretrained(lm_dir, torch_dtype=dtype).eval()
    tok = Tokenizer.from_file(os.path.join(lm_dir, "tokenizer.json"))
    enc = lambda text: tok.encode(text).ids
    first_code = tok.token_to_id("<|audio_code_0|>")
    rng = np.random.default_rng(args.seed)
    clock.enter("LM")
    with torch.inference_mode():
        # The same work as ours (upstream's default prompts): a chain of thought of the same
        # length without CFG, then the codes with CFG.
        _lm_tokens(model, [enc(cot_prompt(CAPTION, LYRICS))], ours["n_cot"], 0, model.config.vocab_size, rng)
        _lm_tokens(model, [enc(codes_prompt(CAPTION, LYRICS, ours["cot"])), enc(codes_uncond_prompt(CAPTION, LYRICS))],
                   len(ours["codes"]), first_code, first_code + 64000, rng)
    del model
    clock.enter("load synth")
    pipe = AceStepPipeline.from_pretrained(os.path.join(args.workdir, "diffusers"), torch_dtype=dtype)
    if args.seconds > TORCH_UNTILED_SECONDS:
        pipe.vae.enable_tiling()
    clock.enter("other")
    # Each module's forward is timed as its stage (summed over the DiT steps and VAE tiles).
    for name, module in (("text encoder", pipe.text_encoder), ("condition encoder", pipe.condition_encoder),
                         ("detokenizer", pipe.audio_token_detokenizer), ("DiT", pipe.transformer),
                         ("VAE", pipe.vae.decoder)):
        module.register_forward_pre_hook(lambda m, a, name=name: clock.enter(name))
        module.register_forward_hook(lambda m, a, o: clock.enter("other"))
    codes = "".join(f"<|audio_code_{c}|>" for c in ours["codes"])
    with torch.inference_mode():
        pipe(prompt=ours["caption"], lyrics=LYRICS, audio_duration=float(args.seconds),
             vocal_language=ours["language"] or "unknown",
             num_inference_steps=8, guidance_scale=1.0, shift=3.0, output_type="np", bpm=ours["bpm"],
             keyscale=ours["keyscale"], timesignature=None if ours["timesignature"] is None else str(ours["timesignature"]),
             audio_codes=codes, generator=torch.Generator().manual_seed(args.seed))
    clock.enter(None)
    return {"wall": time.perf_counter() - t0, "spans": clock.spans}


# acestep.cpp's log lines that time a stage (milliseconds), by our stage names.
ACESTEP_CPP_STAGES = {
    "load text encoder": r"\[Store\] Load TextEnc: ([\d.]+) ms", "load condition encoder": r"\[Store\] Load CondEnc: ([\d.]+) ms",
    "load detokenizer": r"\[Store\] Load FSQ-Detok: ([\d.]+) ms", "load DiT": r"\[Store\] Load DiT: ([\d.]+) ms",
    "load VAE": r"\[Store\] Load VAE-Dec: ([\d.]+) ms", "condition encoder": r"\[Encode-Text Batch0\] .*, ([\d.]+) ms",
    "detokenizer": r"Detokenizer: ([\d.]+) ms", "DiT": r"\[DiT-Generate\] Total: ([\d.]+) ms",
    "VAE": r"\[VAE-Decode Batch0\] Decode: ([\d.]+) ms"}


def _nprocs_preload(folder: str, threads: int) -> str:
    """ace-synth has no thread option: it runs std::thread::hardware_concurrency() / 2 threads, a
    count libstdc++ takes from glibc's get_nprocs().  A preloaded get_nprocs answering 2 * threads
    gives it our thread count; returns that library's path."""
    src, lib = os.path.join(folder, "nprocs.c"), os.path.join(folder, "nprocs.so")
    with open(src, "w") as f:
        f.write(f"int get_nprocs(void) {{ return {2 * threads}; }}\n")
    if shutil.which("cc") is None:
        sys.exit("--acestep-cpp needs a C compiler (cc) to set ace-synth's thread count")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", lib, src], check=True)
    return lib


def run_acestep_cpp(args, ours) -> dict:
    """acestep.cpp's ace-synth on the same GGUF files and song (our LM's codes and metadata), with
    our thread count and OpenMP wait policy.  Its log gives the stage times; the text encoder is
    the time between its load line and the condition encoder's, less that load.  Peak RSS: the
    highest VmHWM read while its log comes in."""
    import acestep_ggml  # noqa: F401 (sets OpenMP's wait policy in os.environ, as ours runs)

    exe = os.path.join(args.acestep_cpp, "ace-synth")
    if not os.access(exe, os.X_OK):
        sys.exit(f"--acestep-cpp: no ace-synth in {args.acestep_cpp}")
    request = {"caption": ours["caption"], "lyrics": LYRICS, "duration": float(args.seconds),
               "vocal_language": ours["language"] or "unknown",
               "seed": args.seed, "inference_steps": 8, "guidance_scale": 1.0, "shift": 3.0,
               "audio_codes": ",".join(map(str, ours["codes"])), "output_format": "wav16"}
    for key, value in (("bpm", ours["bpm"]), ("keyscale", ours["keyscale"]), ("timesignature", ours["timesignature"])):
        if value is not None:
            request[key] = value if key != "timesignature" else str(value)
    with tempfile.TemporaryDirectory(prefix="acestep_cpp_") as tmp:
        env = dict(os.environ, LD_PRELOAD=_nprocs_preload(tmp, args.threads))
        song = os.path.join(tmp, "song.json")  # ace-synth writes song0.wav beside it
        with open(song, "w") as f:
            json.dump(request, f)
        before, lines, peak = resource.getrusage(resource.RUSAGE_CHILDREN), [], 0
        t0 = time.perf_counter()
        proc = subprocess.Popen([exe, "--models", args.gguf, "--request", song], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, errors="replace", env=env)
        for line in proc.stderr:
            lines.append((time.perf_counter() - t0, line))
            try:
                with open(f"/proc/{proc.pid}/status") as st:
                    peak = max(peak, next(int(x.split()[1]) for x in st if x.startswith("VmHWM:")))
            except (OSError, StopIteration):  # it has exited
                pass
        rc = proc.wait()
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    log = "".join(line for _, line in lines)
    if rc:
        sys.exit(f"ace-synth failed ({rc}):\n{log[-4000:]}")
    threads = set(re.findall(r"CPU threads: (\d+)", log))
    if threads != {str(args.threads)}:
        sys.exit(f"ace-synth ran {', '.join(sorted(threads)) or 'an unknown number of'} threads, not {args.threads}")
    spans, at = {}, {}
    for name, pattern in ACESTEP_CPP_STAGES.items():
        for t, line in lines:
            if m := re.search(pattern, line):
                spans[name], at[name] = float(m.group(1)) / 1000, t
                break
    if "load text encoder" in at and "load condition encoder" in at:
        spans["text encoder"] = at["load condition encoder"] - at["load text encoder"] - spans["load condition encoder"]
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"wall": wall, "spans": spans, "peak": peak / 2**20, "cpu": cpu, "threads": args.threads}


def make_models(workdir: str, tiny: bool) -> None:
    """Random real-size checkpoints (BF16, so both engines read the same values) and our GGUFs of them."""
    import torch
    from fixtures import REAL_VAE, build_models, save_diffusers, write_lm_tokenizer

    from acestep_ggml.convert import convert

    sizes = {"vae": dict(REAL_VAE, decoder_channels=8)} if tiny else \
        {"dit": REAL_DIT, "qwen3": REAL_QWEN3, "vae": REAL_VAE}
    m = build_models(0, dtype=torch.bfloat16, **sizes)
    save_diffusers(m, Path(workdir, "diffusers"))
    lm_dir = Path(workdir, "lm", LM_DIR)
    m.lm.save_pretrained(lm_dir)
    del m
    write_lm_tokenizer(lm_dir)
    for src in ("diffusers", "lm"):
        convert(os.path.join(workdir, src), os.path.join(workdir, "gguf"), dtype="bf16", quiet=True)


def _child(args, phase, extra=(), required=True):
    """The phase's result from its own process; for a phase not `required`, None when it fails
    (PyTorch can run out of memory where ours does not: the report says so)."""
    cmd = [sys.executable, __file__, "--phase", phase, "--workdir", args.workdir, "--threads", str(args.threads),
           "--seed", str(args.seed), "--torch-dtype", args.torch_dtype, *(["--tiny"] if args.tiny else []), *extra]
    env = dict(os.environ, ACESTEP_GGML_INT8="1" if args.int8 and phase == "ours" else "0")
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if out.returncode:
        why = "killed by signal %d%s" % (-out.returncode, " (out of memory?)" if out.returncode == -9 else "") \
            if out.returncode < 0 else f"exit status {out.returncode}"
        if required:
            sys.exit(f"{phase} failed ({why}):\n{out.stderr[-4000:]}")
        print(f"{phase} failed ({why}); last lines of its log:\n{out.stderr[-1500:]}", flush=True)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


STAGES = ["LM", "text encoder", "condition encoder", "detokenizer", "DiT", "VAE"]


def report(seconds: int, ours: dict, ref: dict | None, dtype: str) -> None:
    print(f"\nLM output (given to PyTorch too): {ours['n_cot']} CoT tokens, {len(ours['codes'])} codes, "
          f"caption of {len(ours['caption'])} characters, language {ours['language']}")
    rows = STAGES + ["other"] + [s for s in ours["spans"] if s.startswith("load")] + \
        [s for s in (ref or {}).get("spans", {}) if s.startswith("load")]
    print(f"\n{seconds} s song: wall seconds (peak RSS GiB) [CPU seconds, all threads] per stage; model loads on "
          f"their own rows")
    print(f"{'stage':<24}{'ours':>26}{'PyTorch ' + dtype:>28}{'ours vs PyTorch':>17}")
    for name in dict.fromkeys(rows):
        o, t = ours["spans"].get(name), (ref or {}).get("spans", {}).get(name)
        if o is None and t is None:
            continue
        cell = lambda s: f"{s[0]:8.2f} ({s[1]:5.2f}) [{s[2]:6.1f}]" if s else ""
        ratio = f"{t[0] / o[0]:.2f}x" if o and t and o[0] > 0 else ""
        print(f"{name:<24}{cell(o):>26}{cell(t):>28}{ratio:>17}")
    peak = lambda r: max(s[1] for s in r["spans"].values())
    cpu = lambda r: sum(s[2] for s in r["spans"].values())
    line = f"{'wall':<24}{ours['wall']:8.2f} ({peak(ours):5.2f}) [{cpu(ours):6.1f}]"
    if ref:
        line += f"{ref['wall']:>10.2f} ({peak(ref):5.2f}) [{cpu(ref):6.1f}]{ref['wall'] / ours['wall']:>16.2f}x"
    print(line)
    msg = f"seconds of compute per second of music: ours {ours['wall'] / seconds:.2f}"
    if ref:
        msg += f", PyTorch {dtype} {ref['wall'] / seconds:.2f}"
    print(msg, flush=True)


def report_acestep_cpp(seconds: int, ours: dict, theirs: dict) -> None:
    """The synth half (no LM) of ours against acestep.cpp's ace-synth on the same files and song."""
    print(f"\n{seconds} s song, synth only (no LM): ours against acestep.cpp's ace-synth, same GGUF files and codes, "
          f"{theirs['threads']} threads each; wall seconds")
    print(f"{'stage':<24}{'ours':>10}{'acestep.cpp':>14}{'ours vs acestep.cpp':>22}")
    synth = [s for s in ours["spans"] if s not in ("LM", "load LM")]
    for name in STAGES[1:] + sorted(s for s in synth if s.startswith("load")):
        o, t = ours["spans"].get(name, [None])[0], theirs["spans"].get(name)
        ratio = f"{t / o:.2f}x" if o and t else ""
        print(f"{name:<24}{'' if o is None else f'{o:10.2f}':>10}{'' if t is None else f'{t:14.2f}':>14}{ratio:>22}")
    wall = ours["wall"] - sum(ours["spans"].get(s, [0.0])[0] for s in ("LM", "load LM"))
    print(f"{'synth wall':<24}{wall:10.2f}{theirs['wall']:14.2f}{theirs['wall'] / wall:>21.2f}x")
    peak, cpu = max(ours["spans"][s][1] for s in synth), sum(ours["spans"][s][2] for s in synth)
    print(f"{'peak RSS GiB':<24}{peak:10.2f}{theirs['peak']:14.2f}")
    print(f"{'CPU seconds':<24}{cpu:10.1f}{theirs['cpu']:14.1f}", flush=True)


def report_batches(args) -> None:
    """Songs per hour of generate(batch_size=N) for each N, each in its own process."""
    print(f"\nours, {args.threads} threads, {'synth stage only (no LM)' if args.no_lm else 'LM + synth'}; "
          "wall seconds per stage (peak RSS GiB), model loads apart")
    for seconds in (int(s) for s in args.seconds.split(",")):
        for n in (int(b) for b in args.batch_size.split(",")):
            ours = _child(args, "ours", ["--seconds", str(seconds), "--batch-size", str(n),
                                         *(["--no-lm"] if args.no_lm else [])])
            spans = ours["spans"]
            work = sum(v[0] for k, v in spans.items() if not k.startswith("load"))
            stages = ", ".join(f"{k} {v[0]:.1f} ({v[1]:.2f})" for k, v in spans.items() if not k.startswith("load"))
            peak = max(v[1] for v in spans.values())
            print(f"{seconds} s song, N = {n}: wall {ours['wall']:.1f} s, of it compute {work:.1f} s; "
                  f"songs per hour {3600 * n / ours['wall']:.1f} (compute only {3600 * n / work:.1f}); "
                  f"peak RSS {peak:.2f} GiB; {stages}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", default="30,120", help="song lengths, comma-separated")
    ap.add_argument("--no-torch", action="store_true", help="ours only (PyTorch takes several times longer)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--workdir", help="keep the random checkpoints here (made when missing)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--torch-dtype", default=torch_fastest_dtype(), choices=["fp32", "bf16"])
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny models: checks the script in a minute")
    ap.add_argument("--acestep-cpp", metavar="DIR", help="a folder holding a built ace-synth (acestep.cpp): "
                    "time its synth of the same song on the same files")
    ap.add_argument("--batch-size", default=None,
                    help="comma-separated batch sizes (e.g. 1,2,4): ours only, one generate(batch_size=N) call "
                         "each; prints songs per hour")
    ap.add_argument("--no-lm", action="store_true", help="with --batch-size: the synth stage only (use_lm=False)")
    ap.add_argument("--int8", action="store_true", help="ours with ACESTEP_GGML_INT8=1 (int8 matmuls, AVX-512 VNNI); "
                    "PyTorch and acestep.cpp then reproduce that run's LM output")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--ours", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        args.gguf = os.path.join(args.workdir, "gguf")
        if args.phase == "make":
            make_models(args.workdir, args.tiny)
            res = {}
        else:
            args.seconds = int(args.seconds)
            args.batch_size = None if args.batch_size is None else int(args.batch_size)
            if args.phase == "ours":
                res = run_ours(args)
            else:
                res = (run_torch if args.phase == "torch" else run_acestep_cpp)(args, json.loads(args.ours))
        print(json.dumps(res))
        return

    keep = args.workdir is not None
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench_pipeline_")
    try:
        print(cpu_summary(args.threads), flush=True)
        if args.int8:
            print("ours: int8 matmuls in the LM, DiT and encoders (ACESTEP_GGML_INT8=1)", flush=True)
        if not os.path.isdir(os.path.join(args.workdir, "gguf")):
            t = time.perf_counter()
            print(f"making random real-size checkpoints in {args.workdir} ...", flush=True)
            _child(args, "make")
            print(f"made in {time.perf_counter() - t:.0f} s", flush=True)
        if args.batch_size:
            report_batches(args)
            return
        for seconds in (int(s) for s in args.seconds.split(",")):
            ours = _child(args, "ours", ["--seconds", str(seconds)])
            ref = None if args.no_torch else _child(args, "torch", ["--seconds", str(seconds), "--ours", json.dumps(ours)],
                                                    required=False)
            report(seconds, ours, ref, args.torch_dtype)
            if args.acestep_cpp:
                theirs = _child(args, "acestep-cpp", ["--seconds", str(seconds), "--ours", json.dumps(ours),
                                                      "--acestep-cpp", args.acestep_cpp], required=False)
                if theirs:
                    report_acestep_cpp(seconds, ours, theirs)
        print(cpu_summary(args.threads))
    finally:
        if not keep:
            shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
