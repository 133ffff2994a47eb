"""`batch --ray` on a private cluster of two raylets on this machine (tests/_ray_cluster.py):
rows rendered on both nodes, and a row whose worker dies at every try recorded as failed, then
rendered by the next run."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from _batch import assert_equals_single_run, cli, manifest, need, slow_rows, write_jsonl
from _ray_cluster import LocalCluster

from acestep_ggml import batch

need("ray")
# One worker runs every Ray test (pytest -n 2 --dist loadgroup): they share one 2-CPU cluster.
pytestmark = pytest.mark.xdist_group("ray")
RUN_TIMEOUT = 600


@pytest.fixture(scope="module")
def two_nodes():
    cluster = LocalCluster(head_cpus=1, node_cpus=(1,))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def models(synth_models):
    return synth_models[2]["f32"]


def run(table, models, out, cluster: LocalCluster) -> tuple[int, str]:
    p = cli(str(table), "--models", str(models), "--output-dir", str(out), "--ray", "--address", cluster.address,
            "--quiet")
    _, err = p.communicate(timeout=RUN_TIMEOUT)
    return p.returncode, err


def test_two_nodes_each_render_rows_equal_to_single_runs(two_nodes, models, tmp_path):
    table = write_jsonl(tmp_path / "t.jsonl", slow_rows(4, seconds=10))
    out = tmp_path / "out"
    rc, err = run(table, models, out, two_nodes)  # one worker per node: each has one CPU
    assert rc == 0 and "4 rendered, 0 failed" in err, err
    lines = manifest(out)
    assert len({r["node"] for r in lines}) == 2, lines
    for row, r in zip(batch.read_table(table), sorted(lines, key=lambda r: r["id"])):
        assert_equals_single_run(models, out, row, r["seed"])


def test_a_row_whose_worker_always_dies_is_recorded_and_the_next_run_renders_it(two_nodes, models, tmp_path):
    table = write_jsonl(tmp_path / "t.jsonl", slow_rows(2))
    out = tmp_path / "out"
    p = cli(str(table), "--models", str(models), "--output-dir", str(out), "--ray", "--address", two_nodes.address,
            "--quiet")
    kills = []

    def kill_every_render():  # SIGKILL each worker process as soon as it starts a row
        while p.poll() is None:
            for pid in two_nodes.processes("ray::_RayWorker.render"):
                if pid not in kills:
                    os.kill(pid, signal.SIGKILL)
                    kills.append(pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_every_render)
    killer.start()
    try:
        _, err = p.communicate(timeout=RUN_TIMEOUT)
    finally:
        p.kill()
        killer.join()
    assert p.returncode == 1 and "0 rendered, 2 failed" in err, err
    assert len(kills) == 2 * batch.RAY_TRIES
    for r in manifest(out):
        assert r["status"] == "failed" and r["error"].startswith(f"its worker died {batch.RAY_TRIES} times")
    assert sorted(p.name for p in out.iterdir()) == [batch.MANIFEST]  # nothing partial left
    rc, err = run(table, models, out, two_nodes)
    assert rc == 0 and "2 rendered, 0 failed, 0 already there" in err, err
