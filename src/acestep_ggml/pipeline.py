"""The synth stage end to end: request -> (VAE encoder: source and reference audio) -> text
encoder -> condition encoder -> source latents (the task's: detokenized codes, the source's
latents, or the silence latent; see acestep_ggml.tasks) -> DiT sampling -> VAE -> stereo 48 kHz audio.

Each stage is a native model; this module only routes arrays between them, in the order of
diffusers' AceStepPipeline.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import adapters, flow, memory, tasks
from . import audio as audio_io
from .checkpoints import sampler_defaults
from .constants import (
    LATENTS_PER_CODE,
    MAX_DURATION,
    MAX_LATENT_FRAMES,
    TASK_INSTRUCTIONS,
    TURBO_STEPS,
)
from .errors import InputError
from .hub import SYNTH_KINDS, ModelSet, find_models, is_repo_id, resolve
from .models import VAE, AudioTokenizer, ConditionEncoder, Detokenizer, DiT, TextEncoder
from .request import AudioInput, Controls, Request, check_for_synth, check_task, given_metadata
from .tokenizer import Tokenizer

# progress(stage, done, total), in the order they run: "lm-metadata" (LM tokens of the chain of
# thought; total 0 as its length is not known ahead), "lm-answer" (LM tokens of understand,
# inspire and format; total 0), "lm-codes" (audio codes written), "encode"
# (VAE-encoded tiles of source and reference audio), "text", "condition", "tokenize" (source
# latents to codes, cover), "codes" (detokenizer), "dit" (sampler steps), "vae" (decoded tiles).
Progress = Callable[[str, int, int], None]


def check_batch_size(batch_size) -> int:
    """``batch_size`` as a positive int, or an InputError naming it."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return int(batch_size)


def batch_paths(output: str | os.PathLike, n: int) -> list[Path]:
    """Where a batch's songs go: ``song.wav`` itself for one, ``song-1.wav`` ... ``song-N.wav`` for more."""
    p = Path(output)
    return [p] if n == 1 else [p.with_name(f"{p.stem}-{i}{p.suffix}") for i in range(1, n + 1)]


def new_seed() -> int:
    """A fresh random seed for runs that were given none (reported back in the result)."""
    return int.from_bytes(os.urandom(4), "little")


@dataclass
class SynthResult:
    """Stereo audio (2, N) float32 at `sample_rate`, the clean latents, what made them, and,
    with ``keep_stages=True``, every intermediate array (for stage-by-stage comparisons)."""

    audio: np.ndarray
    sample_rate: int
    latents: np.ndarray
    request: Request
    seed: int
    stages: dict[str, np.ndarray] = field(default_factory=dict)

    def save(self, path: str | os.PathLike, **kwargs) -> None:
        """Write the audio; the format follows the extension (see acestep_ggml.write_audio)."""
        audio_io.write_audio(path, self.audio, self.sample_rate, **kwargs)


