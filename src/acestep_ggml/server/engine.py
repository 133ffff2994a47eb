"""The server's one point of contact with the package: the model folder, the models each device
keeps loaded, and the work a job does (LM, synth, VAE encode and decode), reporting progress
through the package's ``progress(stage, done, total)`` callback.

The rest of ``acestep_ggml.server`` speaks HTTP; of the package it imports only the error classes.
"""
from __future__ import annotations

import io
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

import acestep_ggml as ace
from acestep_ggml import hub, lm_modes, tasks
from acestep_ggml.constants import MAX_DURATION, UNDERSTAND_TEMPERATURE
from acestep_ggml.errors import InputError, ModelsNotFound
from acestep_ggml.models import AudioTokenizer
from acestep_ggml.request import Controls, given_metadata

Report = Callable[[str, int, int], None]

KIND_NAMES = {"lm": "acestep-lm", "embedding": "acestep-text-enc", "dit": "acestep-dit", "vae": "acestep-vae"}
LATENT_CHANNELS = 64
MAX_LATENT_FRAMES = 15000  # the DiT's silence latent; acestep.cpp's cap on uploaded latents too


def version() -> str:
    return ace.__version__


def available_memory(device: str) -> Optional[int]:
    """Bytes free for models on ``device`` (its memory, or the system's for the CPU); None if unknown."""
    return hub.available_memory(device)


def make_request(**fields) -> ace.Request:
    """A Request from the HTTP API's field names (the same as the Request's)."""
    return ace.Request(**fields)


def request_timesignature(request: ace.Request) -> Optional[int]:
    return request.timesignature


def task_instruction(task: str) -> str:
    """The DiT's instruction line for a task (without a track): upstream's clients may send it."""
    return tasks.instruction(task)


def make_controls(**fields) -> Controls:
    """The synth stage's sampling controls (acestep_ggml.request.Controls); InputError naming a bad field."""
    return Controls.of(**fields)


LM_MODES = lm_modes.LM_MODES
LM_MODE_MAX_NEW_TOKENS = lm_modes.LM_MODE_MAX_NEW_TOKENS  # the bound on an understand/inspire/format answer


def check_lm_request(request: ace.Request) -> None:
    """InputError for metadata the LM cannot take (ranges of its constrained decoding); no model runs."""
    given_metadata(request)


@dataclass(frozen=True)
class AudioFormat:
    suffix: str
    subtype: Optional[str]
    mime: str


# acestep.cpp's output_format names, and upstream's audio_format names (wav, flac).
AUDIO_FORMATS = {
    "mp3": AudioFormat(".mp3", None, "audio/mpeg"),
    "wav16": AudioFormat(".wav", "PCM_16", "audio/wav"),
    "wav24": AudioFormat(".wav", "PCM_24", "audio/wav"),
    "wav32": AudioFormat(".wav", "FLOAT", "audio/wav"),
    "wav": AudioFormat(".wav", "PCM_16", "audio/wav"),
    "flac": AudioFormat(".flac", "PCM_16", "audio/flac"),
}
MP3_MIN_RATE = 32000


class Models:
    """The GGUF files of the --models folder (or what a checkpoint folder or hub repo resolves to), by kind."""

    def __init__(self, source: str | os.PathLike, device: str = "cpu",
                 adapters: Optional[str | os.PathLike] = None):
        self.folder = Path(hub.resolve(source, quiet=True, device=device))
        self.adapters = Adapters(adapters)
        self.set = hub.find_models(self.folder)
        self.device = device
        self.set.get("acestep-dit")  # ModelsNotFound, saying how to get models, when the synth set is incomplete
        self.set.get("acestep-text-enc")
        self.set.get("acestep-vae")
        probe = ace.Synthesizer(self.subset(self.pick("dit"), self.pick("vae")), device="cpu")
        self.sample_rate, self.latents_per_second, self.is_turbo = probe.sample_rate, probe.latents_per_second, \
            probe.is_turbo

    def names(self, kind: str) -> list[str]:
        """File names of one kind (lm, embedding, dit, vae), the default first."""
        files = self.set.files.get(KIND_NAMES[kind], [])
        default = self.pick(kind) if files else None
        return [p.name for p in sorted(files, key=lambda p: (p != default, p.name))]

    def pick(self, kind: str, name: str = "") -> Path:
        """The file a request names (with or without .gguf), or the default of its kind; ModelsNotFound when absent."""
        arch = KIND_NAMES[kind]
        files = self.set.files.get(arch, [])
        if name:
            for p in files:
                if name in (p.name, p.stem):
                    return p
            raise ModelsNotFound(f"no {kind} model named {name!r}")
        if kind == "lm":
            if not files:
                raise ModelsNotFound(f"no {kind} model")
            return Path(hub.choose_lm(files, hub.available_memory(self.device)))
        return self.set.get(arch)

    def bytes_of(self, *paths: Path) -> int:
        return sum(p.stat().st_size for p in paths)

    def subset(self, dit: Path, vae: Path) -> hub.ModelSet:
        return hub.ModelSet(self.folder, {"acestep-dit": [dit], "acestep-text-enc": [self.pick("embedding")],
                                          "acestep-vae": [vae]})


