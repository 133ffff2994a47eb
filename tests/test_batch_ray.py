"""A table of songs on a real local Ray cluster: one song per row named by its id, each equal
to a single run, a failing row recorded, a second run that redoes nothing, a worker killed in the
middle of a row.

The cluster is ACESTEP_TEST_RAY_ADDRESS when set (CI: `ray start --head --num-cpus 2`, then
`auto`), else a private one started here (tests/_ray_cluster.py).  Two nodes and workers that
die every time: tests/test_batch_ray_nodes.py.
"""
from __future__ import annotations

import os
import signal
import socket
import time

import pytest
from _batch import assert_equals_single_run, cli, manifest, need, slow_rows, write_jsonl
from _ray_cluster import LocalCluster

from acestep_ggml import batch

need("ray")
# One worker runs every Ray test (pytest -n 2 --dist loadgroup): they share one 2-CPU cluster.
pytestmark = pytest.mark.xdist_group("ray")
RUN_TIMEOUT = 600  # seconds for one run of a few tiny rows, cluster connection included


@pytest.fixture(scope="module")
def ray_address():
    address = os.environ.get("ACESTEP_TEST_RAY_ADDRESS")
    if address:
        yield address
        return
    cluster = LocalCluster(head_cpus=2)
    try:
        yield cluster.address
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def models(synth_models):
    return synth_models[2]["f32"]


def run(table, models, out, address, *extra: str) -> tuple[int, str]:
    p = cli(str(table), "--models", str(models), "--output-dir", str(out), "--ray", "--address", address, "--quiet",
            *extra)
    _, err = p.communicate(timeout=RUN_TIMEOUT)
    return p.returncode, err


@pytest.fixture(scope="module")
def two_runs(models, ray_address, tmp_path_factory):
    """`batch --ray` twice over one table: an LM row, rows without the LM, one without a seed,
    one that fails."""
    folder = tmp_path_factory.mktemp("ray-batch")
    rows = [
        {"id": "lm", "caption": "warm pads", "duration": 10, "bpm": 90, "keyscale": "A minor", "timesignature": 4,
         "language": "en", "seed": 21},
        {"id": "nolm", "caption": "lofi piano", "duration": 20, "use_lm": False, "seed": 22, "format": "flac"},
        {"id": "broken", "caption": "too short", "duration": 0, "use_lm": False, "seed": 23},
        {"id": "noseed", "caption": "drums", "duration": 5, "use_lm": False},
        {"id": "steps", "caption": "bells", "duration": 8, "use_lm": False, "seed": 24, "steps": 3},
    ]
    table = write_jsonl(folder / "songs.jsonl", rows)
    out = folder / "out"
    first = run(table, models, out, ray_address, "--workers", "2")
    lines = manifest(out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != batch.MANIFEST}
    second = run(table, models, out, ray_address, "--workers", "2")
    return batch.read_table(table), out, first, second, lines, stamps


def test_ray_batch_writes_one_song_per_row_named_by_its_id(two_runs):
    _, out, (rc, err), _, lines, _ = two_runs
    assert rc == 1 and "4 rendered, 1 failed, 0 already there" in err, err
    assert sorted(p.name for p in out.iterdir()) == sorted(["lm.wav", "nolm.flac", "noseed.wav", "steps.wav",
                                                            batch.MANIFEST])
    assert sorted(r["id"] for r in lines) == sorted(["lm", "nolm", "broken", "noseed", "steps"])
    for r in lines:  # rendered by Ray workers, not by the driver
        host, pid = r["worker"].split(":")
        assert r["node"] and host == socket.gethostname() and int(pid) != os.getpid()


def test_ray_rows_equal_single_runs(two_runs, models):
    rows, out, _, _, lines, _ = two_runs
    seeds = {r["id"]: r["seed"] for r in lines}
    for row in rows:
        if row["id"] != "broken":
            assert_equals_single_run(models, out, row, seeds[row["id"]])


def test_ray_failing_row_is_recorded_and_the_rest_go_on(two_runs):
    lines = two_runs[4]
    broken = next(r for r in lines if r["id"] == "broken")
    assert broken["status"] == "failed" and broken["seed"] == 23 and broken["output"] is None
    assert broken["error"] == "InputError: duration must be 1..600 seconds, got 0"
    assert all(r["status"] == "ok" for r in lines if r["id"] != "broken")


def test_ray_second_run_redoes_nothing_but_the_failed_row(two_runs):
    _, out, _, (rc, err), lines, stamps = two_runs
    assert rc == 1 and "0 rendered, 1 failed, 4 already there" in err, err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != batch.MANIFEST} == stamps
    assert [r["id"] for r in manifest(out)[len(lines):]] == ["broken"]


def test_ray_worker_killed_mid_row_the_run_finishes_the_rest(models, ray_address, tmp_path):
    """SIGKILL to a worker as it starts its second row: Ray restarts it and the row is rendered
    again, whole; nothing partial is left and a rerun redoes nothing."""
    rows = slow_rows(4, seconds=20)
    table = write_jsonl(tmp_path / "t.jsonl", rows)
    out = tmp_path / "out"
    p = cli(str(table), "--models", str(models), "--output-dir", str(out), "--ray", "--address", ray_address,
            "--workers", "2", "--quiet")
    deadline = time.monotonic() + RUN_TIMEOUT
    while not (out / batch.MANIFEST).is_file() or not (out / batch.MANIFEST).read_text():
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.1)
    killed = manifest(out)[0]
    os.kill(int(killed["worker"].split(":")[1]), signal.SIGKILL)  # it went on to its next row
    _, err = p.communicate(timeout=RUN_TIMEOUT)
    assert p.returncode == 0 and "4 rendered, 0 failed" in err, err
    lines = manifest(out)
    assert sorted(r["id"] for r in lines) == [r["id"] for r in rows] and all(r["status"] == "ok" for r in lines)
    assert sorted(p.name for p in out.iterdir()) == sorted([batch.MANIFEST] + [f"{r['id']}.wav" for r in rows])
    # The killed worker, the other one, and the killed one restarted (its pid is new).
    assert len({r["worker"] for r in lines}) == 3
    assert killed["worker"] not in {r["worker"] for r in lines[1:]}
    by_id = {r["id"]: r for r in batch.read_table(table)}
    for r in lines[1:]:  # the row in flight at the kill among them
        assert_equals_single_run(models, out, by_id[r["id"]], r["seed"])
    rc, err = run(table, models, out, ray_address)
    assert rc == 0 and "0 rendered, 0 failed, 4 already there" in err, err
