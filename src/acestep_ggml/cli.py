"""`python -m acestep_ggml` / `acestep-ggml`: each subcommand is a thin front for one API call."""
from __future__ import annotations

import argparse
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    from . import __version__, _core, backends

    info = _core.build_info()
    print(f"acestep-ggml {__version__}")
    print(f"ggml {info['ggml_version']} (commit {info['ggml_commit'][:12]})")
    print(f"compiled backends: {', '.join(info['compiled_backends'])}")
    print("devices:")
    for d in backends():
        mem = f", {d['memory_total'] / 2**30:.1f} GiB" if d["memory_total"] else ""
        print(f"  {d['name']}: {d['description']} ({d['type']}{mem})")
    feats = [k for k, v in info["cpu_features"].items() if v]
    print(f"cpu features: {' '.join(feats) if feats else 'none'}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert

    written = convert(args.src, args.out_dir, dtype=args.dtype, quiet=args.quiet)
    for path in written:
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="acestep-ggml", description="ACE-Step 1.5 music generation on GGML")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="package and ggml versions, devices, CPU features")
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("convert", help="convert checkpoints (original or diffusers layout) to GGUF files")
    s.add_argument("src", help="checkpoint directory: original layout, diffusers pipeline, or one component folder")
    s.add_argument("out_dir", help="directory for the GGUF files")
    s.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32", "q8_0"],
                   help="weight type of the matrices (default bf16, as published)")
    s.add_argument("--quiet", action="store_true", help="no progress output")
    s.set_defaults(func=_cmd_convert)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import InputError, ModelFileError

    try:
        return args.func(args)
    except (InputError, ModelFileError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
