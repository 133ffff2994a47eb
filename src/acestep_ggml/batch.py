"""Many songs from a table: one output file per row, a manifest, resumable; rendered in this
process one row after another, or on a Ray cluster by a pool of workers that each load the
models once.

A table (JSONL, CSV or Parquet) has one row per song.  Its columns are the keyword arguments of
:meth:`acestep_ggml.Pipeline.generate` by name (``caption``, ``lyrics``, ``duration``, ``bpm``,
``keyscale``, ``timesignature``, ``language``, ``seed``, ``task``, ``src_audio``, ``use_lm``, ...),
an ``id`` that names the output file, and optionally the output's ``format`` (wav, flac, ogg,
mp3) and ``bitrate`` (mp3).  An empty cell or a JSON null is the API's default.  Relative audio
paths are taken from the table's folder.

The output folder gets ``<id>.<format>`` per row and ``manifest.jsonl``, a line per row
rendered or failed (id, status, output, seconds, seed, error, worker, node).  A file appears
whole or not at all (written under ``.partial/``, then renamed), so a second run skips every
row whose file is there and renders the others: the rows that failed, and those in flight when
a run was stopped.

On Ray (``pip install "acestep-ggml[ray]"``) the rows go to a pool of actors spread over the
cluster, each with ``cpus_per_worker`` CPUs (its ggml threads) and ``gpus_per_worker`` GPUs; each
loads the models once, renders one row at a time and writes its file itself, so on several
machines the output folder must be shared storage.  The driver reads the table, hands out the
rows, writes the manifest and shows the progress.  See docs/scale.md.
"""
from __future__ import annotations

import csv
import json
import math
import os
import secrets
import shutil
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .audio import check_output_path
from .errors import AcestepError, InputError
from .pipeline import Pipeline

MANIFEST = "manifest.jsonl"
PARTIAL = ".partial"  # files being written; emptied at the start and the end of every run
FORMATS = ("wav", "flac", "ogg", "mp3")
TABLE_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
MAX_ID = 200  # characters; leaves room for the extension within a file system's 255
# A row whose worker process died this many times while rendering it is recorded as failed
# (a row that crashes its worker every time must not take the pool down with it).
RAY_TRIES = 3
RAY_INSTALL = 'pip install "acestep-ggml[ray]"'


class RayNotInstalled(InputError, ImportError):
    """``ray=True`` / ``--ray`` without Ray installed: an ImportError for the caller who catches
    that, and an InputError (a request this installation cannot take) for the CLI."""


# -- the table ----------------------------------------------------------------------------

def _text(v, name):
    if not isinstance(v, str):
        raise InputError(f"{name}: expected text, got {v!r}")
    return v


def _int(v, name):
    if isinstance(v, bool):
        raise InputError(f"{name}: expected an integer, got {v!r}")
    if isinstance(v, float) and v.is_integer():  # Parquet and pandas store an int column with gaps as floats
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            pass
    raise InputError(f"{name}: expected an integer, got {v!r}")


def _float(v, name):
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            raise InputError(f"{name}: expected a number, got {v!r}") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InputError(f"{name}: expected a finite number, got {v!r}")
    return float(v)


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _bool(v, name):
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE + _FALSE:
        return v.strip().lower() in _TRUE
    raise InputError(f"{name}: expected true or false, got {v!r}")


def _names(v, name):
    """A list of names: a JSON list, or text separated by commas (a CSV cell)."""
    if isinstance(v, str):
        v = [s.strip() for s in v.split(",") if s.strip()]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise InputError(f"{name}: expected a list of names, got {v!r}")
    return v


def _pair(v, name):
    """Two numbers: a JSON list, or text "a,b" (a CSV cell)."""
    if isinstance(v, str):
        v = [x.strip() for x in v.split(",")]
    try:
        a, b = (float(x) for x in v)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected two numbers, got {v!r}") from None
    return (a, b)


# The columns of a table and how each cell is read; all but id, format and bitrate are the
# keyword arguments of Pipeline.generate, under the same names (tests/test_batch.py checks).
COLUMNS: dict[str, Callable] = {
    "id": _text, "caption": _text, "lyrics": _text, "duration": _int, "bpm": _int, "keyscale": _text,
    "timesignature": _int, "language": _text, "seed": _int, "steps": _int, "guidance": _float, "shift": _float,
    "use_lm": _bool, "task": _text, "src_audio": _text, "ref_audio": _text, "repainting_start": _float,
    "repainting_end": _float, "track_name": _text, "track_classes": _names, "audio_cover_strength": _float,
    "posterior": _text, "rewrite_caption": _bool, "negative_prompt": _text, "legacy_cfg_prompt": _bool,
    "lm_mode": _text, "instrumental": _bool,
    # the sampling controls (acestep_ggml.request.Controls), which generate takes by name
    "solver": _text, "stork_substeps": _int, "use_adg": _bool, "cfg_interval": _pair,
    "velocity_norm_threshold": _float, "velocity_ema_factor": _float, "dcw_mode": _text, "dcw_scaler": _float,
    "dcw_high_scaler": _float, "repaint_mode": _text, "repaint_strength": _float, "retake_seed": _int,
    "retake_variance": _float,
    "format": _text, "bitrate": _int,
}
OUTPUT_COLUMNS = ("id", "format", "bitrate")
AUDIO_COLUMNS = ("src_audio", "ref_audio")


