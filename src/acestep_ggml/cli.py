"""`python -m acestep_ggml` / `acestep-ggml`: each subcommand is a thin front for one API call."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from .constants import (
    BASE_GUIDANCE,
    BASE_STEPS,
    DURATION_RANGE,
    LM_CFG_SCALE,
    LM_MODE_MAX_NEW_TOKENS,
    LM_NEGATIVE_PROMPT,
    LM_TEMPERATURE,
    LM_TOP_P,
    SHIFT,
    TIMESIGNATURES,
    TURBO_STEPS,
    UNDERSTAND_TEMPERATURE,
)

_STEPS_HELP = f"sampler steps (default {TURBO_STEPS} turbo, 50 SFT, {BASE_STEPS} base)"
_GUIDANCE_HELP = f"DiT guidance scale (default 1 turbo, {BASE_GUIDANCE:g} base/SFT)"
_SHIFT_HELP = (f"timestep shift (default per checkpoint: {SHIFT:g}, 1 for turbo-shift1; "
               "see acestep_ggml.checkpoints)")
_TIMESIGNATURE_HELP = f"beats per bar: {', '.join(TIMESIGNATURES[:-1])} or {TIMESIGNATURES[-1]}"

# Set by the CLI's SIGINT handler.  The first Ctrl-C raises KeyboardInterrupt as usual; if some
# library on the way swallows it, the next progress event (every LM token, DiT step and VAE
# tile) raises it again, so a job never runs on after Ctrl-C.
_INTERRUPTED = threading.Event()


def _on_sigint(signum, frame):
    _INTERRUPTED.set()
    raise KeyboardInterrupt


def _cmd_info(args: argparse.Namespace) -> int:
    from . import __version__, _core, backends

    info = _core.build_info()
    print(f"acestep-ggml {__version__}")
    print(f"ggml {info['ggml_version']} (commit {info['ggml_commit'][:12]})")
    print(f"backends: {', '.join(info['compiled_backends'])}")
    print("devices:")
    for d in backends():
        mem = f", {d['memory_total'] / 2**30:.1f} GiB" if d["memory_total"] else ""
        print(f"  {d['name']}: {d['description']} ({d['type']}{mem})")
    feats = [k for k, v in info["cpu_features"].items() if v]
    print(f"cpu variant: {info['cpu_variant']}")
    print(f"cpu features: {' '.join(feats) if feats else 'none'}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert

    written = convert(args.src, args.out_dir, dtype=args.dtype, quiet=args.quiet)
    for path in written:
        print(path)
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    from .convert.quantize import quantize_file

    types = quantize_file(args.input, args.output, args.type)
    counts: dict[str, int] = {}
    for t in types.values():
        counts[t] = counts.get(t, 0) + 1
    print(f"{args.output}: " + ", ".join(f"{n} {t}" for t, n in sorted(counts.items())))
    return 0


# The progress bars open now, closed before an error or an interrupt is reported.
_BARS: dict = {}


def _close_bars() -> None:
    for bar in _BARS.values():
        bar.close()
    _BARS.clear()


def _progress(quiet: bool):
    """The callback of the Python API: a tqdm bar per stage unless quiet, and a check for Ctrl-C."""
    bars = _BARS
    if not quiet:
        from tqdm import tqdm

    def report(stage: str, done: int, total: int) -> None:
        if _INTERRUPTED.is_set():
            raise KeyboardInterrupt
        if quiet:
            return
        bar = bars.get(stage)
        if bar is None:
            _close_bars()  # stages run one after another
            # total 0: a length not known ahead (the LM's chain of thought)
            bar = bars[stage] = tqdm(total=total or None, desc=stage, leave=False, file=sys.stderr,
                                     unit="tok" if stage.startswith("lm") else "it")
        bar.n = done
        bar.refresh()
        if total and done >= total:
            bars.pop(stage).close()

    return report


def _add_device_flags(s: argparse.ArgumentParser) -> None:
    s.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, vulkan, vulkan:N, metal, auto")
    s.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    s.add_argument("--int8", action="store_true",
                   help="int8 matmuls in the LM, DiT and encoders, on CPUs with AVX-512 VNNI (ACESTEP_GGML_INT8=1; "
                        "docs/building.md)")


def _add_dit_flag(s: argparse.ArgumentParser) -> None:
    s.add_argument("--dit", default=None, help="DiT variant in the file name: turbo (default), sft, base, xl-turbo, "
                                               "xl-sft, xl-base, turbo-shift3, ... (docs/models.md)")


def _add_task_flags(s: argparse.ArgumentParser) -> None:
    """The task flags of `synth` and `generate` (see acestep_ggml.tasks)."""
    from .tasks import POSTERIORS, TASKS

    g = s.add_argument_group("task", "cover, repaint/outpaint, extract, lego, complete; timbre from a reference")
    g.add_argument("--task", choices=TASKS, default=None, help="task type (default text2music)")
    g.add_argument("--src-audio", default=None, help="source audio file (cover, repaint, extract, lego, complete)")
    g.add_argument("--ref-audio", default=None, help="reference audio file whose timbre to borrow")
    g.add_argument("--repaint", nargs=2, type=float, metavar=("START", "END"), default=None,
                   help="window in seconds for repaint and lego; may reach before 0 or past the end (outpaint)")
    g.add_argument("--track", default=None, help="track for extract and lego, e.g. vocals, drums")
    g.add_argument("--track-classes", default=None, help="comma-separated tracks for complete, e.g. drums,bass")
    g.add_argument("--cover-strength", type=float, default=None,
                   help="cover: 0..1, below 1 blends in the text2music condition (default 1)")
    g.add_argument("--posterior", choices=POSTERIORS, default="sample",
                   help="encode source/reference audio as a seeded posterior draw (default) or its mean")


def _add_control_flags(s: argparse.ArgumentParser) -> None:
    """The sampling flags of `synth` and `generate` (acestep_ggml.request.Controls; docs/controls.md)."""
    from .constants import DCW_HIGH_SCALER, DCW_MODES, DCW_SCALER, REPAINT_MODES, SOLVERS, STORK_SUBSTEPS

    g = s.add_argument_group("sampling", "solver, guidance options, DCW, repaint mode, retake (docs/controls.md)")
    g.add_argument("--solver", choices=SOLVERS, default=None, help="DiT solver (default euler)")
    g.add_argument("--stork-substeps", type=int, default=None,
                   help=f"stork4: ROCK4 sub-steps, 2..148 (default {STORK_SUBSTEPS})")
    g.add_argument("--adg", action="store_true", default=None,
                   help="angle-based dynamic guidance instead of APG (base/SFT, guidance > 1)")
    g.add_argument("--cfg-interval", nargs=2, type=float, metavar=("START", "END"), default=None,
                   help="guide only steps whose timestep t (1 = noise) lies in [START, END] (default 0 1)")
    g.add_argument("--velocity-norm-threshold", type=float, default=None,
                   help="clamp |v| to this times |x| per step (default 0: off; upstream suggests 2)")
    g.add_argument("--velocity-ema", type=float, default=None, dest="velocity_ema_factor",
                   help="mix this share of the previous step's velocity in, 0..<1 (default 0: off)")
    g.add_argument("--dcw-mode", choices=DCW_MODES, default=None, help="turn DCW on in this mode (default off)")
    g.add_argument("--dcw-scaler", type=float, default=None, help=f"DCW strength (default {DCW_SCALER})")
    g.add_argument("--dcw-high-scaler", type=float, default=None,
                   help=f"DCW high-band strength of mode double (default {DCW_HIGH_SCALER})")
    g.add_argument("--repaint-mode", choices=REPAINT_MODES, default=None,
                   help="repaint/lego: how much source outside the window is held (default aggressive)")
    g.add_argument("--repaint-strength", type=float, default=None,
                   help="repaint mode balanced: 0 (conservative) .. 1 (aggressive) (default 0.5)")
    g.add_argument("--retake-seed", type=int, default=None, help="seed of the noise a retake mixes in")
    g.add_argument("--retake-variance", type=float, default=None,
                   help="0..1: how far the noise turns towards the retake seed's (default 0)")
    s.add_argument("--batch-size", type=int, default=None,
                   help="songs to make, item i with seed + i; -o song.wav writes song-1.wav ... song-N.wav")


_CONTROL_FLAGS = ("solver", "stork_substeps", "velocity_norm_threshold", "velocity_ema_factor", "dcw_mode",
                  "dcw_scaler", "dcw_high_scaler", "repaint_mode", "repaint_strength", "retake_seed", "retake_variance")


def _control_args(args: argparse.Namespace) -> dict:
    """The sampling flags given, as the API's keyword arguments."""
    out = {k: getattr(args, k) for k in _CONTROL_FLAGS if getattr(args, k) is not None}
    if args.adg:
        out["use_adg"] = True
    if args.cfg_interval:
        out["cfg_interval"] = tuple(args.cfg_interval)
    if args.batch_size is not None:
        out["batch_size"] = args.batch_size
    return out


