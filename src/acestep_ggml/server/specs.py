"""Validated request bodies -> jobs.  Everything a request can get wrong is found here, before the
job is queued, and reported as a BadRequest naming the field; the job itself only computes.

acestep.cpp's conventions are kept: 0 or "" means unset, ``seed=-1`` draws a seed (resolved here,
so the status and results report it), ``repainting_end < 0`` means the default end, fields that
do not apply to a task are ignored, and a batch takes its models and output format from its first
request.
"""
from __future__ import annotations

import json
import math
import re
import secrets
from typing import Optional

import numpy as np

from ..errors import InputError, ModelsNotFound
from . import engine as eng
from .jobs import Job, Result
from .schemas import MAX_SEED, AceRequest, UpstreamTask

SOURCE_TASKS = ("cover", "cover-nofsq", "repaint", "extract", "lego", "complete")
CAPTIONLESS_TASKS = ("lego", "extract", "complete")  # acestep.cpp lets these go without a caption
MAX_TRACKS = 9  # acestep.cpp's DiT batch limit
MP3_BITRATES = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
MULTIPART_BOUNDARY = "ace-batch-boundary"  # acestep.cpp's, which its clients split on
MULTIPART_MIME = f"multipart/mixed; boundary={MULTIPART_BOUNDARY}"

# Fields of features acestep-ggml does not have: accepted at their default only.
UNSUPPORTED = {
    "cover_noise_strength": (0.0, "starting a cover from noised source latents is not implemented"),
    "latent_shift": (0.0, "latent post-processing is not implemented"),
    "latent_rescale": (1.0, "latent post-processing is not implemented"),
}
NOISE_SOLVERS = ("sde",)  # acestep.cpp skips DCW for solvers that inject fresh noise (its injects_noise)


class BadRequest(InputError):
    """A request the server refuses before queueing it (HTTP 400, or ``status``), naming the field."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _seed(seed: int) -> int:
    return secrets.randbelow(MAX_SEED + 1) if seed < 0 else seed


def _timesignature(value, field: str = "timesignature") -> Optional[int]:
    text = str(value).strip()
    if text == "":
        return None
    if not text.isdigit() or not 1 <= int(text) <= 32:
        raise BadRequest(f"{field}: expected a numerator such as \"4\", got {value!r}")
    return int(text)


def _duration(seconds: Optional[float]):
    """0/None: unset; whole seconds as an int, as the Request carries them."""
    if not seconds:
        return None
    return int(seconds) if float(seconds).is_integer() else float(seconds)


def _codes(text: str, field: str) -> Optional[list[int]]:
    if not text.strip():
        return None
    codes = []
    for i, tok in enumerate(t.strip() for t in text.split(",")):
        if not tok:
            continue
        if not tok.isdigit() or int(tok) > 63999:
            raise BadRequest(f"{field}: entry {i} is not a code 0..63999: {tok!r}")
        codes.append(int(tok))
    return codes or None


def _timesteps(text: Optional[str], field: str) -> Optional[list[float]]:
    """acestep.cpp's schedule: values from near 1 down to a final 0, the x0 target, which is dropped."""
    if not text or not text.strip():
        return None
    try:
        ts = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise BadRequest(f"{field}: expected comma-separated numbers, got {text!r}") from None
    if ts and ts[-1] == 0:
        ts = ts[:-1]
    if not ts or not all(math.isfinite(t) and 0 < t <= 1 for t in ts) or any(b >= a for a, b in zip(ts, ts[1:])):
        raise BadRequest(f"{field}: timesteps must decrease within (0, 1], optionally ending at 0")
    return ts


def _model(models: eng.Models, kind: str, name: Optional[str], field: str):
    try:
        return models.pick(kind, name or "")
    except ModelsNotFound:
        if not models.names(kind):
            raise BadRequest(f"{field}: the server's models folder has no {kind} model") from None
        raise BadRequest(f"{field}: no {kind} model named {name!r} (have: {', '.join(models.names(kind))})") from None