def check_id(value) -> str:
    """A row id as a file name: text (or an integer), not empty, no path separators, no
    leading dot (no ``..``, no hidden files), no control characters, at most MAX_ID characters."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"id: expected a non-empty name, got {value!r}")
    if any(c in value for c in "/\\") or value.startswith(".") or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InputError(f"id {value!r}: an id names a file in the output folder: no '/' or '\\', "
                         "no leading '.', no control characters")
    if len(value) > MAX_ID:
        raise InputError(f"id {value[:20]!r}...: longer than {MAX_ID} characters")
    return value


def _raw_rows(path: Path) -> list[tuple[str, dict]]:
    """(where, cells) per row of the file, cells as the file holds them; absent and empty
    cells left out."""
    kind = TABLE_KINDS.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"{path}: a table is .jsonl, .csv or .parquet")
    if not path.is_file():
        raise InputError(f"{path}: no such table")
    rows = []
    if kind == "jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    cells = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{path} line {n}: not JSON ({e.msg})") from None
                if not isinstance(cells, dict):
                    raise InputError(f"{path} line {n}: expected a JSON object, got {type(cells).__name__}")
                rows.append((f"{path} line {n}", cells))
    elif kind == "csv":
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            for n, cells in enumerate(reader, 2):  # line 1 is the header
                if None in cells:
                    raise InputError(f"{path} line {n}: more cells than the header has columns")
                rows.append((f"{path} line {n}", {k: v for k, v in cells.items() if v != ""}))
    else:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise InputError(f"{path}: reading Parquet needs pyarrow ({RAY_INSTALL} brings it)") from None
        for n, cells in enumerate(pq.read_table(path).to_pylist(), 1):
            rows.append((f"{path} row {n}", cells))
    return [(where, {k: v for k, v in cells.items() if v is not None and not _is_nan(v)}) for where, cells in rows]


def _is_nan(v) -> bool:
    """pandas writes a missing number as NaN."""
    return isinstance(v, float) and math.isnan(v)


def read_table(table: str | os.PathLike) -> list[dict]:
    """The rows of a JSONL, CSV or Parquet table, each a dict of the COLUMNS it sets, typed.

    Every row is checked before anything renders; InputError names the file, the line or row
    and the column: an unknown column, a cell of the wrong type, a missing or bad id or caption,
    a duplicate id, an output format not in FORMATS.  Relative ``src_audio`` / ``ref_audio``
    paths become paths from the table's folder."""
    path = Path(table)
    rows, seen = [], {}
    for where, cells in _raw_rows(path):
        unknown = sorted(set(cells) - set(COLUMNS))
        if unknown:
            raise InputError(f"{where}: unknown column(s) {', '.join(unknown)}; a table has "
                             f"{', '.join(COLUMNS)}")
        try:
            row = {"id": check_id(cells.get("id"))}
            row.update({k: COLUMNS[k](v, k) for k, v in cells.items() if k != "id"})
            if not row.get("caption", "").strip():
                raise InputError("caption: missing or empty; every row needs one")
            if row.setdefault("format", "wav").lower().lstrip(".") not in FORMATS:
                raise InputError(f"format: {row['format']!r} is not one of {', '.join(FORMATS)}")
            row["format"] = row["format"].lower().lstrip(".")
        except InputError as e:
            raise InputError(f"{where}: {e}") from None
        for k in AUDIO_COLUMNS:
            if k in row:
                row[k] = str(path.parent / Path(row[k]).expanduser())
        key = row["id"].casefold()  # ids that differ in case only are one file on some file systems
        if key in seen:
            raise InputError(f"{where}: id {row['id']!r} is already used at {seen[key]}")
        seen[key] = where
        rows.append(row)
    if not rows:
        raise InputError(f"{path}: the table has no rows")
    return rows


def output_name(row: dict) -> str:
    return f"{row['id']}.{row['format']}"