def _report(output: str, result) -> None:
    """One line per written song: its path, length and seed."""
    from .pipeline import batch_paths

    results = result if isinstance(result, list) else [result]
    for r, path in zip(results, batch_paths(output, len(results))):
        print(f"{path}: {r.audio.shape[1] / r.sample_rate:.1f} s, seed {r.seed}", file=sys.stderr)


def _task_args(args: argparse.Namespace) -> dict:
    """The task flags as the API's keyword arguments; None where a flag was not given."""
    start, end = args.repaint if args.repaint else (None, None)
    classes = args.track_classes and [c.strip() for c in args.track_classes.split(",") if c.strip()]
    return {"task": args.task, "src_audio": args.src_audio, "ref_audio": args.ref_audio, "repainting_start": start,
            "repainting_end": end, "track_name": args.track, "track_classes": classes or None,
            "audio_cover_strength": args.cover_strength, "posterior": args.posterior}


def _load_noise(path: str):
    """The --init-noise array, or InputError naming the file."""
    import numpy as np

    from .errors import InputError

    try:
        return np.load(path)
    except (OSError, ValueError) as e:  # missing, unreadable, not .npy, pickled
        raise InputError(f"--init-noise: cannot read '{path}' as a .npy array: {e}") from None


def _read_lyrics(path: str) -> str:
    from .errors import InputError

    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--lyrics-file: cannot read '{path}' as UTF-8 text: {e}") from None


