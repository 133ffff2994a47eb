"""Helpers of the server tests: tools that must be there in CI, a live server on loopback, waiting
for jobs, and reading acestep.cpp's multipart results."""
from __future__ import annotations

import contextlib
import email.parser
import importlib
import io
import os
import threading
import time

import numpy as np
import pytest


def need(module: str, how: str):
    """Imports ``module``; without it a test fails in CI (CI set) and is skipped elsewhere, saying how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        message = f"{module} is missing ({e}): {how}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message, allow_module_level=True)


def need_file(path: str, how: str) -> str:
    if not os.path.exists(path):
        message = f"{path} is missing: {how}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message, allow_module_level=True)
    return path


@contextlib.contextmanager
def live_server(app):
    """The app under uvicorn on 127.0.0.1 (a free port), in a thread of this process; yields its URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                                           timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)
        assert not thread.is_alive(), "the server did not stop"


def wait(client, job_id: str, timeout: float = 180.0) -> dict:
    """Polls GET /job until the job has ended; its status JSON."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get("/job", params={"id": job_id}).json()
        if status["status"] != "running":
            return status
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} still running after {timeout} s")


def wait_for(client, job_id: str, predicate, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get("/job", params={"id": job_id}).json()
        if predicate(status):
            return status
        time.sleep(0.02)
    raise TimeoutError(f"job {job_id}: condition not met in {timeout} s")


def multipart(body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    """(content type, payload) of each part of a multipart/mixed body, read by the standard library's parser."""
    message = email.parser.BytesParser().parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    assert message.is_multipart(), content_type
    return [(part.get_content_type(), part.get_payload(decode=True)) for part in message.get_payload()]


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    import soundfile as sf

    audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return audio.T, rate


def wav_bytes(audio: np.ndarray, rate: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.ascontiguousarray(audio.T), rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