def is_whole(path: Path) -> bool:
    """The file is there and its header reads as audio with samples.  Files appear by rename
    once written, so one that is there is whole unless something else cut it."""
    import soundfile as sf

    try:
        return sf.info(str(path)).frames > 0
    except (RuntimeError, OSError):  # soundfile's LibsndfileError is a RuntimeError
        return False


# -- one row ------------------------------------------------------------------------------

class Renderer:
    """One worker's models (loaded on the first row, kept for the rest) and the rendering of
    one row into its file; a row that fails gives a record with its error instead."""

    def __init__(self, models: str | os.PathLike, output_dir: str | os.PathLike, *, device: str = "cpu",
                 n_threads: Optional[int] = None, lm: Optional[str] = None, node: Optional[str] = None):
        self.pipe = Pipeline(models, device=device, n_threads=n_threads, keep_loaded=True, lm=lm, quiet=True)
        self.pipe.synth  # noqa: B018 (the synth stage's files found, or fetched from a hub repo, before any row)
        self.output_dir = Path(output_dir)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.node = node

    def __call__(self, row: dict) -> dict:
        start = time.monotonic()
        name = output_name(row)
        error = None
        kwargs = {k: v for k, v in row.items() if k not in OUTPUT_COLUMNS}
        try:
            song = self.pipe.generate(**kwargs)
            partial = self.output_dir / PARTIAL / name
            partial.parent.mkdir(exist_ok=True)
            song.save(partial, bitrate=row.get("bitrate"))
            os.replace(partial, self.output_dir / name)
        except Exception as e:  # noqa: BLE001 (a failing row is recorded, the rest go on)
            if not isinstance(e, AcestepError):  # not a refused input: a bug, whose trace is wanted
                traceback.print_exc(file=sys.stderr)
            error = f"{type(e).__name__}: {e}"
        return manifest_line(row, error=error, seconds=time.monotonic() - start, worker=self.worker, node=self.node)


def manifest_line(row: dict, *, error: Optional[str] = None, seconds: Optional[float] = None,
           worker: Optional[str] = None, node: Optional[str] = None) -> dict:
    """A manifest line: the row rendered into its file (no error), or the error that stopped it."""
    return {"id": row["id"], "status": "failed" if error else "ok", "output": None if error else output_name(row),
            "seconds": None if seconds is None else round(seconds, 3), "seed": row["seed"], "error": error,
            "worker": worker, "node": node}


# -- the run ------------------------------------------------------------------------------

@dataclass
class BatchResult:
    """What one run did: its manifest records in the order the rows finished, and how many rows
    were skipped because their file was already there."""

    output_dir: Path
    records: list[dict] = field(default_factory=list)
    skipped: int = 0

    @property
    def rendered(self) -> int:
        return sum(r["status"] == "ok" for r in self.records)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.records if r["status"] != "ok"]

    @property
    def manifest(self) -> Path:
        return self.output_dir / MANIFEST


def render_table(table: str | os.PathLike, models: str | os.PathLike, output_dir: str | os.PathLike, *,
                 ray: bool = False, address: Optional[str] = None, workers: Optional[int] = None,
                 cpus_per_worker: float = 1, gpus_per_worker: Optional[float] = None, device: str = "cpu",
                 n_threads: Optional[int] = None, lm: Optional[str] = None, quiet: bool = False) -> BatchResult:
    """Render every row of ``table`` (see the module's docstring) whose file is not yet in
    ``output_dir``; returns what was done, also appended to ``output_dir/manifest.jsonl``.

    In this process (``ray=False``) the rows run one after another with ``n_threads`` ggml
    threads (default: all cores).  With ``ray=True`` they run on the Ray cluster at ``address``
    (default: ``RAY_ADDRESS``, a local cluster, or a new one in this process; ``"auto"``: the
    local cluster) on ``workers`` actors (default: as many as the cluster's CPUs and GPUs hold),
    each given ``cpus_per_worker`` CPUs (its ggml threads) and ``gpus_per_worker`` GPUs (default
    1 with a GPU ``device`` on a cluster with GPUs, else 0).  A row without a seed gets a random
    one, recorded in the manifest.  Raises InputError for a malformed table before anything
    renders, and a models error (ModelsNotFound, ModelFileError) before any row is tried."""
    if not ray and (address is not None or workers is not None):
        raise InputError("address and workers apply to a run on Ray (ray=True, --ray)")
    if workers is not None and workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    if cpus_per_worker < 0 or (gpus_per_worker or 0) < 0 or (cpus_per_worker == 0 and not gpus_per_worker):
        raise InputError(f"a worker takes CPUs or GPUs: got {cpus_per_worker} CPUs and {gpus_per_worker} GPUs")
    rows = read_table(table)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for row in rows:
        try:
            check_output_path(out / output_name(row), bitrate=row.get("bitrate"))
        except InputError as e:
            raise InputError(f"{table}: id {row['id']!r}: {e}") from None
        if "seed" not in row:
            row["seed"] = secrets.randbits(32)
    todo = [row for row in rows if not is_whole(out / output_name(row))]
    result = BatchResult(out, skipped=len(rows) - len(todo))
    if ray and todo:
        _import_ray()  # before any model is touched
    shutil.rmtree(out / PARTIAL, ignore_errors=True)  # left by a run that was killed
    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(rows), initial=result.skipped, desc="rows", unit="row", file=sys.stderr,
                   dynamic_ncols=True)
    try:
        with open(out / MANIFEST, "a", encoding="utf-8") as manifest:
            def finished(line: dict) -> None:
                manifest.write(json.dumps(line) + "\n")
                manifest.flush()
                result.records.append(line)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(failed=len(result.failed), refresh=False)

            if ray and todo:
                _render_on_ray(todo, finished, models=models, output_dir=out, device=device, lm=lm,
                               address=address, workers=workers, cpus=cpus_per_worker, gpus=gpus_per_worker)
            elif todo:
                render = Renderer(models, out, device=device, n_threads=n_threads, lm=lm)
                for row in todo:
                    finished(render(row))
    finally:
        if bar is not None:
            bar.close()
        shutil.rmtree(out / PARTIAL, ignore_errors=True)
    return result


