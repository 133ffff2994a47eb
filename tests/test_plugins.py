"""GPU backends as plugin wheels: acestep_ggml loads every ggml library of each package named by an
`acestep_ggml.backends` entry point at import; one that cannot load is a warning, not an error."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import acestep_ggml

SRC = Path(acestep_ggml.__file__).resolve().parent.parent


def fake_plugin(root: Path, library: bytes) -> None:
    """An installed distribution `acestep-ggml-fake` as pip lays one out: package + dist-info."""
    (root / "acestep_ggml_fake").mkdir(parents=True)
    (root / "acestep_ggml_fake" / "libggml-fake.so").write_bytes(library)
    info = root / "acestep_ggml_fake-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acestep-ggml-fake\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[acestep_ggml.backends]\nfake = acestep_ggml_fake\n")


def test_a_plugin_that_cannot_load_warns_and_the_cpu_still_works(tmp_path):
    fake_plugin(tmp_path, b"not a shared library")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(tmp_path)])}
    r = subprocess.run([sys.executable, "-W", "always", "-c",
                        "import acestep_ggml as A; print([d['type'] for d in A.backends()])"],
                       capture_output=True, text=True, env=env, check=False)
    assert r.returncode == 0, r.stderr
    assert "the fake plugin: could not load the ggml backend" in r.stderr and "libggml-fake.so" in r.stderr
    assert "'cpu'" in r.stdout
