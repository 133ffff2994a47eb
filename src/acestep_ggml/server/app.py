"""The FastAPI application: acestep.cpp's job API, progress as server-sent events, upstream's
/release_task face, and the web page.

    POST /lm /synth /understand /vae          -> {"id": ...}, the job queued
    GET  /job?id=N[&result=1]                  status JSON, or the result (acestep.cpp's shapes)
    POST /job?id=N&cancel=1                    cancel
    GET  /job/events?id=N                      SSE: the job's progress until it ends
    GET  /jobs                                 every job kept, newest first
    GET  /job/audio?id=N[&index=i]             one track's audio
    GET  /health /props /logs (SSE)            as acestep.cpp
    POST /release_task /query_result, GET /v1/audio   upstream's face over the same jobs
    GET  /                                     the page (static files in the package)
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import engine as eng
from . import specs
from .jobs import FINISHED, Job, JobQueue, QueueFull, Signal
from .schemas import AceRequest, CancelStatus, Error, JobId, JobStatus, QueryResult, UpstreamTask

log = logging.getLogger("acestep_ggml.server")
STATIC = Path(__file__).parent / "static"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEPALIVE_S = 15.0
# The page's own files only, and what it fetches from this server (audio comes back as blobs).
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
            "media-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


bearer = HTTPBearer(auto_error=False, description="the server's --api-key")
Credentials = Annotated[Optional[HTTPAuthorizationCredentials], Depends(bearer)]


async def bearer_token(creds: Credentials) -> Optional[str]:
    return creds.credentials if creds else None


Token = Annotated[Optional[str], Depends(bearer_token)]
JobIdQuery = Annotated[str, Query(min_length=1, max_length=64, description="the job id")]
Flag = Annotated[Optional[str], Query(max_length=8, description="1 to ask for it")]


@dataclass
class ServerConfig:
    """What `python -m acestep_ggml serve` sets (see its --help)."""

    models: str
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    n_threads: Optional[int] = None
    api_key: Optional[str] = None
    max_queue: int = 32
    keep_results: int = 32
    max_body: int = 256 * 2**20  # acestep.cpp's limit: source and reference audio of 10 minutes each
    cors_origins: list[str] = field(default_factory=list)
    memory_budget: Optional[int] = None  # bytes of model files kept loaded; None: half the free memory
    idle_unload: float = 300.0
    log_lines: int = 512
    adapters: Optional[str] = None  # the folder of the adapters requests may name (--adapters)


class LogRing(logging.Handler):
    """The server's log lines, the last few hundred kept for GET /logs (acestep.cpp streams its stderr)."""

    def __init__(self, size: int):
        super().__init__()
        self.lines: deque[tuple[int, str]] = deque(maxlen=size)
        self.changed = Signal()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record).replace("\n", " | ")
        except Exception:  # noqa: BLE001 -- a log line must never break the server
            return
        self.lines.append((self.changed.version + 1, line))
        self.changed.fire()


def _error(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(e: ValidationError | RequestValidationError) -> str:
    """The first problem, field first ("bpm: Input should be ..."), as acestep.cpp's one-line errors."""
    err = e.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "form")]
    return f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}"