def _audio_format(models: eng.Models, fmt: str, bitrate: Optional[int], field: str) -> None:
    if fmt == "mp3" and models.sample_rate < eng.MP3_MIN_RATE:
        raise BadRequest(f"{field}: mp3 needs a sample rate of {eng.MP3_MIN_RATE} Hz or more; these models make "
                         f"{models.sample_rate} Hz audio: ask for wav16, wav24 or wav32")
    if bitrate is not None and bitrate not in MP3_BITRATES:
        raise BadRequest(f"mp3_bitrate: must be one of {', '.join(map(str, MP3_BITRATES))}, got {bitrate}")


def _task_fields(task: str, *, track: str, start: float, end: Optional[float], strength: float,
                 has_codes: bool) -> dict:
    """The Request's task fields from acestep.cpp's: a window for repaint and lego (an end below 0,
    or none, is the default: the source's start when outpainting before it, else its end), the
    track as a name (extract, lego) or classes (complete), the cover strength for covers."""
    out: dict = {"task": "cover" if has_codes and task == "text2music" else task}
    if task in ("repaint", "lego"):
        default_end = end is None or end < 0
        if task == "lego" and start == 0 and default_end:
            pass  # lego without a window: the whole source
        else:
            out["repainting_start"] = start
            out["repainting_end"] = (0.0 if start < 0 else None) if default_end else end
    if task in ("extract", "lego") and track.strip():
        out["track_name"] = track.strip()
    if task == "complete" and track.strip():
        out["track_classes"] = [t.strip().lower() for t in re.split(r"[|,]", track) if t.strip()]
    if out["task"] in ("cover", "cover-nofsq"):
        out["audio_cover_strength"] = strength
    return out


def _check_sources(task: str, has_codes: bool, src, field_codes: str, field_audio: str) -> None:
    if has_codes and src is not None:
        raise BadRequest(f"{field_codes}: give either audio codes or source audio ({field_audio}), not both")
    if has_codes and task not in ("text2music", "cover"):
        raise BadRequest(f"{field_codes}: audio codes drive text2music and cover only, not {task}")
    if task in SOURCE_TASKS and src is None and not (task == "cover" and has_codes):
        raise BadRequest(f"{field_audio}: task_type {task} needs the source audio (multipart part '{field_audio}')")
    if task == "text2music" and src is not None:
        raise BadRequest(f"{field_audio}: text2music takes no source audio; choose a task such as cover or repaint")


# -- acestep.cpp's API -------------------------------------------------------------------------
def _check_supported(req: AceRequest) -> None:
    for name, (default, why) in UNSUPPORTED.items():
        if getattr(req, name) != default:
            raise BadRequest(f"{name}: {why} (got {getattr(req, name)!r})")
    if req.peak_clip not in (0, 10):
        raise BadRequest(f"peak_clip: percentile clipping is not implemented; the audio is peak-normalised to "
                         f"-1 dBFS (0 or 10), got {req.peak_clip}")


def _controls(*, solver: str = "euler", dcw: Optional[dict] = None, **fields):
    """The synth stage's Controls; DCW is on when a scaler is above 0 and the solver injects no
    noise (acestep.cpp's rule, dit-sampler.h); a bad value is a BadRequest naming the field."""
    on = dcw and (dcw["dcw_scaler"] > 0 or dcw["dcw_high_scaler"] > 0) and solver not in NOISE_SOLVERS
    try:
        return eng.make_controls(solver=solver, **(dcw if on else {}), **fields)
    except InputError as e:
        raise BadRequest(str(e)) from None


def _adapters(models: eng.Models, name: str, scale: float, field: str = "adapter") -> tuple:
    """((file, scale),) of the adapter a request names in the --adapters folder; () for none."""
    if not name:
        return ()
    path = models.adapters.pick(name)
    if path is None:
        if not models.adapters.names():
            raise BadRequest(f"{field}: this server has no adapters (start it with --adapters DIR)")
        raise BadRequest(f"{field}: no adapter named {name!r} (have: {', '.join(models.adapters.names())})")
    return ((path, scale),)


