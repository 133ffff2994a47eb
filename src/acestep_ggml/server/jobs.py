"""Jobs and the queue that runs them: one FIFO, one worker thread per device, a bound on waiting
jobs (beyond it the caller answers 429), the last N finished jobs kept, cancellation at the next
progress report (every LM token, DiT step and VAE tile), and a failing job that fails alone.

Workers are threads: the native core releases the GIL while it computes, so the event loop keeps
serving status polls and progress streams meanwhile.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from acestep_ggml.errors import AcestepError

log = logging.getLogger("acestep_ggml.server")

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)

# How much of a job each stage is, roughly, for the percentage (relative weights; a stage the
# job does not run does not count).  The DiT and the LM's codes dominate a song's time.
STAGE_WEIGHTS = {"lm-metadata": 15, "lm-codes": 35, "lm-answer": 40, "encode": 6, "text": 1, "condition": 1, "tokenize": 1,
                 "codes": 1, "dit": 50, "vae": 12}


class Signal:
    """Tells coroutines that something changed, from any thread: ``fire()`` bumps a version and wakes
    the waiters on the event loop (one wake-up at a time: a burst of LM tokens costs one);
    ``await wait(version)`` returns once the version has moved on."""

    def __init__(self, loop: Optional[asyncio.AbstractEventLoop] = None):
        self.version = 0
        self.loop = loop
        self._waiters: set[asyncio.Future] = set()
        self._pending = False

    def fire(self) -> None:
        self.version += 1
        if self.loop is None or self._pending:
            return  # a wake-up is on its way; the waiters will read the newest state
        self._pending = True
        try:
            self.loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop is closed: nobody is waiting
            self._pending = False

    def _wake(self) -> None:
        self._pending = False
        waiters, self._waiters = self._waiters, set()
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait(self, version: int, timeout: float) -> bool:
        """On the event loop: waits until the version passes ``version``; False on timeout."""
        if self.version != version:
            return True
        fut = asyncio.get_running_loop().create_future()
        self._waiters.add(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            self._waiters.discard(fut)
        return self.version != version


class Cancelled(AcestepError):
    """Raised from a job's progress callback once the job is cancelled: unwinds the model call (the
    worker catches it before any other error, so a cancelled job ends cancelled, not failed)."""


class QueueFull(AcestepError, RuntimeError):
    """The queue holds its maximum of waiting jobs, or the server is shutting down (HTTP 429)."""


@dataclass
class Result:
    """What GET /job?result=1 returns (body and type), and the pieces other routes serve."""

    body: bytes
    mime: str
    tracks: list = field(default_factory=list)  # engine.Track
    data: Any = None  # kind-specific: the LM's requests


@dataclass
class Job:
    kind: str  # lm, synth, vae, generate
    run: Callable  # run(engine, progress) -> Result, on a worker thread
    stages: list[str]
    parts: int = 1
    summary: dict = field(default_factory=dict)  # shown in listings: caption, duration, ...
    id: str = field(default_factory=lambda: secrets.token_hex(8))  # 64 random bits, as acestep.cpp's ids
    created: float = field(default_factory=time.time)
    state: str = QUEUED
    started: Optional[float] = None
    finished: Optional[float] = None
    stage: Optional[str] = None
    done: int = 0
    total: int = 0
    percent: float = 0.0
    error: Optional[str] = None
    result: Optional[Result] = None
    device: Optional[str] = None
    cancel: threading.Event = field(default_factory=threading.Event)
    changed: Signal = field(default_factory=Signal)

    def status(self, position: int = 0) -> dict:
        """The status JSON: acestep.cpp's `status` (queued jobs are `running` there), and ours beside it."""
        out = {"id": self.id, "status": RUNNING if self.state == QUEUED else self.state, "state": self.state,
               "kind": self.kind, "progress": round(self.percent, 1), "stage": self.stage, "done": self.done,
               "total": self.total, "position": position, "created": self.created, "started": self.started,
               "finished": self.finished, "device": self.device, "summary": self.summary}
        if self.error is not None:
            out["error"] = self.error
        if self.result is not None:
            out["tracks"] = len(self.result.tracks)
        return out


class Progress:
    """A job's progress(stage, done, total) callbacks, one per part (song of a batch), turned into
    a percentage that never goes back; each report first checks for cancellation."""

    def __init__(self, job: Job):
        self.job = job

    def part(self, index: int) -> Callable[[str, int, int], None]:
        def report(stage: str, done: int, total: int) -> None:
            job = self.job
            if job.cancel.is_set():
                raise Cancelled
            stages = job.stages if stage in job.stages else job.stages + [stage]
            weights = [STAGE_WEIGHTS.get(s, 1) for s in stages]
            k = stages.index(stage)
            within = min(done / total, 1.0) if total > 0 else 0.0
            fraction = (sum(weights[:k]) + weights[k] * within) / sum(weights)
            job.stage, job.done, job.total = stage, int(done), int(total)
            job.percent = max(job.percent, min(100.0 * (index + fraction) / max(job.parts, 1), 100.0))
            job.changed.fire()

        return report

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.part(0)(stage, done, total)