def decode_upload(data: bytes, what: str, sample_rate: int) -> np.ndarray:
    """Uploaded audio (WAV, FLAC, OGG, MP3 bytes) as (2, N) float32 at ``sample_rate``; InputError naming ``what``."""
    import soundfile as sf

    if not data:
        raise ace.InputError(f"{what}: empty upload")
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (RuntimeError, OSError, ValueError) as e:  # soundfile's LibsndfileError is a RuntimeError
        raise ace.InputError(f"{what}: cannot decode the audio ({e})") from None
    try:
        return ace.load_audio(samples.T, sample_rate, source_rate=rate)
    except ace.InputError as e:
        raise ace.InputError(f"{what}: {e}") from None


def latents_from_bytes(data: bytes, what: str) -> np.ndarray:
    """acestep.cpp's latent payload: raw little-endian f32 [T, 64], no header."""
    frame = LATENT_CHANNELS * 4
    if not data or len(data) % frame:
        raise ace.InputError(f"{what}: size {len(data)} is not a positive multiple of {frame} bytes (f32 [T, 64])")
    z = np.frombuffer(data, dtype="<f4").reshape(-1, LATENT_CHANNELS)
    if not np.all(np.isfinite(z)):
        raise ace.InputError(f"{what}: holds NaN or infinity")
    return np.ascontiguousarray(z, dtype=np.float32)


@dataclass
class Track:
    """One rendered song of a job: encoded audio, its latents, and the request that made it."""

    audio: bytes
    mime: str
    suffix: str
    latent: Optional[bytes] = None
    request: Optional[ace.Request] = None
    seed: Optional[int] = None
    seconds: float = 0.0


@dataclass
class SynthItem:
    """One song to render: the request, the synth options, the seed (resolved before queueing)."""

    request: ace.Request
    seed: int
    steps: Optional[int] = None
    guidance: Optional[float] = None
    shift: float = 3.0
    timesteps: Optional[list[float]] = None
    controls: Optional[Controls] = None  # None: the defaults
    adapters: tuple[tuple[Path, float], ...] = ()  # (file, scale) of the adapters the DiT wears


@dataclass
class LmItem:
    """One LM run: ``mode`` generate (metadata and codes), inspire or format (acestep_ggml.lm_modes)."""

    request: ace.Request
    seed: int
    mode: str = "generate"
    instrumental: bool = False  # inspire: an instrumental song
    cfg_scale: float = 2.0
    temperature: float = 0.85
    top_p: Optional[float] = 0.9
    top_k: Optional[int] = None
    fsm: bool = True
    rewrite_caption: bool = True
    negative_prompt: Optional[str] = None


@dataclass
class Budget:
    """Which models stay loaded between jobs: those whose files fit in ``bytes`` (with headroom
    for their work buffers), until ``idle_unload`` seconds pass without a job."""

    bytes: Optional[int] = None  # None: everything stays loaded
    idle_unload: float = 300.0
    headroom: float = 1.3

    def fits(self, size: int) -> bool:
        return self.bytes is None or size * self.headroom <= self.bytes