def _add_lora_flags(s: argparse.ArgumentParser) -> None:
    """The adapter flags of `synth` and `generate` (acestep_ggml.adapters; docs/adapters.md)."""
    s.add_argument("--lora", action="append", default=[], metavar="PATH",
                   help="adapter on the DiT: a PEFT folder or a .safetensors (LoRA, DoRA, LoKr); repeatable")
    s.add_argument("--lora-scale", action="append", type=float, default=[], metavar="S",
                   help="scale of the --lora at the same position (default 1.0); repeatable")
    s.add_argument("--lora-mode", choices=("merge", "runtime"), default="merge",
                   help="merge: into the weights at load (no per-step cost, default); runtime: unmerged branches")


def _lora_args(args: argparse.Namespace) -> dict:
    from .errors import InputError

    if len(args.lora_scale) > len(args.lora):
        raise InputError(f"{len(args.lora_scale)} --lora-scale values for {len(args.lora)} --lora adapters")
    if not args.lora:
        return {}
    if not args.quiet:  # what loaded: format, modules, rank
        import logging

        log = logging.getLogger("acestep_ggml.adapters")
        if not log.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            log.addHandler(handler)
            log.setLevel(logging.INFO)
    scales = args.lora_scale + [1.0] * (len(args.lora) - len(args.lora_scale))
    return {"loras": list(zip(args.lora, scales)), "lora_mode": args.lora_mode}


