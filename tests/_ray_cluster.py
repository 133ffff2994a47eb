"""A private Ray cluster for the tests: raylets started with `ray start --block` on loopback, in
a short temporary folder (Ray's socket paths must fit in 107 bytes), on free ports.

`ray start --block` stays in the foreground and takes its processes down when it gets SIGTERM,
so each cluster is stopped by the pids of its own `ray start` commands; `ray stop` would stop
every Ray process on the machine, another user's included.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START_TIMEOUT = 120  # seconds; a raylet starts in 5-20 s on 2 busy cores
RAY = [sys.executable, "-m", "ray.scripts.scripts"]  # the `ray` command of this Python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """A head raylet with ``head_cpus`` CPUs, and one more raylet per entry of ``node_cpus``,
    all on this machine.  ``address`` is the head's GCS address."""

    def __init__(self, head_cpus: int, node_cpus: tuple[int, ...] = ()):
        self.temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
        try:
            self._start(["--head", "--port", str(self.port), "--dashboard-port", str(free_port()),
                         "--include-dashboard", "false", "--temp-dir", str(self.temp)], head_cpus, env)
            for cpus in node_cpus:
                self._start(["--address", self.address], cpus, env)
            self._wait(1 + len(node_cpus), env)
        except BaseException:
            self.stop()
            raise

    def _start(self, args: list[str], cpus: int, env: dict) -> None:
        log = open(self.temp / f"start-{len(self.procs)}.log", "wb")
        cmd = RAY + ["start", "--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1",
                     "--num-cpus", str(cpus), "--object-store-memory", str(100 * 2**20),
                     "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()),
                     *args]
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
        log.close()

    def _wait(self, nodes: int, env: dict) -> None:
        """Until ``nodes`` raylets are alive (a driver that connects, counts and leaves)."""
        deadline = time.monotonic() + START_TIMEOUT
        count = ("import ray, time\n"
                 f"ray.init(address={self.address!r}, logging_level='ERROR')\n"
                 f"while sum(n['Alive'] for n in ray.nodes()) < {nodes}: time.sleep(0.5)\n")
        while True:
            dead = [p for p in self.procs if p.poll() is not None]
            if not dead:
                try:
                    if subprocess.run([sys.executable, "-c", count], capture_output=True, env=env,
                                      timeout=max(1, deadline - time.monotonic())).returncode == 0:
                        return
                except subprocess.TimeoutExpired:
                    pass
            if dead or time.monotonic() > deadline:
                logs = "\n".join(f.read_text(errors="replace")[-2000:] for f in sorted(self.temp.glob("start-*.log")))
                raise RuntimeError(f"the Ray cluster did not start ({'exited' if dead else 'timeout'}):\n{logs}")
            time.sleep(1)

    def processes(self, title: str) -> list[int]:
        """The pids of this cluster's processes whose title (a Ray worker's, e.g.
        ``ray::_RayWorker.render`` while it runs that method) starts with ``title``."""
        ours = {p.pid for p in self.procs}
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _cmdline(entry).startswith(title) and ours & _ancestors(int(entry.name)):
                found.append(int(entry.name))
        return found

    def stop(self) -> None:
        for p in reversed(self.procs):  # the extra raylets before the head
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        shutil.rmtree(self.temp, ignore_errors=True)


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # gone meanwhile
        return ""


def _ancestors(pid: int) -> set[int]:
    out = set()
    while pid > 1:
        try:
            # The parent is the 2nd field after the parenthesised command name, which may hold spaces.
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
        out.add(pid)
    return out