def ace_request(req: AceRequest, src=None, ref=None) -> eng.SynthItem:
    """One acestep.cpp request as the package's Request and synth options."""
    _check_supported(req)
    if not req.caption.strip() and req.task_type not in CAPTIONLESS_TASKS:
        raise BadRequest("caption: required")
    codes = _codes(req.audio_codes, "audio_codes")
    _check_sources(req.task_type, bool(codes), src, "audio_codes", "audio")
    if req.guidance_scale and req.guidance_scale < 1:
        raise BadRequest(f"guidance_scale: 0 (the model's) or at least 1, got {req.guidance_scale}")
    if req.duration and req.duration < 1:
        raise BadRequest(f"duration: 0 (unset) or at least 1 second, got {req.duration}")
    instrumental = req.lyrics.strip() == "[Instrumental]"  # acestep.cpp: no vocals, so no language
    request = eng.make_request(
        caption=req.caption, lyrics=req.lyrics, codes=codes, bpm=req.bpm or None, duration=_duration(req.duration),
        keyscale=req.keyscale.strip() or None, timesignature=_timesignature(req.timesignature),
        language="unknown" if instrumental else (req.vocal_language.strip() or None), src_audio=src, ref_audio=ref,
        **_task_fields(req.task_type, track=req.track, start=req.repainting_start, end=req.repainting_end,
                       strength=req.audio_cover_strength, has_codes=bool(codes)))
    timesteps = _timesteps(req.custom_timesteps, "custom_timesteps")
    controls = _controls(solver=req.solver, stork_substeps=req.stork_substeps,
                         dcw={"dcw_mode": req.dcw_mode, "dcw_scaler": req.dcw_scaler,
                              "dcw_high_scaler": req.dcw_high_scaler})
    return eng.SynthItem(request=request, seed=_seed(req.seed),
                         steps=len(timesteps) if timesteps else (req.inference_steps or None),
                         guidance=req.guidance_scale or None, shift=req.shift or 3.0, timesteps=timesteps,
                         controls=controls)


def synth_job(reqs: list[AceRequest], models: eng.Models, src: Optional[np.ndarray] = None,
              ref: Optional[np.ndarray] = None) -> Job:
    """POST /synth: every request (and each of its synth_batch_size variants, on consecutive seeds)
    rendered in turn; the result is acestep.cpp's multipart/mixed, an audio and a latent part per track."""
    if not reqs:
        raise BadRequest("empty request")
    if sum(r.synth_batch_size for r in reqs) > MAX_TRACKS:
        raise BadRequest(f"synth_batch_size: at most {MAX_TRACKS} tracks per job in all")
    items = []
    for req in reqs:
        item = ace_request(req, src, ref)
        items += [eng.SynthItem(**{**vars(item), "seed": (item.seed + i) % (MAX_SEED + 1)})
                  for i in range(req.synth_batch_size)]
    first = reqs[0]
    adapters = _adapters(models, first.adapter, first.adapter_scale)  # a batch wears its first request's
    items = [eng.SynthItem(**{**vars(it), "adapters": adapters}) for it in items]
    dit = _model(models, "dit", first.synth_model, "synth_model")
    vae = _model(models, "vae", first.vae, "vae")
    _audio_format(models, first.output_format, first.mp3_bitrate, "output_format")

    def run(engine: eng.Engine, progress) -> Result:
        tracks = engine.run_synth(items, dit=dit, vae=vae, fmt=first.output_format, bitrate=first.mp3_bitrate,
                                  report=progress.part)
        return Result(multipart_audio(tracks), MULTIPART_MIME, tracks)

    return Job("synth", run, stages=eng.synth_plan(items[0]), parts=len(items), summary=_summary(items[0]))