class Synthesizer:
    """The synth stage over a folder of GGUFs, a checkpoint folder or hub repo (see ``hub.resolve``),
    or a ModelSet.

    Models load on first use; with ``keep_loaded=False`` (default) each stage's weights are freed
    as soon as the stage is done, so peak memory is that of the largest stage, not their sum.
    """

    def __init__(self, models: str | os.PathLike | ModelSet, device: str = "cpu", n_threads: Optional[int] = None,
                 keep_loaded: bool = False, dit: Optional[str] = None, loras: Optional[list] = None,
                 lora_mode: str = "merge"):
        self.models = models if isinstance(models, ModelSet) else find_models(resolve(
            models, kinds=SYNTH_KINDS, device=device, prefer={"acestep-dit": dit} if dit else None))
        self.device, self.n_threads, self.keep_loaded = device, n_threads, keep_loaded
        self.paths = {
            "dit": self.models.get("acestep-dit", prefer=dit),
            "text": self.models.get("acestep-text-enc"),
            "vae": self.models.get("acestep-vae"),
        }
        self._loaded: dict[str, object] = {}
        self._tokenizer: Optional[Tokenizer] = None
        # Each file is opened once, here, and shared by the models built from it (the DiT file feeds
        # four: the DiT, the condition encoder, the audio tokenizer and the detokenizer); the core
        # reads and checks its hyperparameters on opening.
        self.files = {name: self.models.open(path) for name, path in self.paths.items()}
        self.files["dit"].expect_architecture("acestep-dit")
        self.files["vae"].expect_architecture("acestep-vae")
        self.is_turbo = self.files["dit"].hparams.is_turbo
        vae = self.files["vae"].hparams
        self.sample_rate, self.latents_per_second = vae.sampling_rate, vae.sampling_rate / vae.hop_length
        self.defaults = sampler_defaults(Path(self.paths["dit"]).name, self.is_turbo, self.files["dit"].hparams.shift)
        # Adapters on the DiT (acestep_ggml.adapters, docs/adapters.md): read once, applied to
        # each DiT this object loads; "merge" writes them into the weights, "runtime" adds them
        # in the graph, so that set_loras swaps them without touching the weights.
        if lora_mode not in adapters.MODES:
            raise InputError(f"unknown lora_mode {lora_mode!r}: choose one of {', '.join(adapters.MODES)}")
        self.lora_mode = lora_mode
        self._adapters: list = []
        self._applied: Optional[adapters.Applied] = None
        if loras:
            self.set_loras(loras)

    def set_loras(self, loras: list) -> list[str]:
        """Replaces the DiT's adapters with ``[(path, scale), ...]`` (``[]``: none) and returns
        what loaded, one line per adapter (format, modules, rank).  A loaded DiT keeps its
        weights: in runtime mode only the adapters change; in merge mode the merged weights go
        back to the file's values and the new set is merged.  AdapterError for a bad adapter
        (nothing changes then)."""
        wanted = adapters.check_loras(loras)
        targets = {name: tuple(shape) for name, shape, _ in self.files["dit"].tensors()
                   if name.startswith("decoder.") and name.endswith(".weight") and len(shape) == 2}
        parsed = [(adapters.load_adapter(path, targets), scale) for path, scale in wanted]
        self._adapters = parsed
        report = [f"{a.describe()}, scale {scale:g}, {self.lora_mode}" for a, scale in parsed]
        for line in report:
            adapters.log.info("LoRA %s", line)
        if "dit" in self._loaded:
            self._apply_loras(self._loaded["dit"])
        return report

    def _apply_loras(self, dit):
        if self._applied is None or self._applied.dit is not dit._m:
            if not self._adapters:
                return dit
            self._applied = adapters.Applied(dit._m, self.lora_mode)
        self._applied.set(self._adapters)
        return dit

    # -- model lifetime ---------------------------------------------------------------
    def _model(self, name: str):
        if name not in self._loaded:
            f, kw = self.files, dict(device=self.device, n_threads=self.n_threads)
            make = {
                "text": lambda: TextEncoder(f["text"], **kw),
                "condition": lambda: ConditionEncoder(f["dit"], f["text"], **kw),
                "detokenizer": lambda: Detokenizer(f["dit"], **kw),
                "audio_tokenizer": lambda: AudioTokenizer(f["dit"], **kw),
                "dit": lambda: self._apply_loras(DiT(f["dit"], **kw)),
                "vae": lambda: VAE(f["vae"], **kw),
            }[name]
            self._loaded[name] = make()
        return self._loaded[name]

    _holding = False  # render's preparation: stages stay loaded until every item has passed

    def _done(self, name: str) -> None:
        if not self.keep_loaded and not self._holding:
            self._loaded.pop(name, None)

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer.from_gguf(self.files["text"])
        return self._tokenizer

    def _load_audio(self, source, what: str) -> Optional[np.ndarray]:
        if source is None:
            return None
        try:
            return audio_io.load_audio(source, self.sample_rate)
        except InputError as e:
            raise InputError(f"{what}: {e}") from None

    def _encode(self, wave: np.ndarray, posterior: str, seed: int, report: Progress) -> np.ndarray:
        """Latents (T, 64) of (2, N) audio: the VAE posterior's mean, or a draw seeded by ``seed``."""
        vae = self._model("vae")
        return vae.encode(wave, sample=posterior == "sample", seed=seed,
                          progress=lambda done, total: report("encode", done, total))

    def audio_codes(self, audio: AudioInput, *, seed: Optional[int] = None, posterior: str = "sample",
                    progress: Optional[Progress] = None) -> list[int]:
        """The 5 Hz codes of ``audio`` (a file or (2, N) samples), as upstream's
        ``convert_src_audio_to_codes``: VAE encode (a seeded posterior draw, or its mean), then the
        audio tokenizer.  InputError for silent audio ("appears to be silent": every sample
        below 1e-6) and for audio shorter than one latent frame or longer than 600 s."""
        tasks.check_fields("text2music", has_source=False, has_codes=False, repainting_start=None,
                           repainting_end=None, track_name=None, track_classes=None, audio_cover_strength=1.0,
                           posterior=posterior)
        wave = self._load_audio(audio, "audio")
        rate, lps = self.sample_rate, self.latents_per_second
        if not 1 / lps <= wave.shape[1] / rate <= MAX_DURATION:
            raise InputError(f"audio lasts {wave.shape[1] / rate:.3f} s; understand takes {1 / lps:g} s "
                             f"(one latent frame) to {MAX_DURATION} s")
        if not np.any(np.abs(wave) >= 1e-6):
            raise InputError("audio appears to be silent")
        report = progress or (lambda stage, done, total: None)
        latents = self._encode(wave, posterior, new_seed() if seed is None else seed, report)
        self._done("vae")
        report("tokenize", 0, 1)
        codes = self._model("audio_tokenizer").tokenize(latents)
        self._done("audio_tokenizer")
        report("tokenize", 1, 1)
        return [int(c) for c in codes]

    def check_memory(self, request: Request, guidance: float = 1.0, src_wave: Optional[np.ndarray] = None,
                     songs: int = 1) -> None:
        """MemoryRefused when the song (``songs`` of them, rendered as one batch) would need more
        memory than the device or host has free (acestep_ggml.memory): checked by ``__call__``
        before any model loads."""
        lps, rate = self.latents_per_second, self.sample_rate
        if request.codes:
            duration = len(request.codes) * LATENTS_PER_CODE / lps
        elif src_wave is not None:
            duration = src_wave.shape[1] / rate
        else:
            duration = request.resolved_duration()
        frames = math.ceil(duration * lps)
        if frames > MAX_LATENT_FRAMES:  # a VAE whose rate and hop disagree with the DiT's 25 Hz
            raise InputError(f"a {duration:g} s song is {frames} latent frames at this VAE's {lps:g} latents per "
                             f"second ({self.paths['vae']}); the DiT takes at most {MAX_LATENT_FRAMES}")
        src_frames = 0 if src_wave is None else math.ceil(src_wave.shape[1] / rate * lps)
        needs = memory.synth_needs(self.files, self.paths, duration, guidance, src_frames, songs)
        memory.check(needs, self.device, self.keep_loaded, what=f"a {duration:g} s song")

    # -- the job ------------------------------------------------------------------------
    def __call__(self, request: Request, *, seed: Optional[int] = None, steps: Optional[int] = None,
                 shift: Optional[float] = None, guidance: Optional[float] = None, timesteps=None,
                 init_noise: Optional[np.ndarray] = None, posterior: str = "sample",
                 progress: Optional[Progress] = None, keep_stages: bool = False,
                 controls: Optional[Controls] = None, batch_size: Optional[int] = None,
                 **options) -> SynthResult | list[SynthResult]:
        """Renders ``request`` (its task and audio inputs included, see acestep_ggml.tasks).

        Source and reference audio are encoded as a draw from the VAE posterior seeded from
        ``seed``, as the original does, or at its mean with ``posterior="mean"``.
        ``controls`` and ``options`` (its fields by name: ``solver="sde"``, ``dcw_mode="low"``,
        ``cfg_interval=(0.2, 1.0)``, ``repaint_mode=...``, ``retake_seed=...``, ...) choose how
        the DiT samples; see :class:`acestep_ggml.request.Controls` and docs/controls.md.

        ``batch_size=N`` returns a list of N results, item i the song of ``seed + i``; the DiT
        steps the items together (see :meth:`render`)."""
        controls = Controls.of(controls, **options)
        if batch_size is not None:
            n = check_batch_size(batch_size)
            if init_noise is not None and n > 1:
                raise InputError("init_noise is one song's noise; a batch_size > 1 draws each item's from its seed")
            seed = new_seed() if seed is None else seed
            return self.render([request] * n, [seed + i for i in range(n)], steps=steps, shift=shift,
                               guidance=guidance, timesteps=timesteps, init_noise=init_noise, posterior=posterior,
                               progress=progress, keep_stages=keep_stages, controls=controls)
        return self.render([request], [seed], steps=steps, shift=shift, guidance=guidance, timesteps=timesteps,
                           init_noise=init_noise, posterior=posterior, progress=progress, keep_stages=keep_stages,
                           controls=controls)[0]

    def render(self, requests: list[Request], seeds: list[Optional[int]], *, steps: Optional[int] = None,
               shift: Optional[float] = None, guidance: Optional[float] = None, timesteps=None,
               init_noise: Optional[np.ndarray] = None, posterior: str = "sample",
               progress: Optional[Progress] = None, keep_stages: bool = False,
               controls: Optional[Controls] = None) -> list[SynthResult]:
        """Renders several songs, item i ``requests[i]`` from ``seeds[i]`` (None: a fresh seed),
        each exactly as alone.  Text, condition and detokenizer run per item; the DiT then steps
        every group of items whose latent length and encoder length agree as one batch (2 rows
        per item where guided, one elsewhere), each row with its own noise and conditions; the
        VAE decodes each song's tiles."""
        controls = controls or Controls()
        report = progress or (lambda stage, done, total: None)
        self._holding = True  # each stage's weights serve every item before they are freed
        try:
            items = [self._prepare(r, s, steps=steps, shift=shift, guidance=guidance, timesteps=timesteps,
                                   init_noise=init_noise, posterior=posterior, report=report,
                                   keep_stages=keep_stages, controls=controls, songs=len(requests))
                     for r, s in zip(requests, seeds)]
        finally:
            self._holding = False
            for name in ("vae", "text", "condition", "audio_tokenizer", "detokenizer"):
                self._done(name)
        groups: dict[tuple, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(it.shape_key(), []).append(i)
        x0s: list[Optional[np.ndarray]] = [None] * len(items)
        for idx in groups.values():
            for i, x0 in zip(idx, self._sample([items[i] for i in idx], controls, report, keep_stages)):
                x0s[i] = x0
        self._done("dit")
        return [self._finish(it, x0, controls, report) for it, x0 in zip(items, x0s)]

    def _prepare(self, request: Request, seed: Optional[int], *, steps, shift, guidance, timesteps, init_noise,
                 posterior, report: Progress, keep_stages: bool, controls: Controls, songs: int = 1) -> "_Item":
        """One item up to the DiT: checks, audio in, text, condition, source latents, noise."""
        check_for_synth(request, posterior)
        if controls.repaint_mode != Controls.repaint_mode and request.task not in tasks.WINDOW_TASKS:
            raise InputError(f"repaint_mode applies to repaint and lego, not '{request.task}'")
        d = self.defaults  # steps, shift and guidance per checkpoint (acestep_ggml.checkpoints)
        shift = d.shift if shift is None else shift
        if steps is not None and steps < 1:
            raise InputError(f"steps must be at least 1, got {steps}")
        if not (math.isfinite(shift) and shift > 0):
            raise InputError(f"shift must be a positive number, got {shift}")
        has_codes = bool(request.codes)
        # Codes without a task are the LM's: a cover of them, as diffusers switches its task.
        task = "cover" if has_codes else request.task
        turbo = self.is_turbo
        steps = steps if steps is not None else d.steps
        guidance = guidance if guidance is not None else d.guidance
        if d.shift_range and not d.shift_range[0] <= shift <= d.shift_range[1]:
            warnings.warn(f"this {d.variant} DiT was distilled for shift {d.shift_range[0]:g}"
                          + ("" if d.shift_range[0] == d.shift_range[1] else f" to {d.shift_range[1]:g}")
                          + f"; shift {shift:g} may sound out of tune", stacklevel=2)
        if turbo and steps > TURBO_STEPS:
            warnings.warn(f"a turbo DiT is distilled for {TURBO_STEPS} steps; {steps} steps may sound worse",
                          stacklevel=2)
        if seed is None:
            seed = new_seed()
        stages: dict[str, np.ndarray] = {}
        keep = (lambda k, v: stages.__setitem__(k, np.array(v, copy=True))) if keep_stages else (lambda k, v: None)
        lps, rate = self.latents_per_second, self.sample_rate

        # Audio in, before any model runs: a bad file or window fails fast.
        src_wave = self._load_audio(request.src_audio, "src_audio")
        ref_wave = self._load_audio(request.ref_audio, "ref_audio")
        window = None
        if src_wave is not None and task in tasks.WINDOW_TASKS:
            src_wave, window = tasks.outpaint(src_wave, rate, request.repainting_start, request.repainting_end,
                                              MAX_DURATION)
        if src_wave is not None and not 1 / lps <= src_wave.shape[1] / rate <= MAX_DURATION:
            raise InputError(f"src_audio lasts {src_wave.shape[1] / rate:.3f} s; the synth stage takes "
                             f"{1 / lps:g} s (one latent frame) to {MAX_DURATION} s")

        # The memory this song needs, against what is free, before any model loads.
        self.check_memory(request, guidance, src_wave, songs)

        # Separate noise streams for the two posterior draws, apart from the DiT's initial noise.
        src_seed, ref_seed = (int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(2))
        src_latents = ref_latents = None
        if src_wave is not None:
            src_latents = self._encode(src_wave, posterior, src_seed, report)
            keep("src_latents", src_latents)
        if ref_wave is not None:
            ref_latents = self._encode(tasks.reference_clip(ref_wave, rate), posterior, ref_seed, report)
            keep("ref_latents", ref_latents)
        self._done("vae")

        if has_codes:
            duration = len(request.codes) * LATENTS_PER_CODE / lps
        elif src_wave is not None:
            duration = src_wave.shape[1] / rate
        else:
            duration = request.resolved_duration()

        # Text: the caption prompt through the whole encoder, the lyrics through its embedding table only.
        # A cover blended with text2music (audio_cover_strength < 1) also conditions on the text2music prompt.
        blend = task in tasks.COVER_TASKS and request.audio_cover_strength < 1.0
        instructions = [tasks.instruction(task, request.track_name, request.track_classes)]
        if blend:
            instructions.append(TASK_INSTRUCTIONS["text2music"])
        tok = self.tokenizer
        timesignature = None if request.timesignature is None else str(request.timesignature)
        text_ids = [tok.text_ids(request.caption, instruction=i, bpm=request.bpm, timesignature=timesignature,
                                 keyscale=request.keyscale, duration=duration) for i in instructions]
        lyric_ids = tok.lyric_ids(request.lyrics, request.language or "unknown")
        report("text", 0, 1)
        text_hidden = [self._model("text").encode(ids) for ids in text_ids]
        keep("text_hidden", text_hidden[0])
        if keep_stages:
            keep("lyric_embed", self._model("text").embed(lyric_ids))
        self._done("text")
        report("text", 1, 1)

        report("condition", 0, 1)
        cond = self._model("condition")
        enc_hidden, *non_cover = [cond.encode(h, lyric_ids, ref_latents)[0] for h in text_hidden]
        silence = cond.silence_latent
        null_emb = cond.null_condition_emb if guidance > 1.0 else None
        del cond  # a local reference would keep the weights alive through the DiT and VAE
        self._done("condition")
        keep("enc_hidden", enc_hidden)
        if blend:
            keep("enc_hidden_non_cover", non_cover[0])
        report("condition", 1, 1)

        codes = request.codes
        # cover-nofsq skips this round trip: the source latents are the context as they are.
        if task == "cover" and src_latents is not None:
            report("tokenize", 0, 1)
            codes = self._model("audio_tokenizer").tokenize(src_latents)
            self._done("audio_tokenizer")
            keep("codes", codes)
            report("tokenize", 1, 1)
        if codes is not None and len(codes):
            report("codes", 0, 1)
            src = self._model("detokenizer").decode(codes)
            self._done("detokenizer")
            report("codes", 1, 1)
            if src_latents is not None:  # the source's length, not the codes' whole windows
                src = src[:src_latents.shape[0]]
        elif src_latents is not None:
            src = src_latents
        else:
            src = tasks.tile_to(silence, math.ceil(duration * lps))
        src = np.ascontiguousarray(src, dtype=np.float32)
        chunk_mask = np.ones_like(src)
        if window is not None:
            chunk_mask[:] = tasks.chunk_mask(window, src.shape[0], lps)[:, None]
            if task == "repaint":  # the window itself is heard as silence, to be painted anew
                src = np.where(chunk_mask > 0.5, tasks.tile_to(silence, src.shape[0]), src)
        keep("context", np.concatenate([src, chunk_mask], axis=-1))

        noise = flow.initial_noise(src.shape[0], seed, src.shape[1]) if init_noise is None else init_noise
        noise = np.asarray(noise, dtype=np.float32)
        if noise.shape != src.shape:
            raise InputError(f"init noise has shape {noise.shape}; this request needs {src.shape}")
        noise = controls.retake_noise(noise, lambda s: flow.initial_noise(src.shape[0], s, src.shape[1]))
        keep("noise", noise)
        ratio, crossfade, wav_crossfade = controls.repaint()
        repaint = None
        if window is not None and controls.repaint_mode != "aggressive":
            n_steps = len(timesteps) if timesteps is not None else steps
            repaint = flow.Repaint(mask=chunk_mask[:, 0] > 0.5, source=src_latents[:src.shape[0]], noise=noise,
                                   cutoff=round(ratio * n_steps), crossfade=crossfade)

        used = request if has_codes else dataclasses.replace(request, duration=int(round(duration)))
        return _Item(request=used, seed=seed, stages=stages, keep=keep, enc_hidden=enc_hidden, null_emb=null_emb,
                     non_cover=non_cover[0] if blend else None, cover_strength=request.audio_cover_strength,
                     src=src, chunk_mask=chunk_mask, noise=noise, repaint=repaint, window=window, src_wave=src_wave,
                     wav_crossfade=wav_crossfade, steps=steps, shift=shift, guidance=guidance, timesteps=timesteps,
                     turbo=turbo)

    def _sample(self, items: list["_Item"], controls: Controls, report: Progress,
                keep_stages: bool) -> list[np.ndarray]:
        """The DiT over items of one shape as one batch (one item: exactly the unbatched call)."""
        one = len(items) == 1
        first = items[0]
        stack = (lambda get: get(first)) if one else (lambda get: np.stack([get(it) for it in items]))
        velocities: list[np.ndarray] = []
        steps = first.steps

        def on_step(i, t, x, v):
            if keep_stages:
                velocities.append(np.array(v, copy=True))
            report("dit", i + 1, steps)

        dit = self._model("dit")
        report("dit", 0, steps)
        null = None
        if first.null_emb is not None:
            null = stack(lambda it: np.broadcast_to(it.null_emb, it.enc_hidden.shape))
        repaint = first.repaint
        if repaint is not None and not one:
            repaint = dataclasses.replace(repaint, source=stack(lambda it: it.repaint.source),
                                          noise=stack(lambda it: it.repaint.noise))
        x0 = dit.sample(stack(lambda it: it.enc_hidden), stack(lambda it: it.src), stack(lambda it: it.chunk_mask),
                        noise=stack(lambda it: it.noise), num_steps=steps, shift=first.shift,
                        timesteps=first.timesteps, guidance_scale=first.guidance, null_encoder_states=null,
                        callback=on_step,
                        non_cover_states=None if first.non_cover is None else stack(lambda it: it.non_cover),
                        cover_strength=first.cover_strength, seed=first.seed if one else [it.seed for it in items],
                        repaint=repaint, turbo=first.turbo, **controls.sampler_options())
        del dit  # freed before the VAE loads (unless kept loaded)
        x0s = [x0] if one else list(x0)
        for b, it in enumerate(items):
            for i, v in enumerate(velocities):
                it.keep(f"v_t{i}", v if one else v[b])
            it.keep("x0", x0s[b])
        return x0s

    def _finish(self, item: "_Item", x0: np.ndarray, controls: Controls, report: Progress) -> SynthResult:
        """One item after the DiT: the VAE, the repaint splice, peak normalization."""
        keep, rate = item.keep, self.sample_rate
        vae = self._model("vae")
        wave = vae.decode(x0, progress=lambda done, total: report("vae", done, total))
        del vae
        self._done("vae")
        keep("audio_raw", wave)
        if item.window is not None and controls.repaint_mode != "aggressive":
            wave = splice_source(wave, item.src_wave, item.window, rate, item.wav_crossfade)
            keep("audio_spliced", wave)
        out = audio_io.normalize_peak(np.asarray(wave, dtype=np.float32)).astype(np.float32)
        keep("audio", out)
        return SynthResult(audio=out, sample_rate=rate, latents=x0, request=item.request, seed=item.seed,
                           stages=item.stages)


@dataclass
class _Item:
    """One song of Synthesizer.render between its preparation and the DiT."""

    request: Request
    seed: int
    stages: dict
    keep: Callable
    enc_hidden: np.ndarray
    null_emb: Optional[np.ndarray]
    non_cover: Optional[np.ndarray]
    cover_strength: float
    src: np.ndarray
    chunk_mask: np.ndarray
    noise: np.ndarray
    repaint: Optional[flow.Repaint]
    window: Optional[tasks.Window]
    src_wave: Optional[np.ndarray]
    wav_crossfade: float
    steps: int
    shift: float
    guidance: float
    timesteps: object
    turbo: bool

    def shape_key(self) -> tuple:
        """Items with equal keys step as one DiT batch: lengths, and the repaint window."""
        return (self.src.shape, self.enc_hidden.shape, None if self.non_cover is None else self.non_cover.shape,
                None if self.repaint is None else self.repaint.mask.tobytes())


def splice_source(pred: np.ndarray, src: np.ndarray, window: tasks.Window, rate: int,
                  crossfade_s: float) -> np.ndarray:
    """The source audio outside the repaint window, the generated audio inside it, with ramps of
    ``crossfade_s`` seconds outside the window (upstream repaint_waveform_splice.py): on the first
    ``min(len(pred), len(src))`` samples; later ones of ``pred`` are kept."""
    n = min(pred.shape[-1], src.shape[-1])
    a = min(max(int(window.start * rate), 0), n)
    b = n if window.end is None else min(max(int(window.end * rate), a), n)
    if a == 0 and b >= n:
        return pred
    m = np.zeros(n, dtype=np.float32)
    m[a:b] = 1.0
    fade = int(crossfade_s * rate)
    if fade > 0:
        lo = max(a - fade, 0)
        m[lo:a] = (np.arange(a - lo) + 1) / (a - lo + 1)
        hi = min(b + fade, n)
        m[b:hi] = 1.0 - (np.arange(hi - b) + 1) / (hi - b + 1)
    out = np.array(pred, dtype=np.float32, copy=True)
    out[..., :n] = m * pred[..., :n] + (1.0 - m) * src[..., :n]
    return out


def synth_from_dir(input_dir: str | os.PathLike, models: str | os.PathLike, output: str | os.PathLike,
                   *, bitrate: int | None = None, **kwargs) -> SynthResult:
    """The `synth` CLI as a function: read the exchange directory, synthesise, write `output`
    (bitrate: kbit/s of an .mp3; with ``batch_size=N > 1``: ``output``'s stem + ``-1`` ... ``-N``).

    Task fields and sampling options given as keyword arguments (``task=``, ``src_audio=``,
    ``solver=``, ...; None: not given) override the directory's files.  The output path is
    checked first; nothing is written when any step fails.
    """
    from .exchange import TASK_FIELDS, read_controls, read_request

    audio_io.check_output_path(output, bitrate=bitrate)
    given = {k: kwargs.pop(k) for k in TASK_FIELDS if k in kwargs}
    request = dataclasses.replace(read_request(input_dir), **{k: v for k, v in given.items() if v is not None})
    flags = {k: kwargs.pop(k) for k in {f.name for f in dataclasses.fields(Controls)} & kwargs.keys()}
    options = read_controls(input_dir) | {k: v for k, v in flags.items() if v is not None}
    device = kwargs.pop("device", "cpu")
    n_threads = kwargs.pop("n_threads", None)
    synth = Synthesizer(models, device=device, n_threads=n_threads, dit=kwargs.pop("dit", None),
                        loras=kwargs.pop("loras", None), lora_mode=kwargs.pop("lora_mode", "merge"))
    result = synth(request, **kwargs, **options)
    results = result if isinstance(result, list) else [result]
    for r, path in zip(results, batch_paths(output, len(results))):
        r.save(path, bitrate=bitrate)
    return result


class Pipeline:
    """LM + synth: a song from a caption, from a GGUF folder, a checkpoint folder (converted once
    into the cache) or a hub repo id.  Models load when a stage needs them and are freed after it,
    unless ``keep_loaded=True`` (faster repeated calls, more memory)."""

    def __init__(self, models: str | os.PathLike, device: str = "cpu", n_threads: Optional[int] = None,
                 keep_loaded: bool = False, lm: Optional[str] = None, dtype: str = "bf16", quiet: bool = False,
                 dit: Optional[str] = None, lora_mode: str = "merge"):
        # quiet: no download or conversion progress bars.  From a hub repo the LM is fetched only
        # when a song needs it.  dit: a DiT variant in the file name (xl-turbo, sft, ...), as
        # Synthesizer's.  lora_mode: how generate's loras apply (Synthesizer).
        if lora_mode not in adapters.MODES:
            raise InputError(f"unknown lora_mode {lora_mode!r}: choose one of {', '.join(adapters.MODES)}")
        self.lora_mode = lora_mode
        prefer = {k: v for k, v in (("acestep-lm", lm), ("acestep-dit", dit)) if v}
        self._resolve = functools.partial(resolve, models, dtype=dtype, quiet=quiet, device=device,
                                          prefer=prefer or None)
        self.device, self.n_threads, self.keep_loaded, self.lm_choice = device, n_threads, keep_loaded, lm
        self.dit_choice = dit
        self._lm, self._lm_folder = None, None
        # A local folder is checked (or converted) now; from a hub repo nothing is fetched before a
        # song's inputs have passed their checks.
        if not is_repo_id(models):
            self.synth  # noqa: B018 (resolves the folder)

    @functools.cached_property
    def folder(self) -> Path:
        """The synth stage's GGUF folder (fetched on first use from a hub repo)."""
        return self._resolve(kinds=SYNTH_KINDS)

    @functools.cached_property
    def synth(self) -> Synthesizer:
        return Synthesizer(self.folder, device=self.device, n_threads=self.n_threads, keep_loaded=self.keep_loaded,
                           dit=self.dit_choice, lora_mode=self.lora_mode)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, **kwargs) -> "Pipeline":
        return cls(source, **kwargs)

    def generate(self, caption: str, lyrics: str = "", *, duration: Optional[int] = None, bpm: Optional[int] = None,
                 keyscale: Optional[str] = None, timesignature: Optional[int] = None,
                 language: Optional[str] = None, seed: Optional[int] = None, steps: Optional[int] = None,
                 guidance: Optional[float] = None,
                 shift: Optional[float] = None, use_lm: bool = True, task: str = "text2music",
                 src_audio: Optional[AudioInput] = None, ref_audio: Optional[AudioInput] = None,
                 repainting_start: Optional[float] = None, repainting_end: Optional[float] = None,
                 track_name: Optional[str] = None, track_classes: Optional[list[str]] = None,
                 audio_cover_strength: float = 1.0, posterior: str = "sample",
                 rewrite_caption: bool = True, negative_prompt: Optional[str] = None,
                 legacy_cfg_prompt: bool = False, lm_mode: str = "generate", instrumental: bool = False,
                 progress: Optional[Progress] = None, controls: Optional[Controls] = None,
                 batch_size: Optional[int] = None, loras: Optional[list] = None,
                 **options) -> SynthResult | list[SynthResult]:
        """The 5 Hz LM writes the missing metadata, its caption and language and the audio codes,
        then the synth stage renders them (see ``LM.generate`` for ``rewrite_caption``,
        ``negative_prompt``, ``legacy_cfg_prompt``); ``use_lm=False`` synthesises from noise with
        the silence latent.  Without ``keep_loaded`` the LM is freed before the synth stage loads.

        ``task`` and its inputs (audio as a file path or (2, N) samples at 48 kHz) are those of
        :class:`Request`; see acestep_ggml.tasks.  With source audio the LM does not run, as
        upstream skips it for cover and repaint: the source gives the audio context, a cover's
        codes come from it.  ``controls`` / ``options``: how the DiT samples, as for
        :meth:`Synthesizer.__call__`.  ``batch_size=N`` returns a list of N songs, item i the song of
        ``seed + i``, the LM included: the LM decodes the items together, the DiT steps them as one
        batch (see :meth:`Synthesizer.render`).

        ``lm_mode="inspire"`` first lets the LM write a whole song from the caption as a query
        (upstream's create_sample: caption, lyrics, metadata; ``instrumental`` and ``language``
        as its options), ``"format"`` first rewrites caption and lyrics (format_sample, the
        given metadata kept); then the LM writes the codes of the result as usual (see
        acestep_ggml.lm_modes).

        ``loras=[(path, scale), ...]``: adapters on the DiT from this song on (``[]`` removes
        them; None keeps the current set), see :meth:`Synthesizer.set_loras`."""
        from . import lm_modes

        if lm_mode not in lm_modes.LM_MODES:
            raise InputError(f"unknown lm_mode {lm_mode!r}: choose one of {', '.join(lm_modes.LM_MODES)}")
        controls = Controls.of(controls, **options)  # checked before any model runs
        if loras is not None:
            self.synth.set_loras(loras)
        if seed is None:
            seed = new_seed()
        n = 1 if batch_size is None else check_batch_size(batch_size)
        seeds = [seed + i for i in range(n)]
        request = Request(caption=caption, lyrics=lyrics, bpm=bpm, duration=duration, keyscale=keyscale,
                          timesignature=timesignature, language=language, task=task, src_audio=src_audio,
                          ref_audio=ref_audio, repainting_start=repainting_start, repainting_end=repainting_end,
                          track_name=track_name, track_classes=track_classes,
                          audio_cover_strength=audio_cover_strength)
        run_lm = use_lm and src_audio is None
        # Every input is checked before anything is fetched and before the LM spends its minutes:
        # the synth stage's verdict on the task fields, the metadata the LM is given, the
        # reference audio file (readable).
        check_task(request, has_codes=run_lm, posterior=posterior)
        if run_lm:
            given_metadata(request)
            if isinstance(ref_audio, (str, os.PathLike)):
                try:  # read again by the synth stage at the VAE's rate; a file is cheap to read twice
                    audio_io.read_audio(ref_audio)
                except InputError as e:
                    raise InputError(f"ref_audio: {e}") from None
            self.synth  # noqa: B018 (the synth models are fetched before the LM, so a failed fetch costs no LM run)
            # A song that cannot fit is refused before the LM spends its minutes on it.
            self.synth.check_memory(request, self.synth.defaults.guidance if guidance is None else guidance, songs=n)
            lm = self._load_lm()
            requests = [request] * n
            if lm_mode != "generate":
                requests = [lm_modes.run(lm, request, lm_mode, instrumental=instrumental, seed=s, progress=progress)
                            for s in seeds]
            # One graph per token for the whole batch, item i as the single run of seed + i.
            requests = lm.generate_batch(requests, seeds, rewrite_caption=rewrite_caption,
                                         negative_prompt=negative_prompt, legacy_cfg_prompt=legacy_cfg_prompt,
                                         progress=progress)
            del lm
        elif lm_mode != "generate":
            raise InputError(f"lm_mode {lm_mode!r} needs the LM: not with use_lm=False or source audio")
        else:
            requests = [request] * n
        results = self.synth.render(requests, seeds, steps=steps, shift=shift, guidance=guidance,
                                    posterior=posterior, progress=progress, controls=controls)
        return results if batch_size is not None else results[0]

    def _load_lm(self):
        from .lm import LM

        if self._lm_folder is None:
            self._lm_folder = self._resolve(kinds=("acestep-lm",))
        # One folder for both stages: the LM takes its file from the synth stage's scan, opened once
        # (unless the LM arrived after that scan, as a hub download of the LM alone does).
        same = ("synth" in self.__dict__ and self._lm_folder == self.synth.models.folder
                and self.synth.models.files.get("acestep-lm"))
        source = self.synth.models if same else self._lm_folder
        lm = self._lm or LM.from_models(source, self.lm_choice, device=self.device, n_threads=self.n_threads)
        self._lm = lm if self.keep_loaded else None
        return lm

    def understand(self, audio: Optional[AudioInput] = None, *, codes: Optional[list[int]] = None,
                   seed: Optional[int] = None, posterior: str = "sample", progress: Optional[Progress] = None,
                   **kwargs) -> Request:
        """Audio (a file or (2, N) samples) or its 5 Hz ``codes`` -> a Request with the LM's
        caption, lyrics, bpm, duration, keyscale, language and time signature, and the codes,
        as upstream's understand_music: VAE encode, audio tokenizer, then the LM's understand
        mode (see ``acestep_ggml.lm_modes.understand`` for ``temperature``, ``top_p``, ``top_k``,
        ``fsm``, ``max_new_tokens``).  The synth stage renders the result again."""
        from . import lm_modes

        if (audio is None) == (codes is None):
            raise InputError("understand takes audio or codes (exactly one)")
        if seed is None:
            seed = new_seed()
        if codes is None:
            codes = self.synth.audio_codes(audio, seed=seed, posterior=posterior, progress=progress)
        else:
            lm_modes.understand_prompt(codes)  # checks the codes before the LM loads
        return lm_modes.understand(self._load_lm(), codes, seed=seed, progress=progress, **kwargs)


def generate(models: str | os.PathLike, caption: str, lyrics: str = "", *, device: str = "cpu",
             n_threads: Optional[int] = None, lm: Optional[str] = None, quiet: bool = False,
             dit: Optional[str] = None, lora_mode: str = "merge", **kwargs) -> SynthResult | list[SynthResult]:
    """One song (or, with ``batch_size``, a list of them) in one call:
    ``Pipeline(models, ...).generate(caption, lyrics, **kwargs)`` (``loras=[(path, scale), ...]`` too)."""
    return Pipeline(models, device=device, n_threads=n_threads, lm=lm, quiet=quiet, dit=dit,
                    lora_mode=lora_mode).generate(caption, lyrics, **kwargs)


def understand(models: str | os.PathLike, audio: Optional[AudioInput] = None, *, device: str = "cpu",
               n_threads: Optional[int] = None, lm: Optional[str] = None, quiet: bool = False, **kwargs) -> Request:
    """A song's caption, lyrics and metadata in one call: ``Pipeline(models, ...).understand(audio, **kwargs)``."""
    return Pipeline(models, device=device, n_threads=n_threads, lm=lm, quiet=quiet).understand(audio, **kwargs)
