"""The server under load on loopback (uvicorn in this process, real HTTP from client threads): six
jobs at once all finish; 50 requests from 10 clients each end done, failed with a reason, or 429,
and the server's memory is flat afterwards."""
from __future__ import annotations

import gc
import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from _server import live_server, need, wait, wav_bytes

need("fastapi", "pip install 'acestep-ggml[server]'")
need("uvicorn", "pip install 'acestep-ggml[server]'")
httpx = need("httpx", "pip install httpx")

from acestep_ggml.server.app import ServerConfig, create_app  # noqa: E402

RATE = 200  # the tiny synth models' audio
SONG = {"caption": "warm analog pads, slow", "lyrics": "[Verse]\nla", "bpm": 90, "duration": 2,
        "output_format": "wav16"}


@pytest.fixture(scope="module")
def models_dir(synth_models):
    return synth_models[2]["f32"]


def rss_bytes() -> int:
    """Resident memory of this process (the server runs in it)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_six_concurrent_jobs_all_finish(models_dir):
    with live_server(create_app(ServerConfig(models=str(models_dir), n_threads=1))) as url:
        start = threading.Barrier(6)

        def one(seed: int) -> dict:
            with httpx.Client(base_url=url, timeout=60) as client:
                start.wait()
                r = client.post("/synth", json={**SONG, "seed": seed})
                assert r.status_code == 200, r.text
                return wait(client, r.json()["id"])

        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(one, range(6)))
        assert [r["status"] for r in results] == ["done"] * 6
        assert len({r["id"] for r in results}) == 6


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the resident memory")
def test_fifty_requests_from_ten_clients_none_lost_memory_flat(models_dir):
    # A bounded queue, so that a burst meets 429s; a source too short for its repaint window, so
    # that some jobs fail late, inside the worker.
    config = ServerConfig(models=str(models_dir), n_threads=1, max_queue=20, keep_results=8)
    short_source = wav_bytes(np.full((2, RATE), 0.1, np.float32), RATE)
    doomed = {**SONG, "task_type": "repaint", "repainting_start": 30, "repainting_end": 40}

    def client_run(url: str, index: int, n: int) -> list[tuple[str, str]]:
        """Sends n requests at once, then follows each to its end: (outcome, detail) per request."""
        outcomes, ids = [], []
        with httpx.Client(base_url=url, timeout=120) as client:
            for k in range(n):
                if (index + k) % 7 == 3:
                    r = client.post("/synth", files={"request": (None, json.dumps(doomed)),
                                                     "audio": ("s.wav", short_source)})
                else:
                    r = client.post("/synth", json={**SONG, "seed": index * 100 + k})
                if r.status_code == 429:
                    assert r.headers.get("retry-after") and r.json()["error"]
                    outcomes.append(("429", r.json()["error"]))
                else:
                    assert r.status_code == 200, r.text
                    ids.append(r.json()["id"])
            for job in ids:
                status = wait(client, job)
                outcomes.append((status["status"], status.get("error") or ""))
        return outcomes

    def burst(url: str, clients: int, per_client: int) -> list[tuple[str, str]]:
        with ThreadPoolExecutor(clients) as pool:
            runs = pool.map(lambda i: client_run(url, i, per_client), range(clients))
            return [o for run in runs for o in run]

    with live_server(create_app(config)) as url:
        burst(url, 10, 2)  # warm-up: models loaded, buffers allocated, results kept at their bound
        gc.collect()
        before = rss_bytes()
        outcomes = burst(url, 10, 5)
        gc.collect()
        after = rss_bytes()
        with httpx.Client(base_url=url) as client:
            assert client.get("/health").json() == {"status": "ok"}
            counts = client.get("/props").json()["queue"]

    assert len(outcomes) == 50
    kinds = {o for o, _ in outcomes}
    assert kinds <= {"done", "failed", "429"}, outcomes
    assert all(detail for o, detail in outcomes if o in ("failed", "429"))  # each says why
    assert all("repaint window" in d for o, d in outcomes if o == "failed")
    assert {"done", "failed", "429"} <= kinds  # the burst met every case
    assert counts["queued"] == 0 and counts["running"] == 0
    # Flat: the 50 requests leave no more than allocator noise behind (results are bounded by keep_results).
    growth = after - before
    print(f"\nRSS before {before / 2**20:.1f} MiB, after {after / 2**20:.1f} MiB, growth {growth / 2**20:.1f} MiB; "
          f"outcomes {sorted((k, sum(o == k for o, _ in outcomes)) for k in kinds)}")
    assert growth < 48 * 2**20
