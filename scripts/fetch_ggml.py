#!/usr/bin/env python3
"""Fill an empty ``ggml/`` with ggml v0.20.2 when the git submodule cannot be fetched.

GitHub is out of reach on some machines, but PyPI is not: the sdist of
``libggml-python==0.20.2.post1`` carries the ggml tree of tag v0.20.2
(commit 8c63e70982c95ceb862e3a1073a2c1beef75d60a) under its ``ggml/`` folder.
This script downloads that sdist (or takes it from a local cache), checks its
sha256 and unpacks ``ggml/`` into the checkout.  Standard library only, so that
CMake can run it before anything else is installed.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

SDIST = "libggml_python-0.20.2.post1.tar.gz"
SHA256 = "e47ff53506342959ffb3ce15380b82828fea10ec5f208f9ef6915895f1a7a176"
INDEX = "https://pypi.org/simple/libggml-python/"
ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("ACESTEP_GGML_CACHE", Path.home() / ".cache" / "acestep-ggml"))


def _sdist_url() -> str:
    req = urllib.request.Request(INDEX, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        files = json.load(r)["files"]
    for f in files:
        if f["filename"] == SDIST:
            return f["url"]
    raise RuntimeError(f"{SDIST} is not listed on {INDEX}")


def _download() -> bytes:
    cached = CACHE / SDIST
    if cached.is_file():
        data = cached.read_bytes()
        if hashlib.sha256(data).hexdigest() == SHA256:
            return data
    url = _sdist_url()
    print(f"fetch_ggml: downloading {url}", file=sys.stderr)
    with urllib.request.urlopen(url, timeout=300) as r:
        data = r.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise RuntimeError(f"sha256 mismatch for {SDIST}: got {digest}, expected {SHA256}")
    try:
        CACHE.mkdir(parents=True, exist_ok=True)
        (CACHE / SDIST).write_bytes(data)
    except OSError:
        pass  # a read-only home is fine: the cache only saves a download
    return data


def fetch(dest: Path) -> None:
    if (dest / "CMakeLists.txt").is_file():
        return
    data = _download()
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        prefix = SDIST[: -len(".tar.gz")] + "/ggml/"
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        if not members:
            raise RuntimeError(f"{SDIST} holds no ggml/ folder")
        tar.extractall(tmp, members=members, filter="data")
        src = Path(tmp) / prefix
        dest.mkdir(parents=True, exist_ok=True)
        for item in src.iterdir():
            target = dest / item.name
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
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
