"""Byte mutation of every GGUF kind, the tokenizers inside the text encoder's and the LM's files
included: bits flipped, bytes set, inserted or deleted, a length or count set huge, the file cut,
in the fixed header, the metadata, the tensor infos or the tensor data.  Each mutated file is
opened through the Python API and run a few frames (tests/fuzz/load_worker.py, one long-lived
process), and one case in four also through a real `synth` or `lm` run.  A crash, a hang, a
traceback or an exception outside the package's error family is a finding."""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

from .common import KINDS, Outcome, child_env, files_by_kind
from .gguf_edit import layout

REGIONS = ("header", "metadata", "tokenizer", "tensor-infos", "data", "anywhere")


def _region(rng: random.Random, path: Path, region: str) -> tuple[int, int]:
    lay = layout(path)
    if region == "header":
        return 0, 24
    if region == "metadata":
        return lay.kv_start, lay.kv_end
    if region == "tokenizer":
        spans = [(s, e) for k, (s, e, _) in lay.fields.items() if k.startswith("tokenizer.")]
        if not spans:
            return lay.kv_start, lay.kv_end
        s, e = rng.choice(spans)
        # Near the start of a big value: the lengths and counts live there.
        return s, min(e, s + rng.choice([16, 256, 4096, e - s]))
    if region == "tensor-infos":
        return lay.kv_end, lay.infos_end
    if region == "data":
        return lay.data_start, max(lay.data_start + 1, lay.size)
    return 0, lay.size


def make_case(rng: random.Random, files: dict[str, Path]) -> dict:
    arch = rng.choice(sorted(files))
    path = files[arch]
    regions = [r for r in REGIONS if r != "tokenizer" or arch in ("acestep-lm", "acestep-text-enc")]
    ops = []
    for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
        region = rng.choice(regions)
        lo, hi = _region(rng, path, region)
        at = rng.randrange(lo, max(lo + 1, hi))
        op = rng.choice(["flip", "flip", "set", "insert", "delete", "u64", "u32", "truncate"])
        o = {"op": op, "region": region, "at": at}
        if op == "flip":
            o["bit"] = rng.randrange(8)
        elif op == "set":
            o["byte"] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        elif op == "insert":
            o["bytes"] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 3, 8]))).hex()
        elif op == "delete":
            o["n"] = rng.choice([1, 4, 8, 64])
        elif op in ("u64", "u32"):
            bits = 64 if op == "u64" else 32
            o["value"] = rng.choice([0, 1, 2**bits - 1, 2 ** (bits - 1), 2**31 - 1, 2**32, 1 << 40, rng.randrange(2**bits)])
            o["value"] %= 2**bits
        ops.append(o)
        if op == "truncate":
            break
    return {"kind": arch, "file": path.name, "ops": ops, "cli": rng.random() < 0.25}


def apply(case: dict, src: Path, dst: Path) -> None:
    data = bytearray(Path(src).read_bytes())
    for o in case["ops"]:
        at = min(o["at"], len(data))
        if o["op"] == "flip" and at < len(data):
            data[at] ^= 1 << o["bit"]
        elif o["op"] == "set" and at < len(data):
            data[at] = o["byte"]
        elif o["op"] == "insert":
            data[at:at] = bytes.fromhex(o["bytes"])
        elif o["op"] == "delete":
            del data[at : at + o["n"]]
        elif o["op"] in ("u64", "u32"):
            fmt = "<Q" if o["op"] == "u64" else "<I"
            if at + struct.calcsize(fmt) <= len(data):
                struct.pack_into(fmt, data, at, o["value"])
        elif o["op"] == "truncate":
            del data[at:]
    Path(dst).write_bytes(bytes(data))


class Loader:
    """The long-lived load_worker process; restarted after it dies or hangs."""

    def __init__(self, env: dict | None = None):
        self.env = child_env(env)
        self.p = None

    def _start(self):
        self.p = subprocess.Popen(
            [sys.executable, "-m", "fuzz.load_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            start_new_session=True,
            cwd=str(Path(__file__).parent.parent),
        )

    def run(self, job: dict, timeout: float) -> Outcome:
        if self.p is None or self.p.poll() is not None:
            self._start()
        t0 = time.monotonic()
        self.p.stdin.write(json.dumps(job) + "\n")
        self.p.stdin.flush()
        ready, _, _ = select.select([self.p.stdout], [], [], timeout)
        line = self.p.stdout.readline() if ready else ""
        dt = time.monotonic() - t0
        if not line:
            hung = self.p.poll() is None
            if hung:
                os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()
            err = self.p.stderr.read()[-2000:]
            rc = self.p.returncode
            self.p = None
            return Outcome("hang" if hung else ("signal" if rc < 0 else "exit"), rc, dt, "", err)
        result = json.loads(line)["result"]
        if result == "ok":
            return Outcome("ok-success", 0, dt, "", "")
        if result.startswith("error: "):
            return Outcome("ok-error", 2, dt, result, "")
        return Outcome("foreign", 1, dt, result, result)

    def close(self):
        if self.p is not None and self.p.poll() is None:
            self.p.stdin.close()
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
        self.p = None


_LOADER: Loader | None = None


def run_case(case: dict, models: Path, work: Path, timeout: float, env: dict | None = None) -> Outcome:
    """Through the API (the shared loader process), then, for a case marked so, the CLI."""
    global _LOADER
    from . import hparams

    files = files_by_kind(models)
    d = work / "models"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for arch, p in files.items():
        if arch != case["kind"]:
            (d / p.name).symlink_to(p)
    target = d / files[case["kind"]].name
    apply(case, files[case["kind"]], target)
    if _LOADER is None or _LOADER.env.get("_fuzz_env") != json.dumps(env):
        if _LOADER is not None:
            _LOADER.close()
        _LOADER = Loader({**(env or {}), "_fuzz_env": json.dumps(env)})
    out = _LOADER.run({"path": str(target), "kind": case["kind"], "base": {k: str(v) for k, v in files.items()}}, timeout)
    if not out.ok or not case.get("cli"):
        return out
    # The CLI on the same folder (hparams.run_case's commands, with this file in place).
    return hparams.run_command(KINDS[case["kind"]], d, work, timeout, env)


def cases(seed: int, n: int, files: dict[str, Path]):
    for i in range(n):
        yield i, make_case(random.Random(f"{seed}:{i}"), files)


def close() -> None:
    global _LOADER
    if _LOADER is not None:
        _LOADER.close()
        _LOADER = None