def _cmd_synth(args: argparse.Namespace) -> int:
    from .audio import check_output_path
    from .pipeline import synth_from_dir

    check_output_path(args.output, bitrate=args.bitrate)
    noise = _load_noise(args.init_noise) if args.init_noise else None
    result = synth_from_dir(args.input_dir, args.models, args.output, seed=args.seed, steps=args.steps,
                            shift=args.shift, guidance=args.guidance, init_noise=noise, device=args.device,
                            n_threads=args.threads, progress=_progress(args.quiet), bitrate=args.bitrate,
                            dit=args.dit, **_task_args(args), **_control_args(args), **_lora_args(args))
    if not args.quiet:
        _report(args.output, result)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from . import hub
    from .audio import check_output_path
    from .pipeline import generate

    check_output_path(args.output, bitrate=args.bitrate)
    lyrics = _read_lyrics(args.lyrics_file) if args.lyrics_file else args.lyrics
    result = generate(args.models or hub.GGUF_REPO, args.caption, lyrics, duration=args.duration, bpm=args.bpm,
                      keyscale=args.keyscale, timesignature=args.timesignature, language=args.language,
                      seed=args.seed, steps=args.steps, guidance=args.guidance, shift=args.shift,
                      use_lm=not args.no_lm, lm=args.lm, dit=args.dit, device=args.device, n_threads=args.threads,
                      progress=_progress(args.quiet), quiet=args.quiet, **_lm_prompt_args(args),
                      lm_mode=args.lm_mode, instrumental=args.instrumental,
                      **{k: v for k, v in _task_args(args).items() if v is not None}, **_control_args(args),
                      **_lora_args(args))
    from .pipeline import batch_paths

    results = result if isinstance(result, list) else [result]
    for r, path in zip(results, batch_paths(args.output, len(results))):
        r.save(path, bitrate=args.bitrate)
    if not args.quiet:
        _report(args.output, result)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .server import run

    return run(args)


def _cmd_batch(args: argparse.Namespace) -> int:
    from . import hub
    from .batch import render_table

    result = render_table(args.table, args.models or hub.GGUF_REPO, args.output_dir, ray=args.ray, address=args.address,
                          workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                          gpus_per_worker=args.gpus_per_worker, device=args.device, n_threads=args.threads, lm=args.lm,
                          quiet=args.quiet)
    print(f"{result.rendered} rendered, {len(result.failed)} failed, {result.skipped} already there; "
          f"manifest: {result.manifest}", file=sys.stderr)
    return 1 if result.failed else 0


def _cmd_download(args: argparse.Namespace) -> int:
    from . import hub

    print(hub.download(args.repo or hub.GGUF_REPO, tuple(args.files) if args.files else None, quiet=args.quiet,
                       device=args.device))
    return 0


def _cmd_lm(args: argparse.Namespace) -> int:
    from . import lm_modes
    from .exchange import check_writable, write_request
    from .lm import LM
    from .request import Request, given_metadata

    req = Request(caption=args.caption, lyrics=args.lyrics, bpm=args.bpm, duration=args.duration,
                  keyscale=args.keyscale, timesignature=args.timesignature, language=args.language)
    # Before the LM loads (or downloads): the metadata it is given and where its output goes.
    given_metadata(req)
    check_writable(args.output_dir)
    common = dict(temperature=args.temperature, top_k=args.top_k, seed=args.seed, fsm=args.fsm,
                  progress=_progress(args.quiet))
    if args.lm_mode == "generate":
        kwargs = dict(cfg_scale=args.cfg_scale, top_p=LM_TOP_P if args.top_p is None else args.top_p,
                      **_lm_prompt_args(args))
    else:  # upstream's inspire and format: no CFG, no top-p unless given
        kwargs = dict(top_p=args.top_p, max_new_tokens=args.max_new_tokens)
    lm = LM.from_models(args.models, args.lm, device=args.device, n_threads=args.threads)
    out = lm_modes.run(lm, req, args.lm_mode, instrumental=args.instrumental, **common, **kwargs)
    write_request(args.output_dir, out)
    print(args.output_dir)
    return 0


def _cmd_understand(args: argparse.Namespace) -> int:
    from .exchange import check_writable, parse_codes, write_request
    from .pipeline import understand

    if (args.audio is None) == (args.codes is None):
        from .errors import InputError

        raise InputError("give an audio file or --codes FILE (exactly one)")
    codes = None
    if args.codes:
        with open(args.codes, encoding="utf-8") as f:
            codes = parse_codes(f.read(), args.codes)
    check_writable(args.output_dir)
    out = understand(args.models, args.audio, codes=codes, lm=args.lm, device=args.device, n_threads=args.threads,
                     quiet=args.quiet, seed=args.seed, posterior=args.posterior, temperature=args.temperature,
                     top_p=args.top_p, top_k=args.top_k, fsm=args.fsm, max_new_tokens=args.max_new_tokens,
                     progress=_progress(args.quiet))
    write_request(args.output_dir, out)
    print(args.output_dir)
    return 0