class Engine:
    """The models of one device, loaded on first use and kept within the budget.  Only its worker
    thread calls it (other threads read ``loaded()``), so nothing here locks."""

    def __init__(self, models: Models, device: str = "cpu", n_threads: Optional[int] = None,
                 budget: Optional[Budget] = None, workdir: Optional[Path] = None):
        self.models, self.device, self.n_threads = models, device, n_threads
        self.budget = budget or Budget()
        self._synth: Optional[tuple[tuple[Path, Path], ace.Synthesizer]] = None
        self._lm: Optional[tuple[Path, ace.LM]] = None
        self._vae: Optional[tuple[Path, ace.VAE]] = None
        self._tmp = tempfile.TemporaryDirectory(prefix="acestep-server-", dir=workdir)
        self.last_used = time.monotonic()

    # -- models ---------------------------------------------------------------------
    def _held(self) -> list[Path]:
        """The files of the models kept loaded between jobs."""
        files = []
        if self._synth and self._synth[1].keep_loaded:
            files += [*self._synth[0], self.models.pick("embedding")]
        if self._lm:
            files.append(self._lm[0])
        if self._vae:
            files.append(self._vae[0])
        return files

    def _fits(self, *paths: Path) -> bool:
        """Whether ``paths`` may stay loaded beside what is held already, within the budget."""
        return self.budget.fits(self.models.bytes_of(*self._held(), *paths))

    def loaded(self) -> list[str]:
        return [p.name for p in self._held()]

    def unload(self) -> None:
        self._synth = self._lm = self._vae = None

    def close(self) -> None:
        self.unload()
        self._tmp.cleanup()

    def synthesizer(self, dit: Path, vae: Path) -> ace.Synthesizer:
        if self._synth is None or self._synth[0] != (dit, vae):
            self._synth = None  # one DiT at a time: the old one is freed before the new loads
            keep = self._fits(dit, vae, self.models.pick("embedding"))
            self._synth = ((dit, vae), ace.Synthesizer(self.models.subset(dit, vae), device=self.device,
                                                       n_threads=self.n_threads, keep_loaded=keep,
                                                       lora_mode="runtime"))
        return self._synth[1]

    def lm(self, path: Path) -> ace.LM:
        if self._lm is not None and self._lm[0] == path:
            return self._lm[1]
        self._lm = None
        lm = ace.LM(path, device=self.device, n_threads=self.n_threads)
        if self._fits(path):
            self._lm = (path, lm)
        return lm

    def vae(self, path: Path) -> ace.VAE:
        if self._vae is not None and self._vae[0] == path:
            return self._vae[1]
        self._vae = None
        vae = ace.VAE(str(path), device=self.device, n_threads=self.n_threads)
        if self._fits(path):
            self._vae = (path, vae)
        return vae

    def unload_if_idle(self) -> bool:
        if self.loaded() and time.monotonic() - self.last_used > self.budget.idle_unload:
            self.unload()
            return True
        return False

    # -- audio out --------------------------------------------------------------------
    def encode_audio(self, audio: np.ndarray, sample_rate: int, fmt: str, *, bitrate: Optional[int] = None,
                     normalize: bool = True) -> tuple[bytes, AudioFormat]:
        """Audio (2, N) as the bytes of a file of ``fmt``, written through the package's writer
        into this engine's own temporary folder."""
        f = AUDIO_FORMATS[fmt]
        path = Path(self._tmp.name) / f"out{f.suffix}"
        ace.write_audio(path, audio, sample_rate, subtype=f.subtype, bitrate=bitrate if f.suffix == ".mp3" else None,
                        normalize=normalize)
        try:
            return path.read_bytes(), f
        finally:
            path.unlink()

    # -- the work of each job kind ------------------------------------------------------
    def run_synth(self, items: list[SynthItem], *, dit: Path, vae: Path, fmt: str, bitrate: Optional[int],
                  report: Callable[[int], Report]) -> list[Track]:
        """Renders every item (a batch is rendered one song after another); ``report(i)`` is the
        progress callback of item i."""
        self.last_used = time.monotonic()
        synth = self.synthesizer(dit, vae)
        tracks = []
        for i, item in enumerate(items):
            wear_adapters(synth, item.adapters)
            result = synth(item.request, seed=item.seed, steps=item.steps, shift=item.shift, guidance=item.guidance,
                           timesteps=item.timesteps, controls=item.controls, progress=report(i))
            audio, f = self.encode_audio(result.audio, result.sample_rate, fmt, bitrate=bitrate)
            tracks.append(Track(audio, f.mime, f.suffix, np.ascontiguousarray(result.latents, "<f4").tobytes(),
                                result.request, result.seed, result.audio.shape[1] / result.sample_rate))
            self.last_used = time.monotonic()
        return tracks

    def run_lm(self, items: list[LmItem], *, path: Path, report: Callable[[int], Report]) -> list[ace.Request]:
        self.last_used = time.monotonic()
        lm = self.lm(path)
        out = []
        for i, item in enumerate(items):
            if item.mode == "generate":
                out.append(lm.generate(item.request, cfg_scale=item.cfg_scale, temperature=item.temperature,
                                       top_p=item.top_p, top_k=item.top_k, seed=item.seed, fsm=item.fsm,
                                       rewrite_caption=item.rewrite_caption, negative_prompt=item.negative_prompt,
                                       progress=report(i)))
            else:  # no CFG in these modes, as upstream runs them
                out.append(lm_modes.run(lm, item.request, item.mode, instrumental=item.instrumental,
                                        temperature=item.temperature, top_p=item.top_p, top_k=item.top_k,
                                        seed=item.seed, fsm=item.fsm, max_new_tokens=LM_MODE_MAX_NEW_TOKENS,
                                        progress=report(i)))
            self.last_used = time.monotonic()
        del lm
        return out

    def run_understand(self, *, lm: Path, dit: Path, vae: Path, seed: int, audio: Optional[np.ndarray] = None,
                       latents: Optional[np.ndarray] = None, temperature: float = UNDERSTAND_TEMPERATURE,
                       top_p: Optional[float] = None, top_k: Optional[int] = None,
                       report: Report) -> tuple[ace.Request, np.ndarray]:
        """Audio (2, N) at the models' rate, or its latents (T, 64) -> (the LM's Request, the latents),
        as ``Pipeline.understand(audio, seed=seed)`` computes it: the VAE posterior drawn with
        ``seed``, the audio tokenizer, then the LM's understand mode seeded with ``seed``.  The
        latents are returned too: acestep.cpp hands them back for reuse as src_latents."""
        self.last_used = time.monotonic()
        if latents is None:
            rate, lps = self.models.sample_rate, self.models.latents_per_second
            if not 1 / lps <= audio.shape[1] / rate <= MAX_DURATION:
                raise InputError(f"audio lasts {audio.shape[1] / rate:.3f} s; understand takes {1 / lps:g} s "
                                 f"(one latent frame) to {MAX_DURATION} s")
            if not np.any(np.abs(audio) >= 1e-6):
                raise InputError("audio appears to be silent")
            latents = self.vae(vae).encode(audio, sample=True, seed=seed,
                                           progress=lambda done, total: report("encode", done, total))
        report("tokenize", 0, 1)
        codes = [int(c) for c in AudioTokenizer(str(dit), device=self.device, n_threads=self.n_threads)
                 .tokenize(latents)]
        report("tokenize", 1, 1)
        out = lm_modes.understand(self.lm(lm), codes, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                                  max_new_tokens=LM_MODE_MAX_NEW_TOKENS, progress=report)
        self.last_used = time.monotonic()
        return out, np.asarray(latents, np.float32)

    def run_vae_encode(self, audio: np.ndarray, *, path: Path, report: Report) -> bytes:
        self.last_used = time.monotonic()
        z = self.vae(path).encode(audio, progress=lambda done, total: report("encode", done, total))
        self.last_used = time.monotonic()
        return np.ascontiguousarray(z, "<f4").tobytes()

    def run_vae_decode(self, latents: np.ndarray, *, path: Path, fmt: str, bitrate: Optional[int],
                       report: Report) -> Track:
        self.last_used = time.monotonic()
        vae = self.vae(path)
        wave = vae.decode(latents, progress=lambda done, total: report("vae", done, total))
        # acestep.cpp leaves 32-bit float WAV at the decoder's own level
        audio, f = self.encode_audio(np.asarray(wave, np.float32), vae.sample_rate, fmt, bitrate=bitrate,
                                     normalize=fmt != "wav32")
        self.last_used = time.monotonic()
        return Track(audio, f.mime, f.suffix, seconds=wave.shape[-1] / vae.sample_rate)