class JobQueue:
    """FIFO of jobs served by one worker thread per engine (one engine per device)."""

    def __init__(self, engines: list, max_queue: int = 32, keep: int = 32):
        self.engines, self.max_queue, self.keep = engines, max_queue, keep
        self._jobs: "OrderedDict[str, Job]" = OrderedDict()
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._threads: list[threading.Thread] = []
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    # -- lifetime -------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for engine in self.engines:
            t = threading.Thread(target=self._worker, args=(engine,), name=f"acestep-worker-{engine.device}",
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 30.0) -> None:
        """Cancels every waiting and running job and waits for the workers (a running job stops at
        its next progress report)."""
        with self._cond:
            self._stop = True
            for job in list(self._jobs.values()):
                job.cancel.set()
            while self._waiting:
                self._finish(self._waiting.popleft(), CANCELLED)
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)
        for engine in self.engines:
            engine.close()

    # -- submitting and looking up ---------------------------------------------------------
    def submit(self, job: Job) -> Job:
        with self._cond:
            if self._stop:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} jobs waiting); try again later")
            job.changed.loop = self._loop
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._evict()
            self._cond.notify()
        log.info("job %s queued (%s)", job.id, job.kind)
        return job

    def get(self, job_id: str) -> Optional[Job]:
        with self._cond:
            return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        with self._cond:
            return list(self._jobs.values())

    def position(self, job: Job) -> int:
        """1-based place among the waiting jobs; 0 when not waiting."""
        with self._cond:
            for i, j in enumerate(self._waiting):
                if j is job:
                    return i + 1
        return 0

    def counts(self) -> dict:
        with self._cond:
            states = [j.state for j in self._jobs.values()]
        return {s: states.count(s) for s in (QUEUED, RUNNING, DONE, FAILED, CANCELLED)}

    def cancel(self, job: Job) -> str:
        """A waiting job is cancelled at once, a running one at its next step; returns the status to report."""
        with self._cond:
            if job.state == QUEUED:
                self._waiting.remove(job)
                self._finish(job, CANCELLED)
            elif job.state == RUNNING:
                job.cancel.set()
                log.info("job %s: cancel requested", job.id)
                return CANCELLED
            return job.state

    # -- the workers -----------------------------------------------------------------------
    def _worker(self, engine) -> None:
        while True:
            with self._cond:
                if not self._waiting and not self._stop:
                    self._cond.wait(timeout=1.0)
                if self._stop:
                    return
                job = self._waiting.popleft() if self._waiting else None
                if job is not None:
                    job.state, job.started, job.device = RUNNING, time.time(), engine.device
            if job is None:  # idle: models are freed outside the lock, which submit() takes
                if engine.unload_if_idle():
                    log.info("%s: models unloaded after %.0f s idle", engine.device, engine.budget.idle_unload)
                continue
            job.changed.fire()
            log.info("job %s running on %s", job.id, engine.device)
            try:
                result = job.run(engine, Progress(job))
            except Cancelled:
                self._end(job, CANCELLED)
            except Exception as e:  # noqa: BLE001 -- any failure is the job's, never the server's
                self._fail(job, engine, e)
            else:
                job.result = result
                self._end(job, CANCELLED if job.cancel.is_set() else DONE)

    def _fail(self, job: Job, engine, e: Exception) -> None:
        if isinstance(e, AcestepError):
            message = str(e)
        else:
            # Not an error the package raises on purpose (out of memory, a bug): the models may be in
            # any state, so the next job loads them afresh.
            message = f"{type(e).__name__}: {e}"
            log.exception("job %s failed", job.id)
            engine.unload()
        if job.cancel.is_set():
            self._end(job, CANCELLED)
            return
        job.error = message
        self._end(job, FAILED)

    def _end(self, job: Job, state: str) -> None:
        with self._cond:
            self._finish(job, state)
            self._evict()
        log.info("job %s %s%s", job.id, state, f": {job.error}" if job.error else "")

    def _finish(self, job: Job, state: str) -> None:
        job.state, job.finished = state, time.time()
        if state == DONE:
            job.percent = 100.0
        job.changed.fire()

    def _evict(self) -> None:
        """Keeps the last ``keep`` finished jobs; waiting and running jobs are never evicted."""
        finished = [j for j in self._jobs.values() if j.state in FINISHED]
        for job in finished[:max(0, len(finished) - self.keep)]:
            del self._jobs[job.id]
