"""Generation as a service: ``python -m acestep_ggml serve --models DIR``.

acestep.cpp's job API (its clients work unchanged), progress as server-sent events, upstream's
/release_task face, and a web page at ``/``.  FastAPI and uvicorn come with the ``[server]``
extra, imported only when the server starts (so the CLI runs without them).  See docs/server.md.

In Python: ``create_app(ServerConfig(models=...))`` is the ASGI application (``acestep_ggml.server.app``).
"""
from __future__ import annotations

import argparse
import os

__all__ = ["add_arguments", "run", "serve"]

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def add_arguments(s: argparse.ArgumentParser) -> None:
    """The `serve` subcommand's options."""
    s.add_argument("--models", required=True, help="GGUF folder, checkpoint folder or hub repo")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--device", action="append", default=None,
                   help="a device to run jobs on, one worker each; repeat for several (default cpu)")
    s.add_argument("--threads", type=int, default=None, help="CPU threads per worker (default: all cores)")
    s.add_argument("--api-key", default=os.environ.get("ACESTEP_GGML_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every route but /health and the page's files "
                        "(default: $ACESTEP_GGML_API_KEY, which keeps the key out of the process list)")
    s.add_argument("--max-queue", type=int, default=32, help="jobs allowed to wait; more get 429 (default 32)")
    s.add_argument("--keep-results", type=int, default=32, help="finished jobs kept with their results (default 32)")
    s.add_argument("--max-body-mb", type=int, default=256, help="largest request body in MiB (default 256)")
    s.add_argument("--cors-origin", action="append", default=[],
                   help="an origin allowed to call the API from a browser page; repeatable (default: CORS off)")
    s.add_argument("--memory-budget", type=float, default=None,
                   help="GiB of model files kept loaded between jobs (default: half the free memory)")
    s.add_argument("--idle-unload", type=float, default=300.0,
                   help="seconds without a job before the models are unloaded (default 300)")
    s.add_argument("--adapters", default=None, metavar="DIR",
                   help="folder of adapters (*.safetensors, or PEFT folders) that requests may name in 'adapter'; "
                        "listed in /props")


def run(args: argparse.Namespace) -> int:
    """The `serve` subcommand: its options as a ServerConfig, then ``serve``."""
    try:
        from .app import ServerConfig
    except ImportError as e:
        raise SystemExit(f"error: the server needs its extra: pip install 'acestep-ggml[server]' ({e})") from None
    from ..errors import InputError

    for name in ("max_queue", "keep_results", "max_body_mb"):
        if getattr(args, name) < 1:  # one line `error: ...` and exit 2, as every bad value
            raise InputError(f"--{name.replace('_', '-')} must be at least 1")
    budget = None if args.memory_budget is None else int(args.memory_budget * 2**30)
    serve(ServerConfig(models=args.models, devices=args.device or ["cpu"], n_threads=args.threads,
                       api_key=args.api_key or None, max_queue=args.max_queue, keep_results=args.keep_results,
                       max_body=args.max_body_mb * 2**20, cors_origins=args.cors_origin, memory_budget=budget,
                       idle_unload=args.idle_unload, adapters=args.adapters), host=args.host, port=args.port)
    return 0


def serve(config, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Runs the server until Ctrl-C or SIGTERM; the running job is cancelled at its next step."""
    import logging

    import uvicorn

    from .app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if host not in LOOPBACK and config.api_key is None:
        logging.getLogger("acestep_ggml.server").warning(
            "listening on %s without --api-key: anyone who reaches this port can use it", host)
    uvicorn.run(create_app(config), host=host, port=port, log_level="info", timeout_graceful_shutdown=10)