# -- adapters -------------------------------------------------------------------------------------
class Adapters:
    """The --adapters folder, read as acestep.cpp reads it: each ``*.safetensors`` file (a single-file
    adapter, named by its file name) and each subfolder holding ``adapter_model.safetensors`` (PEFT,
    named by the folder).  A request names one of these; no path from a request is ever opened."""

    def __init__(self, folder: Optional[str | os.PathLike]):
        self.folder = Path(folder) if folder else None
        self.found: dict[str, Path] = {}
        if self.folder is None:
            return
        if not self.folder.is_dir():
            raise InputError(f"--adapters {self.folder}: not a folder")
        for p in sorted(self.folder.iterdir()):
            if p.is_file() and p.suffix == ".safetensors":
                self.found[p.name] = p
        for p in sorted(self.folder.iterdir()):
            if p.is_dir() and (p / "adapter_model.safetensors").is_file():
                self.found[p.name] = p

    def names(self) -> list[str]:
        return list(self.found)

    def pick(self, name: str) -> Optional[Path]:
        """The adapter of that exact name (with or without .safetensors), else None."""
        return self.found.get(name) or self.found.get(f"{name}.safetensors")


def wear_adapters(synth: ace.Synthesizer, adapters: tuple[tuple[Path, float], ...]) -> None:
    """The DiT wears exactly ``adapters`` (none: none) for the next song, swapped without reloading it."""
    if getattr(synth, "_server_adapters", ()) != adapters:
        synth.set_loras([(str(p), s) for p, s in adapters])
        synth._server_adapters = adapters


def synth_plan(item: SynthItem) -> list[str]:
    r = item.request
    stages = ["encode"] if r.src_audio is not None or r.ref_audio is not None else []
    stages += ["text", "condition"]
    if r.task == "cover" and r.src_audio is not None:
        stages.append("tokenize")
    if r.codes or (r.task == "cover" and r.src_audio is not None):
        stages.append("codes")
    return stages + ["dit", "vae"]


def lm_plan(item: LmItem) -> list[str]:
    if item.mode != "generate":
        return ["lm-answer"]
    given = given_metadata(item.request)
    full = all(k in given for k in ("bpm", "duration", "keyscale", "timesignature"))
    return (["lm-codes"] if full else ["lm-metadata", "lm-codes"])