def lm_job(req: AceRequest, models: eng.Models) -> Job:
    """POST /lm: a JSON array of requests (lm_batch_size of them, consecutive LM seeds), each ready
    for POST /synth.  ``lm_mode`` as acestep.cpp names them: generate fills the metadata and writes
    the codes; inspire reads the caption as a query and writes a whole song (``[Instrumental]``
    lyrics ask for an instrumental, ``vocal_language`` is forced), format rewrites caption and
    lyrics and fills the metadata; neither writes codes (acestep_ggml.lm_modes.run)."""
    _check_supported(req)
    if not models.names("lm"):  # acestep.cpp's answer
        raise BadRequest("No LM models in registry: the models folder has no LM", 501)
    if not req.caption.strip():
        raise BadRequest("caption: required")
    path = _model(models, "lm", req.lm_model, "lm_model")
    base = ace_request(req.model_copy(update={"task_type": "text2music", "audio_codes": ""}))
    try:
        eng.check_lm_request(base.request)
    except ValueError as e:
        raise BadRequest(str(e)) from None
    seed = _seed(req.lm_seed)
    instrumental = req.lyrics.strip() == "[Instrumental]"  # acestep.cpp's inspire reads it so
    items = [eng.LmItem(request=base.request, seed=(seed + i) % (MAX_SEED + 1), mode=req.lm_mode,
                        instrumental=instrumental, cfg_scale=req.lm_cfg_scale, temperature=req.lm_temperature,
                        top_p=req.lm_top_p, top_k=req.lm_top_k or None, rewrite_caption=req.use_cot_caption,
                        negative_prompt=req.lm_negative_prompt or None)
             for i in range(req.lm_batch_size)]

    def run(engine: eng.Engine, progress) -> Result:
        outs = engine.run_lm(items, path=path, report=progress.part)
        data = [lm_result(req, out, item.seed) for out, item in zip(outs, items)]
        return Result(json.dumps(data).encode(), "application/json", data=data)

    return Job("lm", run, stages=eng.lm_plan(items[0]), parts=len(items), summary=_summary(base))


def _metadata(out) -> dict:
    """A Request's caption, lyrics, metadata and codes under acestep.cpp's field names."""
    ts = eng.request_timesignature(out)
    return {"caption": out.caption, "lyrics": out.lyrics, "bpm": out.bpm or 0, "duration": float(out.duration or 0),
            "keyscale": out.keyscale or "", "timesignature": "" if ts is None else str(ts),
            "vocal_language": out.language or "", "audio_codes": ",".join(map(str, out.codes or []))}


def lm_result(req: AceRequest, out, lm_seed: int) -> dict:
    """The LM's request in acestep.cpp's JSON: the input with the metadata, caption and codes
    filled in (and, in inspire and format, the lyrics)."""
    update = {**_metadata(out), "lm_seed": lm_seed}
    if req.lm_mode == "generate":
        update["lyrics"] = req.lyrics
    if req.lm_mode == "inspire":
        update["use_cot_caption"] = True  # acestep.cpp reports it: inspire always writes the caption
    return req.model_copy(update=update).model_dump()


def understand_job(req: AceRequest, models: eng.Models, audio: Optional[np.ndarray],
                   latents: Optional[np.ndarray]) -> Job:
    """POST /understand: audio (or its latents) -> the LM's caption, lyrics, metadata and the codes,
    as ``Pipeline.understand(audio, seed=lm_seed)``.  The result is acestep.cpp's: multipart/mixed,
    a JSON part (an array of one request, ready for POST /synth) and a latent part (raw f32 [T, 64]).
    Sampling: acestep.cpp's understand defaults (temperature 0.3, no top-p) unless the request sets
    lm_temperature, lm_top_p (below 1) or lm_top_k."""
    if not models.names("lm"):  # acestep.cpp's answer when a model kind is missing
        raise BadRequest("Understand requires LM, DiT and VAE models: the models folder has no LM", 501)
    lm = _model(models, "lm", req.lm_model, "lm_model")
    dit = _model(models, "dit", req.synth_model, "synth_model")
    vae = _model(models, "vae", req.vae, "vae")
    given = req.model_fields_set
    seed = _seed(req.lm_seed)
    temperature = req.lm_temperature if "lm_temperature" in given else eng.UNDERSTAND_TEMPERATURE
    top_p = req.lm_top_p if "lm_top_p" in given and req.lm_top_p < 1 else None

    def run(engine: eng.Engine, progress) -> Result:
        out, z = engine.run_understand(lm=lm, dit=dit, vae=vae, seed=seed, audio=audio, latents=latents,
                                       temperature=temperature, top_p=top_p, top_k=req.lm_top_k or None,
                                       report=progress)
        data = [AceRequest().model_copy(update={**_metadata(out), "seed": req.seed, "lm_seed": seed}).model_dump()]
        return Result(multipart_json(data, np.ascontiguousarray(z, "<f4").tobytes()), MULTIPART_MIME, data=data)

    seconds = audio.shape[1] / models.sample_rate if audio is not None else len(latents) / models.latents_per_second
    return Job("understand", run, stages=(["encode"] if audio is not None else []) + ["tokenize", "lm-answer"],
               summary={"caption": "understand", "seconds": seconds, "seed": seed})