def _add_lm_mode_options(s: argparse.ArgumentParser, generate: bool) -> None:
    """--lm-mode and its option (see acestep_ggml.lm_modes)."""
    from .lm_modes import LM_MODES

    s.add_argument("--lm-mode", choices=LM_MODES, default="generate",
                   help="generate: metadata and audio codes (default); inspire: the caption is a query the LM "
                        "turns into a song (caption, lyrics, metadata)" + ("" if generate else ", no codes")
                        + "; format: the LM rewrites caption and lyrics and writes the metadata"
                        + (", then the codes" if generate else ", no codes"))
    s.add_argument("--instrumental", action="store_true", help="inspire: an instrumental song")


def _lm_prompt_args(args: argparse.Namespace) -> dict:
    return dict(rewrite_caption=not args.no_rewrite_caption, negative_prompt=args.negative_prompt,
                legacy_cfg_prompt=args.legacy_cfg_prompt)


def _add_lm_prompt_options(s: argparse.ArgumentParser) -> None:
    """The LM switches the original lets a user set."""
    s.add_argument("--no-rewrite-caption", action="store_true",
                   help="keep the caption as given (default: the LM writes its own into the CoT and the DiT's prompt)")
    s.add_argument("--negative-prompt", default=None,
                   help=f"the LM's unconditional prompt for CFG (default: {LM_NEGATIVE_PROMPT})")
    s.add_argument("--legacy-cfg-prompt", action="store_true",
                   help="the ace-step15-fork package's LM prompts (closed assistant turn, caption and lyrics in "
                        "the unconditional prompt, CFG in the chain of thought)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="acestep-ggml", description="ACE-Step 1.5 music generation on GGML")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="package and ggml versions, devices, CPU features")
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("convert", help="convert checkpoints (original or diffusers layout) to GGUF files")
    s.add_argument("src", help="checkpoint directory: original layout, diffusers pipeline, or one component folder")
    s.add_argument("out_dir", help="directory for the GGUF files")
    s.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32", "q8_0", "q6_k", "q5_k_m", "q4_k_m",
                                                       "q5_0", "q4_0"],
                   help="weight type of the matrices (default bf16, as published; the quantized types: "
                        "docs/quantization.md)")
    s.add_argument("--quiet", action="store_true", help="no progress output")
    s.set_defaults(func=_cmd_convert)

    s = sub.add_parser("quantize", help="a converted or downloaded GGUF -> the same model with quantized matrices")
    s.add_argument("input", help="GGUF file (DiT, text encoder or LM; BF16, F16 or F32)")
    s.add_argument("output", help="GGUF file to write")
    s.add_argument("type", help="q8_0, q6_k, q5_k_m, q4_k_m, q5_0 or q4_0 (docs/quantization.md)")
    s.set_defaults(func=_cmd_quantize)

    s = sub.add_parser("synth", help="exchange directory -> audio file (text encoder, DiT, VAE)")
    s.add_argument("--input-dir", required=True, help="exchange directory (caption, lyrics, codes, bpm, ...)")
    s.add_argument("--models", required=True, help="folder of GGUF files written by `convert` or downloaded")
    s.add_argument("--output", "-o", required=True, help="output audio file (.wav, .flac, .ogg or .mp3)")
    s.add_argument("--bitrate", type=int, default=None, help="kbit/s of an .mp3 output (default 320)")
    s.add_argument("--seed", type=int, default=None, help="noise seed (default: random, printed)")
    s.add_argument("--steps", type=int, default=None, help=_STEPS_HELP)
    s.add_argument("--shift", type=float, default=None, help=_SHIFT_HELP)
    s.add_argument("--guidance", type=float, default=None, help=_GUIDANCE_HELP)
    s.add_argument("--init-noise", default=None, help="initial noise as a (T, 64) float32 .npy file")
    _add_device_flags(s)
    _add_dit_flag(s)
    s.add_argument("--quiet", action="store_true", help="no progress output")
    _add_task_flags(s)
    _add_control_flags(s)
    _add_lora_flags(s)
    s.set_defaults(func=_cmd_synth)
    s = sub.add_parser("lm", help="5 Hz LM: caption (+ lyrics, metadata) -> metadata and audio codes in an "
                                  "exchange directory")
    s.add_argument("--models", required=True, help="folder of GGUFs (or checkpoints / hub repo)")
    s.add_argument("--lm", default=None, help="LM size in the file name (0.6B, 1.7B, 4B) or a GGUF file")
    s.add_argument("--caption", required=True)
    s.add_argument("--lyrics", default="")
    s.add_argument("--bpm", type=int)
    s.add_argument("--duration", type=int, help=f"seconds, {DURATION_RANGE[0]}..{DURATION_RANGE[1]} (default: the LM chooses)")
    s.add_argument("--keyscale", help="e.g. 'F# minor'")
    s.add_argument("--timesignature", type=int, help=_TIMESIGNATURE_HELP)
    s.add_argument("--language", default=None, help="vocal language code (default: the LM chooses)")
    s.add_argument("--cfg-scale", type=float, default=LM_CFG_SCALE)
    s.add_argument("--temperature", type=float, default=LM_TEMPERATURE)
    s.add_argument("--top-p", type=float, default=None, help=f"default {LM_TOP_P} (generate), off (inspire, format)")
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--fsm", action=argparse.BooleanOptionalAction, default=True,
                   help="constrained decoding (default on)")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--max-new-tokens", type=int, default=LM_MODE_MAX_NEW_TOKENS,
                   help=f"inspire, format: the longest answer in tokens (default {LM_MODE_MAX_NEW_TOKENS})")
    _add_device_flags(s)
    s.add_argument("--output-dir", required=True, help="exchange directory to write")
    s.add_argument("--quiet", action="store_true", help="no progress output")
    _add_lm_prompt_options(s)
    _add_lm_mode_options(s, generate=False)
    s.set_defaults(func=_cmd_lm)

    s = sub.add_parser("understand", help="audio (or its 5 Hz codes) -> caption, lyrics and metadata in an exchange "
                                          "directory that `synth` renders again")
    s.add_argument("audio", nargs="?", default=None, help="audio file (wav, flac, ogg, mp3)")
    s.add_argument("--codes", default=None, help="a codes file (comma-separated 0..63999) instead of audio")
    s.add_argument("--models", required=True, help="folder of GGUFs (or checkpoints / hub repo)")
    s.add_argument("--lm", default=None, help="LM size in the file name (0.6B, 1.7B, 4B) or a GGUF file")
    s.add_argument("--temperature", type=float, default=UNDERSTAND_TEMPERATURE)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--fsm", action=argparse.BooleanOptionalAction, default=True,
                   help="constrained decoding (default on)")
    s.add_argument("--max-new-tokens", type=int, default=LM_MODE_MAX_NEW_TOKENS,
                   help=f"the longest answer in tokens (default {LM_MODE_MAX_NEW_TOKENS})")
    s.add_argument("--seed", type=int, default=None, help="seed of the VAE posterior draw and the LM sampling")
    s.add_argument("--posterior", choices=("sample", "mean"), default="sample",
                   help="encode the audio as a seeded posterior draw (default, as upstream) or its mean")
    _add_device_flags(s)
    s.add_argument("--output-dir", required=True, help="exchange directory to write")
    s.add_argument("--quiet", action="store_true", help="no progress output")
    s.set_defaults(func=_cmd_understand)

    s = sub.add_parser("generate", help="caption (+ lyrics) -> song: the LM, then the synth stage")
    s.add_argument("--caption", required=True, help="what the music sounds like")
    lyr = s.add_mutually_exclusive_group()
    lyr.add_argument("--lyrics", default="", help="lyrics text ([Verse], [Chorus] tags welcome)")
    lyr.add_argument("--lyrics-file", default=None, help="read the lyrics from a UTF-8 file")
    s.add_argument("--duration", type=int, default=None, help="seconds (default: the LM chooses; 120 with --no-lm)")
    s.add_argument("--bpm", type=int, default=None)
    s.add_argument("--keyscale", default=None, help="e.g. 'F# minor'")
    s.add_argument("--timesignature", type=int, default=None, help=_TIMESIGNATURE_HELP)
    s.add_argument("--language", default=None,
                   help="vocal language code (default: the LM chooses; 'unknown' with --no-lm)")
    s.add_argument("--seed", type=int, default=None, help="seed of the LM sampling and the noise (default random)")
    s.add_argument("--steps", type=int, default=None, help=_STEPS_HELP)
    s.add_argument("--guidance", type=float, default=None, help=_GUIDANCE_HELP)
    s.add_argument("--shift", type=float, default=None, help=_SHIFT_HELP)
    s.add_argument("--no-lm", action="store_true", help="skip the LM: synthesise from noise, no audio codes")
    s.add_argument("--lm", default=None, help="LM size in the file name (0.6B, 1.7B, 4B) or a GGUF file")
    s.add_argument("--models", default=None,
                   help="GGUF folder, checkpoint folder or hub repo (default: the published GGUFs, from the cache)")
    _add_device_flags(s)
    _add_dit_flag(s)
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--output", "-o", required=True, help="output audio file (.wav, .flac, .ogg or .mp3)")
    s.add_argument("--bitrate", type=int, default=None, help="kbit/s of an .mp3 output (default 320)")
    _add_task_flags(s)
    _add_control_flags(s)
    _add_lm_prompt_options(s)
    _add_lm_mode_options(s, generate=True)
    _add_lora_flags(s)
    s.set_defaults(func=_cmd_generate)

    s = sub.add_parser("serve", help="HTTP server: acestep.cpp's job API, progress events, a web page at /")
    from .server import add_arguments

    add_arguments(s)
    s.set_defaults(func=_cmd_serve)

    s = sub.add_parser("batch", help="a table of songs (JSONL, CSV, Parquet) -> a file per row and a manifest; "
                                     "resumable; here or on a Ray cluster")
    s.add_argument("table", help="one row per song: an id and the API's fields (caption, lyrics, duration, seed, ...)")
    s.add_argument("--models", default=None,
                   help="GGUF folder, checkpoint folder or hub repo (default: the published GGUFs, from the cache)")
    s.add_argument("--output-dir", required=True, help="folder for <id>.<format> per row and manifest.jsonl")
    s.add_argument("--ray", action="store_true", help='render on a Ray cluster (pip install "acestep-ggml[ray]")')
    s.add_argument("--address", default=None, help="the Ray cluster (default: RAY_ADDRESS, the local one, or a new "
                                                   "one in this process; auto: the local one)")
    s.add_argument("--workers", type=int, default=None, help="Ray workers (default: as many as the cluster holds)")
    s.add_argument("--cpus-per-worker", type=float, default=1, help="CPUs a Ray worker takes: its threads (default 1)")
    s.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs a Ray worker takes (default 1 with a GPU --device on a cluster with GPUs, else 0)")
    s.add_argument("--lm", default=None, help="LM size in the file name (0.6B, 1.7B, 4B) or a GGUF file")
    s.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, vulkan, vulkan:N, metal, auto")
    s.add_argument("--threads", type=int, default=None, help="CPU threads without --ray (default: all cores)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_batch)

    s = sub.add_parser("download", help="fetch the default GGUF model set into the Hugging Face cache")
    s.add_argument("--repo", default=None, help="hub repo (default: the published ACE-Step 1.5 GGUFs)")
    s.add_argument("--files", nargs="*", default=None, help="file names or patterns (default: the set `generate` "
                                                             "uses: turbo DiT, text encoder, VAE, the LM this "
                                                             "machine's memory holds)")
    s.add_argument("--device", default="cpu", help="the device the LM is chosen for (default cpu)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_download)
    return p


def main(argv: list[str] | None = None) -> int:
    """Runs one subcommand.  Every error of the package (acestep_ggml.errors) and of the system
    (a file that cannot be read or written) ends as one line ``error: ...`` and exit status 2;
    Ctrl-C as ``interrupted`` and 130.  A traceback means a bug."""
    args = build_parser().parse_args(argv)
    from .errors import AcestepError

    if getattr(args, "int8", False):
        os.environ["ACESTEP_GGML_INT8"] = "1"  # read by the core when each model loads

    # Only where Python's own handler is in place: a SIGINT ignored by the parent (a background
    # job of a non-interactive shell) stays ignored, as Python itself leaves it.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main_thread else None
    ours = previous is signal.default_int_handler
    if ours:
        signal.signal(signal.SIGINT, _on_sigint)
    try:
        try:
            return args.func(args)
        finally:
            _close_bars()  # before anything more is printed
    except (AcestepError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if ours:
            signal.signal(signal.SIGINT, previous)
        _INTERRUPTED.clear()


if __name__ == "__main__":
    sys.exit(main())