# -- Ray ------------------------------------------------------------------------------------

def _import_ray():
    try:
        import ray
    except ImportError:
        raise RayNotInstalled(f"rendering on Ray needs Ray: {RAY_INSTALL}") from None
    return ray


class _RayWorker:
    """An actor of the pool.  Its Renderer is made on the first call (``ready`` or a row), so a
    models error comes back as that error, and a restarted actor makes it again."""

    def __init__(self, **kwargs):
        self.kwargs, self.renderer = kwargs, None

    def ready(self) -> None:
        if self.renderer is None:
            import ray

            self.renderer = Renderer(node=ray.get_runtime_context().get_node_id(), **self.kwargs)

    def render(self, row: dict) -> dict:
        self.ready()
        return self.renderer(row)


def _render_on_ray(todo: list[dict], finished: Callable[[dict], None], *, models, output_dir: Path, device: str,
                   lm: Optional[str], address: Optional[str], workers: Optional[int], cpus: float,
                   gpus: Optional[float]) -> None:
    """A pool of actors, spread over the nodes; a worker gets its next row when it has finished
    one, so no row waits behind a busy worker while another idles.  A worker that dies is
    restarted and its row tried again, RAY_TRIES times in all."""
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, logging_level="WARNING")
    actors = []
    try:
        if gpus is None:  # a GPU each, where the device is one and the cluster has them
            gpus = 1 if not device.startswith("cpu") and ray.cluster_resources().get("GPU") else 0
        if workers is None:
            workers = _workers_that_fit(ray.cluster_resources(), cpus, gpus)
        remote = ray.remote(_RayWorker).options(num_cpus=cpus, num_gpus=gpus, max_restarts=-1,
                                                max_task_retries=RAY_TRIES - 1, scheduling_strategy="SPREAD")
        kwargs = dict(models=str(models), output_dir=str(output_dir.resolve()), device=device,
                      n_threads=max(1, int(cpus)), lm=lm)
        actors = [remote.remote(**kwargs) for _ in range(workers)]
        # A worker takes rows once it has started and found the models: one that the cluster
        # cannot place (yet) holds none back.
        calls = {a.ready.remote(): (a, None) for a in actors}
        queue = list(reversed(todo))
        while queue or any(row is not None for _, row in calls.values()):
            [ref], _ = ray.wait(list(calls), num_returns=1)
            actor, row = calls.pop(ref)
            try:
                done = ray.get(ref)
            except ray.exceptions.RayTaskError as e:  # ready() raised: the models cannot load
                raise (e.cause if isinstance(e.cause, Exception) else e) from None
            except ray.exceptions.RayActorError as e:
                if row is None:  # the worker cannot start: the package or its import is broken
                    raise
                done = manifest_line(row, error=f"its worker died {RAY_TRIES} times while rendering it ({type(e).__name__})")
            if row is not None:
                finished(done)
            if queue:
                nxt = queue.pop()
                calls[actor.render.remote(nxt)] = (actor, nxt)
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()


def _workers_that_fit(resources: dict, cpus: float, gpus: float) -> int:
    """As many workers as the cluster's CPUs (and GPUs, if a worker takes any) hold, at least one."""
    n = int(resources.get("CPU", 0) // cpus) if cpus else 1 << 30
    if gpus:
        n = min(n, int(resources.get("GPU", 0) // gpus))
    return max(1, n)