def vae_job(models: eng.Models, req: AceRequest, audio: Optional[np.ndarray], latents: Optional[np.ndarray]) -> Job:
    """POST /vae: audio -> latents (raw f32 [T, 64]) or latents -> audio (output_format)."""
    path = _model(models, "vae", req.vae, "vae")
    if audio is not None:
        def encode(engine: eng.Engine, progress) -> Result:
            return Result(engine.run_vae_encode(audio, path=path, report=progress), "application/octet-stream")

        return Job("vae", encode, stages=["encode"], summary={"caption": "VAE encode",
                                                              "seconds": audio.shape[1] / models.sample_rate})
    _audio_format(models, req.output_format, req.mp3_bitrate, "output_format")

    def decode(engine: eng.Engine, progress) -> Result:
        track = engine.run_vae_decode(latents, path=path, fmt=req.output_format, bitrate=req.mp3_bitrate,
                                      report=progress)
        return Result(track.audio, track.mime, [track])

    return Job("vae", decode, stages=["vae"], summary={"caption": "VAE decode",
                                                        "seconds": len(latents) / models.latents_per_second})


def multipart_audio(tracks: list) -> bytes:
    """acestep.cpp's synth result: per track an audio part, then its latent part (raw f32 [T, 64])."""
    out = bytearray()
    for t in tracks:
        out += f"--{MULTIPART_BOUNDARY}\r\nContent-Type: {t.mime}\r\n\r\n".encode() + t.audio + b"\r\n"
        out += (f"--{MULTIPART_BOUNDARY}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Disposition: form-data; name=\"latent\"\r\n\r\n").encode() + (t.latent or b"") + b"\r\n"
    out += f"--{MULTIPART_BOUNDARY}--\r\n".encode()
    return bytes(out)


def multipart_json(data, latent: bytes) -> bytes:
    """acestep.cpp's understand result: a JSON part, then a latent part (raw f32 [T, 64])."""
    out = f"--{MULTIPART_BOUNDARY}\r\nContent-Type: application/json\r\n\r\n".encode() + json.dumps(data).encode()
    out += (f"\r\n--{MULTIPART_BOUNDARY}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Disposition: form-data; name=\"latent\"\r\n\r\n").encode() + latent
    return out + f"\r\n--{MULTIPART_BOUNDARY}--\r\n".encode()


def _summary(item) -> dict:
    r = item.request
    return {"caption": r.caption[:200], "task": r.task, "duration": r.duration,
            "seed": getattr(item, "seed", None)}


