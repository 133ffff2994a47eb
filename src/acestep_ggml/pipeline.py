"""The synth stage end to end: request -> text encoder -> condition encoder -> source latents
(detokenized codes, or the silence latent) -> DiT sampling -> VAE -> stereo 48 kHz audio.

Each stage is a native model; this module only routes arrays between them, in the order of
diffusers' AceStepPipeline.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import audio as audio_io
from . import sampler
from ._core import GGUFFile, InputError
from .dit import DiT
from .exchange import MAX_DURATION, Request
from .hub import ModelSet, find_models, resolve
from .text import ConditionEncoder, Detokenizer, TextEncoder
from .tokenizer import Tokenizer
from .vae import VAE

INSTRUCTIONS = {
    "text2music": "Fill the audio semantic mask based on the given conditions:",
    "cover": "Generate audio semantic tokens based on the given conditions:",
}

# progress(stage, done, total), in the order they run: "lm-metadata" (LM tokens of the chain of
# thought; total 0 as its length is not known ahead), "lm-codes" (audio codes written), "text",
# "condition", "codes" (detokenizer), "dit" (sampler steps), "vae" (decoded tiles).
Progress = Callable[[str, int, int], None]


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
                 keep_loaded: bool = False, dit: Optional[str] = None):
        self.models = models if isinstance(models, ModelSet) else find_models(resolve(models))
        self.device, self.n_threads, self.keep_loaded = device, n_threads, keep_loaded
        self.paths = {
            "dit": self.models.get("acestep-dit", prefer=dit),
            "text": self.models.get("acestep-text-enc"),
            "vae": self.models.get("acestep-vae"),
        }
        self._loaded: dict[str, object] = {}
        self._tokenizer: Optional[Tokenizer] = None
        # Read once from the files' metadata: every call needs them, and they cannot change.
        self.is_turbo = self._read_is_turbo()
        self.latents_per_second = self._read_latents_per_second()

    # -- model lifetime ---------------------------------------------------------------
    def _model(self, name: str):
        if name not in self._loaded:
            p, kw = self.paths, dict(device=self.device, n_threads=self.n_threads)
            make = {
                "text": lambda: TextEncoder(str(p["text"]), **kw),
                "condition": lambda: ConditionEncoder(str(p["dit"]), str(p["text"]), **kw),
                "codes": lambda: Detokenizer(str(p["dit"]), **kw),
                "dit": lambda: DiT(p["dit"], **kw),
                "vae": lambda: VAE(str(p["vae"]), **kw),
            }[name]
            self._loaded[name] = make()
        return self._loaded[name]

    def _done(self, name: str) -> None:
        if not self.keep_loaded:
            self._loaded.pop(name, None)

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer.from_gguf(str(self.paths["text"]))
        return self._tokenizer

    def _read_is_turbo(self) -> bool:
        f = GGUFFile(str(self.paths["dit"]))
        try:
            return bool(f.get("acestep.is_turbo"))
        except KeyError:
            return "turbo" in self.paths["dit"].name

    def _read_latents_per_second(self) -> float:
        """Sample rate over the VAE's hop (25 for ACE-Step 1.5), read from the VAE file's config."""
        cfg = json.loads(GGUFFile(str(self.paths["vae"])).get("acestep.config_json"))
        return cfg.get("sampling_rate", 48000) / math.prod(cfg.get("downsampling_ratios", [2, 4, 4, 6, 10]))

    # -- the job ------------------------------------------------------------------------
    def __call__(self, request: Request, *, seed: Optional[int] = None, steps: Optional[int] = None,
                 shift: float = 3.0, guidance: Optional[float] = None, timesteps=None,
                 cfg_interval: tuple[float, float] = (0.0, 1.0), init_noise: Optional[np.ndarray] = None,
                 progress: Optional[Progress] = None, keep_stages: bool = False) -> SynthResult:
        if not request.codes and request.duration is not None and not 1 <= request.duration <= MAX_DURATION:
            raise InputError(f"duration must be 1..{MAX_DURATION} seconds, got {request.duration}")
        if steps is not None and steps < 1:
            raise InputError(f"steps must be at least 1, got {steps}")
        if not (math.isfinite(shift) and shift > 0):
            raise InputError(f"shift must be a positive number, got {shift}")
        turbo = self.is_turbo
        steps = steps if steps is not None else (8 if turbo else 50)
        guidance = guidance if guidance is not None else (1.0 if turbo else 7.0)
        if seed is None:
            seed = new_seed()
        report = progress or (lambda stage, done, total: None)
        stages: dict[str, np.ndarray] = {}
        keep = (lambda k, v: stages.__setitem__(k, np.array(v, copy=True))) if keep_stages else (lambda k, v: None)

        has_codes = bool(request.codes)
        lps = self.latents_per_second
        # With codes the latent length is 5 frames per code; the prompt states it in seconds.
        duration = len(request.codes) * 5 / lps if has_codes else request.resolved_duration()
        task = "cover" if has_codes else "text2music"

        # Text: the caption prompt through the whole encoder, the lyrics through its embedding table only.
        tok = self.tokenizer
        text_ids = tok.text_ids(request.caption, instruction=INSTRUCTIONS[task], bpm=request.bpm,
                                timesignature=None if request.timesig is None else str(request.timesig),
                                keyscale=request.keyscale, duration=duration)
        lyric_ids = tok.lyric_ids(request.lyrics, request.language or "en")
        report("text", 0, 1)
        text_hidden = self._model("text").encode(text_ids)
        keep("text_hidden", text_hidden)
        if keep_stages:
            keep("lyric_embed", self._model("text").embed(lyric_ids))
        self._done("text")
        report("text", 1, 1)

        report("condition", 0, 1)
        cond = self._model("condition")
        enc_hidden, _ = cond.encode(text_hidden, lyric_ids)
        silence = cond.silence_latent
        null_emb = cond.null_condition_emb if guidance > 1.0 else None
        del cond  # a local reference would keep the weights alive through the DiT and VAE
        self._done("condition")
        keep("enc_hidden", enc_hidden)
        report("condition", 1, 1)

        if has_codes:
            report("codes", 0, 1)
            src = self._model("codes").decode(request.codes)
            self._done("codes")
            report("codes", 1, 1)
        else:
            length = math.ceil(duration * lps)
            reps = -(-length // silence.shape[0])
            src = np.tile(silence, (reps, 1))[:length] if reps > 1 else silence[:length]
        src = np.ascontiguousarray(src, dtype=np.float32)
        chunk_mask = np.ones_like(src)
        keep("context", np.concatenate([src, chunk_mask], axis=-1))

        noise = sampler.initial_noise(src.shape[0], seed, src.shape[1]) if init_noise is None else init_noise
        noise = np.asarray(noise, dtype=np.float32)
        if noise.shape != src.shape:
            raise InputError(f"init noise has shape {noise.shape}; this request needs {src.shape}")

        velocities: list[np.ndarray] = []

        def on_step(i, t, x, v):
            if keep_stages:
                velocities.append(np.array(v, copy=True))
            report("dit", i + 1, steps)

        dit = self._model("dit")
        report("dit", 0, steps)
        null = None if null_emb is None else np.broadcast_to(null_emb, enc_hidden.shape)
        x0 = dit.sample(enc_hidden, src, chunk_mask, noise=noise, num_steps=steps, shift=shift,
                        timesteps=timesteps, guidance_scale=guidance, null_encoder_states=null,
                        cfg_interval=cfg_interval, callback=on_step)
        del dit  # freed before the VAE loads (unless kept loaded)
        self._done("dit")
        for i, v in enumerate(velocities):
            keep(f"v_t{i}", v)
        keep("x0", x0)

        vae = self._model("vae")
        wave = vae.decode(x0, progress=lambda done, total: report("vae", done, total))
        sample_rate = vae.sample_rate
        del vae
        self._done("vae")
        keep("audio_raw", wave)
        out = audio_io.normalize_peak(np.asarray(wave, dtype=np.float32)).astype(np.float32)
        keep("audio", out)

        used = request if has_codes else dataclasses.replace(request, duration=int(round(duration)))
        return SynthResult(audio=out, sample_rate=sample_rate, latents=x0, request=used, seed=seed, stages=stages)


def synth_from_dir(input_dir: str | os.PathLike, models: str | os.PathLike, output: str | os.PathLike,
                   **kwargs) -> SynthResult:
    """The `synth` CLI as a function: read the exchange directory, synthesise, write `output`.

    Nothing is written when any step fails.
    """
    from .exchange import read_request

    request = read_request(input_dir)
    device = kwargs.pop("device", "cpu")
    n_threads = kwargs.pop("n_threads", None)
    result = Synthesizer(models, device=device, n_threads=n_threads)(request, **kwargs)
    result.save(Path(output))
    return result


class Pipeline:
    """LM + synth: a song from a caption, from a GGUF folder, a checkpoint folder (converted once
    into the cache) or a hub repo id.  Models load when a stage needs them and are freed after it,
    unless ``keep_loaded=True`` (faster repeated calls, more memory)."""

    def __init__(self, models: str | os.PathLike, device: str = "cpu", n_threads: Optional[int] = None,
                 keep_loaded: bool = False, lm: Optional[str] = None, dtype: str = "bf16", quiet: bool = False):
        # quiet: no download or conversion progress bars
        self.folder = resolve(models, dtype=dtype, quiet=quiet)
        self.device, self.n_threads, self.keep_loaded, self.lm_choice = device, n_threads, keep_loaded, lm
        self.synth = Synthesizer(self.folder, device=device, n_threads=n_threads, keep_loaded=keep_loaded)
        self._lm = None

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, **kwargs) -> "Pipeline":
        return cls(source, **kwargs)

    def generate(self, caption: str, lyrics: str = "", *, duration: Optional[int] = None, bpm: Optional[int] = None,
                 keyscale: Optional[str] = None, timesignature: Optional[int] = None, language: str = "en",
                 seed: Optional[int] = None, steps: Optional[int] = None, guidance: Optional[float] = None,
                 shift: float = 3.0, use_lm: bool = True, progress: Optional[Progress] = None) -> SynthResult:
        """The 5 Hz LM writes the missing metadata and the audio codes, then the synth stage renders
        them; ``use_lm=False`` synthesises from noise with the silence latent.  Without
        ``keep_loaded`` the LM is freed before the synth stage loads."""
        from .lm import LM

        if seed is None:
            seed = new_seed()
        request = Request(caption=caption, lyrics=lyrics, bpm=bpm, duration=duration, keyscale=keyscale,
                          timesig=timesignature, language=language)
        if use_lm:
            lm = self._lm or LM.from_models(self.folder, self.lm_choice, device=self.device, n_threads=self.n_threads)
            self._lm = lm if self.keep_loaded else None
            request = lm.generate(request, seed=seed, progress=progress)
            del lm
        return self.synth(request, seed=seed, steps=steps, shift=shift, guidance=guidance, progress=progress)


def generate(models: str | os.PathLike, caption: str, lyrics: str = "", *, device: str = "cpu",
             n_threads: Optional[int] = None, lm: Optional[str] = None, quiet: bool = False,
             **kwargs) -> SynthResult:
    """One song in one call: ``Pipeline(models, ...).generate(caption, lyrics, **kwargs)``."""
    return Pipeline(models, device=device, n_threads=n_threads, lm=lm, quiet=quiet).generate(caption, lyrics, **kwargs)