class BodyLimit:
    """413 for a request body over ``limit`` bytes, declared or streamed (pure ASGI: nothing is buffered)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", ())).get(b"content-length")
        too_big = _error(413, f"request body over the limit of {self.limit} bytes")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await too_big(scope, receive, send)
        seen, started = 0, False

        class TooLarge(Exception):
            pass

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except TooLarge:
            if not started:
                await too_big(scope, receive, send)


def create_app(config: ServerConfig, models: Optional[eng.Models] = None) -> FastAPI:
    """The application for ``config``; the models are found (and checked) now, loaded by the first job."""
    models = models or eng.Models(config.models, device=config.devices[0], adapters=config.adapters)
    budget = eng.Budget(config.memory_budget, config.idle_unload)
    if budget.bytes is None:
        free = eng.available_memory(config.devices[0])
        budget.bytes = free // 2 if free else None
    logs = LogRing(config.log_lines)
    for name in ("acestep_ggml", "uvicorn", "uvicorn.error"):
        logging.getLogger(name).addHandler(logs)
    logging.getLogger("acestep_ggml").setLevel(logging.INFO)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engines = [eng.Engine(models, device=d, n_threads=config.n_threads, budget=budget) for d in config.devices]
        queue = JobQueue(engines, max_queue=config.max_queue, keep=config.keep_results)
        logs.changed.loop = asyncio.get_running_loop()
        queue.start(logs.changed.loop)
        app.state.queue = queue
        log.info("serving %s on %s (%s Hz)", models.folder, ", ".join(config.devices), models.sample_rate)
        try:
            yield
        finally:
            await run_in_threadpool(queue.stop)
            logs.changed.loop = None
            for name in ("acestep_ggml", "uvicorn", "uvicorn.error"):
                logging.getLogger(name).removeHandler(logs)

    app = FastAPI(title="acestep-ggml", version=eng.version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None,  # served below, behind the API key like every other route
                  description="ACE-Step 1.5 music generation on GGML: acestep.cpp's job API, progress events, "
                              "and upstream's /release_task.")
    app.add_middleware(BodyLimit, limit=config.max_body)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware  # noqa: PLC0415

        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        return _error(400, _validation_message(e))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        headers = dict(getattr(e, "headers", None) or {})
        if e.status_code == 405:  # Starlette names the methods of the first route of the path only
            methods = {m for r in app.routes if getattr(r, "path", None) == request.url.path
                       for m in getattr(r, "methods", None) or ()}
            headers["Allow"] = ", ".join(sorted(methods))
        return _error(e.status_code, str(e.detail), headers)

    @app.exception_handler(specs.BadRequest)
    async def bad_request(request: Request, e: specs.BadRequest):
        return _error(e.status, str(e))

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, e: QueueFull):
        return _error(429, str(e), {"Retry-After": "10"})

    # -- authentication -------------------------------------------------------------------------

    def key_ok(given: Optional[str]) -> bool:
        return config.api_key is None or (given is not None and hmac.compare_digest(given.encode(),
                                                                                     config.api_key.encode()))

    async def require_key(creds: Credentials):
        if not key_ok(creds.credentials if creds else None):
            raise StarletteHTTPException(401, "missing or wrong API key (Authorization: Bearer <key>)",
                                         headers={"WWW-Authenticate": "Bearer"})

    def require_upstream_key(header: Optional[str], body_token: Optional[str]) -> None:
        """Upstream's clients may send the key in the body (ai_token) instead of the header."""
        if not (key_ok(header) or (body_token is not None and key_ok(body_token))):
            raise StarletteHTTPException(401, "missing or wrong API key (Authorization: Bearer <key>, or ai_token)",
                                         headers={"WWW-Authenticate": "Bearer"})

    unauthorized = {401: {"model": Error, "description": "no API key, or a wrong one"}} if config.api_key else {}
    api = APIRouter(dependencies=[Depends(require_key)] if config.api_key else [], responses=unauthorized)
    upstream = APIRouter(responses=unauthorized)

    def queue() -> JobQueue:
        return app.state.queue

    def find(job_id: str) -> Job:
        job = queue().get(job_id)
        if job is None:
            raise StarletteHTTPException(404, "Job not found")
        return job

    def status_of(job: Job) -> dict:
        return job.status(queue().position(job))

    async def read_form(request: Request):
        try:
            return await request.form(max_files=8, max_fields=32, max_part_size=16 * 2**20)
        except Exception as e:  # noqa: BLE001 -- python-multipart's errors for a malformed body
            raise specs.BadRequest(f"malformed multipart body: {e}") from None

    async def part_bytes(form, name: str) -> Optional[bytes]:
        part = form.get(name)
        if part is None:
            return None
        return await part.read() if hasattr(part, "read") else str(part).encode()

    def parse_json(text: bytes | str, adapter: TypeAdapter, what: str):
        """JSON text validated by ``adapter``; a BadRequest naming the part and the field otherwise."""
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise specs.BadRequest(f"{what}: invalid JSON") from None
        try:
            return adapter.validate_python(value)
        except ValidationError as e:
            prefix = "" if what == "body" else f"{what}: "
            raise specs.BadRequest(prefix + _validation_message(e)) from None

    async def decode(data: Optional[bytes], name: str):
        """Uploaded audio, decoded and resampled to the models' rate off the event loop."""
        if data is None:
            return None
        try:
            return await run_in_threadpool(eng.decode_upload, data, name, models.sample_rate)
        except ValueError as e:
            raise specs.BadRequest(str(e)) from None

    async def upload(form, name: str):
        return await decode(await part_bytes(form, name), name)

    async def latents(form, name: str):
        data = await part_bytes(form, name)
        if data is None:
            return None
        if len(data) > eng.MAX_LATENT_FRAMES * eng.LATENT_CHANNELS * 4:
            raise specs.BadRequest(f"{name}: over {eng.MAX_LATENT_FRAMES} frames", 413)
        try:
            return eng.latents_from_bytes(data, name)
        except ValueError as e:
            raise specs.BadRequest(str(e)) from None

    def queued(job: Job) -> dict:
        queue().submit(job)
        return {"id": job.id}

    ace_one = TypeAdapter(AceRequest)
    ace_list = TypeAdapter(list[AceRequest])
    created = {200: {"model": JobId}, 400: {"model": Error}, 413: {"model": Error}, 429: {"model": Error}}
    multipart_schema = {"type": "object", "properties": {
        "request": {"type": "string", "description": "the AceRequest as JSON text"},
        "audio": {"type": "string", "format": "binary", "description": "source audio (WAV, FLAC, OGG, MP3)"},
        "ref_audio": {"type": "string", "format": "binary", "description": "reference audio, for its timbre"},
        "src_latents": {"type": "string", "format": "binary", "description": "raw f32 [T, 64] latents"}}}
    ace_ref = {"$ref": "#/components/schemas/AceRequest"}

    # -- acestep.cpp's API ---------------------------------------------------------------------
    lm_created = {**created, 501: {"model": Error, "description": "the models folder has no LM"}}

    @api.post("/lm", responses=lm_created, summary="LM: fill the metadata and write the audio codes")
    async def post_lm(body: AceRequest) -> JobId:
        return queued(specs.lm_job(body, models))

    @api.post("/synth", responses=created, summary="render a song (or a batch) to audio", openapi_extra={
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"anyOf": [ace_ref, {"type": "array", "items": ace_ref,
                                                                 "minItems": 1, "maxItems": 9}]}},
            "multipart/form-data": {"schema": multipart_schema}}}})
    async def post_synth(request: Request) -> JobId:
        src = ref = None
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await read_form(request)
            text = await part_bytes(form, "request")
            if text is None:
                raise specs.BadRequest("Multipart: missing 'request' part")
            for name in ("src_latents", "ref_latents"):
                if form.get(name) is not None:
                    raise specs.BadRequest(f"{name}: latents as input are not implemented; send the audio")
            reqs = [parse_json(text, ace_one, "request")]
            src, ref = await upload(form, "audio"), await upload(form, "ref_audio")
        else:
            body = await request.body()
            reqs = parse_json(body, ace_list, "body") if body.lstrip().startswith(b"[") \
                else [parse_json(body, ace_one, "body")]
        return queued(specs.synth_job(reqs, models, src, ref))

    understand_schema = {"type": "object", "properties": {
        "request": {"type": "string", "description": "an AceRequest as JSON text (optional): lm_model, synth_model, "
                                                     "vae, lm_seed, lm_temperature, lm_top_p, lm_top_k"},
        "audio": {"type": "string", "format": "binary", "description": "the song (WAV, FLAC, OGG, MP3)"},
        "src_latents": {"type": "string", "format": "binary", "description": "its latents instead: raw f32 [T, 64]"}}}

    @api.post("/understand", responses=lm_created, summary="audio -> caption, lyrics, metadata and codes (the LM)",
              openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {
                  "schema": understand_schema}}}})
    async def post_understand(request: Request) -> JobId:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise specs.BadRequest("Understand requires multipart/form-data")
        form = await read_form(request)
        text = await part_bytes(form, "request")
        req = parse_json(text, ace_one, "request") if text is not None else AceRequest()
        z = await latents(form, "src_latents")  # acestep.cpp: latents win when both are sent
        audio = await upload(form, "audio") if z is None else None
        if z is None and audio is None:
            raise specs.BadRequest("Multipart: missing 'audio' or 'src_latents' part")
        return queued(specs.understand_job(req, models, audio, z))

    @api.post("/vae", responses=created, summary="VAE: audio -> latents, or src_latents -> audio",
              openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {
                  "schema": multipart_schema}}}})
    async def post_vae(request: Request) -> JobId:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise specs.BadRequest("VAE endpoint requires multipart/form-data")
        form = await read_form(request)
        text = await part_bytes(form, "request")
        req = parse_json(text, ace_one, "request") if text is not None else AceRequest()
        if (form.get("audio") is None) == (form.get("src_latents") is None):
            raise specs.BadRequest("Multipart: provide exactly one of 'audio' (encode) or 'src_latents' (decode)")
        return queued(specs.vae_job(models, req, await upload(form, "audio"), await latents(form, "src_latents")))

    @api.get("/job", summary="a job's status, or with result=1 its result", responses={
        200: {"description": "status JSON (JobStatus), or the result: JSON for /lm, multipart/mixed for "
                             "/synth, raw latents or audio for /vae",
              "content": {"application/json": {"schema": {}}, "multipart/mixed": {"schema": {}},
                          "application/octet-stream": {"schema": {}}, "audio/wav": {"schema": {}}}},
        404: {"model": Error}})
    async def get_job(id: JobIdQuery, result: Flag = None):
        job = find(id)
        if result == "1":
            if job.state != "done" or job.result is None:
                raise StarletteHTTPException(404, "Result not ready")
            return Response(job.result.body, media_type=job.result.mime)
        return JSONResponse(status_of(job))

    @api.post("/job", summary="cancel a job (cancel=1): at once when waiting, at its next step when running",
              responses={200: {"model": CancelStatus}, 400: {"model": Error}, 404: {"model": Error}})
    async def post_job(id: JobIdQuery, cancel: Flag = None) -> CancelStatus:
        job = find(id)
        if cancel != "1":
            raise specs.BadRequest("Unknown action")
        state = queue().cancel(job)
        return CancelStatus(status="running" if state == "queued" else state)

    @app.get("/health", summary="liveness (no API key needed)", responses={200: {"content": {
        "application/json": {"schema": {"type": "object", "properties": {"status": {"type": "string"}}}}}}})
    async def health():
        return {"status": "ok"}

    @api.get("/props", summary="models, defaults, presets and server settings")
    async def props() -> dict:
        engines = queue().engines
        return {
            "version": eng.version(),
            "models": {kind: models.names(kind) for kind in ("lm", "embedding", "dit", "vae")},
            "adapters": models.adapters.names(),
            "cli": {"max_batch": specs.MAX_TRACKS},
            "default": AceRequest().model_dump(),
            "presets": {"turbo": {"inference_steps": 8, "guidance_scale": 1.0, "shift": 3.0},
                        "sft": {"inference_steps": 32, "guidance_scale": 7.0, "shift": 3.0}},
            "sample_rate": models.sample_rate,
            "is_turbo": models.is_turbo,
            "output_formats": ["mp3", "wav16", "wav24", "wav32"] if models.sample_rate >= eng.MP3_MIN_RATE
            else ["wav16", "wav24", "wav32"],
            "devices": [{"device": e.device, "loaded": e.loaded()} for e in engines],
            "queue": {"max": queue().max_queue, "keep": queue().keep, **queue().counts()},
            "memory_budget": budget.bytes, "idle_unload": budget.idle_unload,
        }

    @api.get("/logs", summary="the server's log lines as server-sent events (backlog, then live)",
             response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}})
    async def get_logs():
        async def stream():
            sent = 0
            while True:
                version = logs.changed.version
                for seq, line in list(logs.lines):
                    if seq > sent:
                        yield f"data: {line}\n\n"
                        sent = seq
                if not await logs.changed.wait(version, KEEPALIVE_S):
                    yield ": keepalive\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)

    # -- beyond acestep.cpp ------------------------------------------------------------------
    @api.get("/job/events", summary="a job's progress as server-sent events, until it ends",
             response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}},
                                                          404: {"model": Error}})
    async def job_events(id: JobIdQuery):
        job = find(id)

        async def stream():
            while True:
                version = job.changed.version
                status = status_of(job)
                yield f"data: {json.dumps(status)}\n\n"
                if job.state in FINISHED:
                    return
                while not await job.changed.wait(version, KEEPALIVE_S):
                    yield ": keepalive\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)

    @api.get("/jobs", summary="every job kept, newest first")
    async def list_jobs() -> list[JobStatus]:
        return [JobStatus(**status_of(j)) for j in reversed(queue().jobs())]

    @api.get("/job/audio", summary="one track's audio of a finished job", responses={
        200: {"content": {"audio/wav": {}, "audio/mpeg": {}, "audio/flac": {}}}, 404: {"model": Error}})
    async def job_audio(id: JobIdQuery, index: Annotated[int, Query(ge=0, le=8)] = 0):
        return _track_response(find(id), index)

    def _track_response(job: Job, index: int) -> Response:
        if job.state != "done" or job.result is None or index >= len(job.result.tracks):
            raise StarletteHTTPException(404, "no such audio (the job is not done, or has fewer tracks)")
        track = job.result.tracks[index]
        name = f"acestep-{job.id}-{index}{track.suffix}"
        return Response(track.audio, media_type=track.mime,
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    # -- upstream's face -------------------------------------------------------------------------
    def envelope(data, code: int = 200, error: Optional[str] = None) -> dict:
        return {"data": data, "code": code, "error": error, "timestamp": int(time.time() * 1000), "extra": None}

    @upstream.post("/release_task", summary="upstream's: queue a song; returns task_id and queue position",
                   responses={400: {"model": Error}, 429: {"model": Error}},
                   openapi_extra={"requestBody": {"required": True, "content": {
                       "application/json": {"schema": {"$ref": "#/components/schemas/UpstreamTask"}},
                       "multipart/form-data": {"schema": {"type": "object", "properties": {
                           "src_audio": {"type": "string", "format": "binary"},
                           "ref_audio": {"type": "string", "format": "binary"}},
                           "additionalProperties": {"type": "string"}}}}}})
    async def release_task(request: Request, token: Token):
        src = ref = None
        adapter = TypeAdapter(UpstreamTask)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await read_form(request)
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            aliases = {"ctx_audio": "src_audio", "reference_audio": "ref_audio"}
            files = {aliases.get(k, k): v for k, v in form.items() if not isinstance(v, str)}
            unknown = sorted(set(files) - {"src_audio", "ref_audio"})
            if unknown:
                raise specs.BadRequest(f"{unknown[0]}: unknown upload (src_audio, ref_audio)")
            try:
                task = adapter.validate_python(fields)
            except ValidationError as e:
                raise specs.BadRequest(_validation_message(e)) from None
            require_upstream_key(token, task.ai_token)
            for name, part in files.items():
                audio = await decode(await part.read(), name)
                src, ref = (audio, ref) if name == "src_audio" else (src, audio)
        else:
            task = parse_json(await request.body(), adapter, "body")
            require_upstream_key(token, task.ai_token)
        job = queue().submit(specs.upstream_job(task, models, src, ref))
        return envelope({"task_id": job.id, "status": "queued", "queue_position": queue().position(job)})

    @upstream.post("/query_result", summary="upstream's: the status and audio links of tasks")
    async def query_result(body: QueryResult, token: Token) -> dict:
        require_upstream_key(token, body.ai_token)
        ids = body.task_id_list
        if isinstance(ids, str):
            try:
                ids = json.loads(ids)
            except ValueError:
                raise specs.BadRequest("task_id_list: not a JSON list") from None
            if not isinstance(ids, list):
                raise specs.BadRequest("task_id_list: not a JSON list")
        return envelope([_upstream_result(str(i)) for i in ids[:100]])

    def _upstream_result(task_id: str) -> dict:
        job = queue().get(task_id)
        if job is None:
            return {"task_id": task_id, "result": "[]", "status": 0}
        code = {"done": 1, "failed": 2, "cancelled": 2}.get(job.state, 0)
        tracks = job.result.tracks if job.state == "done" and job.result else []
        items = [{"file": f"/v1/audio?path={job.id}-{i}{t.suffix}", "wave": "", "status": code,
                  "create_time": int(job.created), "env": "development", "prompt": t.request.caption,
                  "lyrics": t.request.lyrics, "metas": _metas(t)} for i, t in enumerate(tracks)]
        items = items or [{"file": "", "wave": "", "status": code, "create_time": int(job.created),
                           "env": "development", "prompt": "", "lyrics": "", "metas": {},
                           **({"error": job.error} if job.error else {})}]
        return {"task_id": task_id, "result": json.dumps(items, ensure_ascii=False), "status": code}

    @api.get("/v1/audio", summary="upstream's audio download: `path` is a link from /query_result, never a file "
                                  "path", responses={200: {"content": {"audio/wav": {}, "audio/mpeg": {}}},
                                                     404: {"model": Error}})
    async def v1_audio(path: Annotated[str, Query(max_length=64)]):
        job_id, _, rest = path.partition("-")
        index = rest.split(".", 1)[0]
        job = queue().get(job_id)
        if job is None or not index.isdigit():
            raise StarletteHTTPException(404, "no such audio")
        return _track_response(job, int(index))

    def spec() -> dict:
        """FastAPI's spec, with our 400 where it documents its 422: a bad field is answered 400 here,
        with acestep.cpp's {"error": ...} body."""
        if app.openapi_schema is None:
            schema = app.openapi()
            for operations in schema["paths"].values():
                for op in operations.values():
                    responses = op.get("responses", {})
                    if responses.pop("422", None) is not None:
                        responses.setdefault("400", {"description": "a field is missing or invalid", "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return app.openapi_schema

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi():
        return spec()

    app.include_router(api)
    app.include_router(upstream)

    # -- the page ------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_CSP,
                                                            "X-Content-Type-Options": "nosniff",
                                                            "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _metas(track) -> dict:
    r = track.request
    ts = eng.request_timesignature(r)
    return {"bpm": r.bpm, "duration": track.seconds, "genres": "", "keyscale": r.keyscale or "",
            "timesignature": "" if ts is None else str(ts)}
