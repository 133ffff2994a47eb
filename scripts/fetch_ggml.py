#!/usr/bin/env python3
"""Fill an empty ``ggml/`` with ggml v0.20.2 when the git submodule cannot be fetched.

The sdist of ``libggml-python==0.20.2.post1`` carries the ggml tree of tag v0.20.2
(commit 8c63e70982c95ceb862e3a1073a2c1beef75d60a) under its ``ggml/`` folder, and a
Python package index is reachable wherever pip works.  This script takes that sdist
from its cache (~/.cache/acestep-ggml, or $ACESTEP_GGML_CACHE) or has pip download it,
with pip's own configuration (index, mirror, proxy), checks its sha256 and unpacks
``ggml/`` into the checkout.  Standard library and pip only, so that CMake can run it
before anything else is installed.

    python3 scripts/fetch_ggml.py [DEST]     (DEST defaults to the checkout's ggml/)
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REQUIREMENT = "libggml-python==0.20.2.post1"
SDIST = "libggml_python-0.20.2.post1.tar.gz"
SHA256 = "e47ff53506342959ffb3ce15380b82828fea10ec5f208f9ef6915895f1a7a176"
ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("ACESTEP_GGML_CACHE", Path.home() / ".cache" / "acestep-ggml"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pip_commands() -> list[list[str]]:
    """Interpreters whose pip can download: this one first, then python3 on PATH."""
    commands = [[sys.executable, "-m", "pip"]]
    other = shutil.which("python3")
    if other and Path(other).resolve() != Path(sys.executable).resolve():
        commands.append([other, "-m", "pip"])
    return commands


def _pip_env() -> dict[str, str]:
    # Run from CMake inside pip's isolated build environment, PYTHONPATH points at a
    # sitecustomize that hides the interpreter's own site-packages, pip included.
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME"):
        env.pop(name, None)
    return env


def _download(into: Path) -> Path:
    # --no-binary for this package alone: it is the sdist we want, while its build
    # requirements (pip prepares the sdist's metadata) may come as wheels.
    args = ["download", "--no-deps", "--no-binary", "libggml-python", "--dest", str(into), REQUIREMENT]
    failures = []
    for pip in _pip_commands():
        if subprocess.run([*pip, "--version"], env=_pip_env(), capture_output=True).returncode != 0:
            failures.append(f"{pip[0]} has no pip")
            continue
        print(f"fetch_ggml: {' '.join(pip)} {' '.join(args)}", file=sys.stderr)
        if subprocess.run([*pip, *args], env=_pip_env(), stdout=sys.stderr).returncode == 0:
            path = into / SDIST
            if path.is_file():
                return path
            failures.append(f"pip did not write {SDIST}")
        else:
            failures.append(f"{' '.join(pip)} download failed")
    raise RuntimeError(f"could not download {REQUIREMENT} (" + "; ".join(failures) + ")")


def _sdist(tmp: Path) -> Path:
    """The verified sdist: the cached copy, else a fresh download that is then cached."""
    cached = CACHE / SDIST
    if cached.is_file() and _sha256(cached) == SHA256:
        return cached
    path = _download(tmp)
    digest = _sha256(path)
    if digest != SHA256:
        raise RuntimeError(f"sha256 mismatch for {SDIST}: got {digest}, expected {SHA256}")
    try:
        CACHE.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, cached)
    except OSError:
        pass  # a read-only home is fine: the cache only saves a download
    return path


def fetch(dest: Path) -> None:
    if (dest / "CMakeLists.txt").is_file():
        return
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with tarfile.open(_sdist(tmp), mode="r:gz") as tar:
            prefix = SDIST[: -len(".tar.gz")] + "/ggml/"
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            if not members:
                raise RuntimeError(f"{SDIST} holds no ggml/ folder")
            tar.extractall(tmp / "unpacked", members=members, filter="data")
        src = tmp / "unpacked" / prefix
        dest.mkdir(parents=True, exist_ok=True)
        for item in src.iterdir():
            target = dest / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            shutil.move(str(item), str(target))
    print(f"fetch_ggml: ggml v0.20.2 unpacked into {dest}", file=sys.stderr)


def main() -> int:
    dest = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "ggml"
    try:
        fetch(dest)
    except Exception as e:  # report and let the caller print the fix
        print(f"fetch_ggml: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