# -- upstream's API --------------------------------------------------------------------------
def upstream_job(task: UpstreamTask, models: eng.Models, src=None, ref=None) -> Job:
    """POST /release_task: optionally the LM (``thinking``), then the synth stage, ``batch_size`` songs."""
    refusals = {"sample_mode": task.sample_mode, "sample_query": task.sample_query, "use_format": task.use_format,
                "src_audio_path": task.src_audio_path,
                "reference_audio_path": task.reference_audio_path}
    for name, value in refusals.items():
        if value:
            why = "upload the audio instead; server-side paths are refused" if name.endswith("_path") \
                else "not implemented"
            raise BadRequest(f"{name}: {why}")
    if task.lm_repetition_penalty != 1.0:
        raise BadRequest("lm_repetition_penalty: not implemented (1.0 only)")
    if task.instruction is not None and task.instruction.strip() not in ("", eng.task_instruction(task.task_type)):
        raise BadRequest("instruction: follows task_type here; leave it out")
    if not task.prompt.strip() and task.task_type not in CAPTIONLESS_TASKS:
        raise BadRequest("prompt: required")
    if task.guidance_scale and task.guidance_scale < 1:
        raise BadRequest(f"guidance_scale: at least 1, got {task.guidance_scale}")
    if task.audio_duration and task.audio_duration < 1:
        raise BadRequest(f"audio_duration: at least 1 second, got {task.audio_duration}")
    codes = _codes(task.audio_code_string, "audio_code_string")
    think = task.thinking and src is None and not codes  # as Pipeline.generate: a source makes the LM moot
    _check_sources(task.task_type, bool(codes) or think, src, "audio_code_string", "src_audio")
    dit = _model(models, "dit", task.model, "model")
    vae = _model(models, "vae", "", "vae")
    _audio_format(models, task.audio_format, None, "audio_format")
    lm_path = _model(models, "lm", task.lm_model_path, "lm_model_path") if think else None
    request = eng.make_request(
        caption=task.prompt, lyrics=task.lyrics, codes=codes, bpm=task.bpm or None,
        duration=_duration(task.audio_duration), keyscale=task.key_scale.strip() or None,
        timesignature=_timesignature(task.time_signature, "time_signature"),
        language=task.vocal_language.strip() or None, src_audio=src, ref_audio=ref,
        **_task_fields(task.task_type, track="", start=task.repainting_start, end=task.repainting_end,
                       strength=task.audio_cover_strength, has_codes=bool(codes) or think))
    if think:
        try:
            eng.check_lm_request(request)
        except ValueError as e:
            raise BadRequest(str(e)) from None
    timesteps = _timesteps(task.timesteps, "timesteps")
    if task.cfg_interval_start > task.cfg_interval_end:
        raise BadRequest("cfg_interval_start: must not pass cfg_interval_end")
    controls = _controls(solver="sde" if task.infer_method == "sde" else "euler", use_adg=task.use_adg,
                         cfg_interval=(task.cfg_interval_start, task.cfg_interval_end))
    seed = _seed(-1 if task.use_random_seed else task.seed)
    items = [eng.SynthItem(request=request, seed=(seed + i) % (MAX_SEED + 1),
                           steps=len(timesteps) if timesteps else (task.inference_steps or None),
                           guidance=task.guidance_scale or None, shift=task.shift, timesteps=timesteps,
                           controls=controls)
             for i in range(task.batch_size or 1)]
    lm_item = eng.LmItem(request=request, seed=_seed(-1), cfg_scale=task.lm_cfg_scale,
                         temperature=task.lm_temperature, top_p=task.lm_top_p, top_k=task.lm_top_k or None,
                         fsm=task.constrained_decoding, rewrite_caption=task.use_cot_caption,
                         negative_prompt=task.lm_negative_prompt or None) if think else None

    def run(engine: eng.Engine, progress) -> Result:
        todo = items
        if lm_item is not None:
            written = engine.run_lm([lm_item], path=lm_path, report=lambda i: progress.part(0))[0]
            todo = [eng.SynthItem(**{**vars(it), "request": written}) for it in items]
        tracks = engine.run_synth(todo, dit=dit, vae=vae, fmt=task.audio_format, bitrate=None,
                                  report=progress.part)
        return Result(multipart_audio(tracks), MULTIPART_MIME, tracks)

    stages = (eng.lm_plan(lm_item) if lm_item else []) + eng.synth_plan(items[0])
    return Job("generate", run, stages=stages, parts=len(items), summary=_summary(items[0]))
