"""The package itself: build info, devices, the CLI `info`, ggml fetching, quantizer bindings."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import acestep_ggml
from acestep_ggml import _core

ROOT = Path(__file__).resolve().parent.parent
# A proxy on a closed local port: any download attempt fails at once, without leaving the machine.
OFFLINE = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}


def test_build_info_reports_pinned_ggml_and_cpu():
    info = _core.build_info()
    assert info["ggml_version"] == "0.20.2"
    assert info["version"] == acestep_ggml.__version__
    assert "cpu" in info["compiled_backends"]
    assert info["cpu_features"]["llamafile"], "the CPU build must use GGML_LLAMAFILE=ON"


def test_backends_lists_the_cpu():
    devs = acestep_ggml.backends()
    assert any(d["type"] == "cpu" for d in devs)
    for d in devs:
        assert set(d) >= {"name", "description", "type", "memory_free", "memory_total"}


def test_unknown_device_names_the_rebuild_option():
    with pytest.raises(acestep_ggml.InputError, match="GGML_CUDA=ON"):
        _core.Backend("cuda:7")


def test_info_cli_prints_versions_and_devices():
    out = subprocess.run([sys.executable, "-m", "acestep_ggml", "info"], capture_output=True, text=True, check=True)
    assert f"acestep-ggml {acestep_ggml.__version__}" in out.stdout
    assert "ggml 0.20.2" in out.stdout
    assert "CPU" in out.stdout
    assert "cpu features:" in out.stdout


def test_quantize_q8_0_roundtrip_within_block_bound():
    rng = np.random.default_rng()
    x = rng.standard_normal((8, 256)).astype(np.float32)
    raw = _core.quantize(x, "q8_0")
    assert raw.nbytes == 8 * 256 // 32 * 34  # 32 int8 values + one f16 scale per block
    y = _core.dequantize(raw, "q8_0", [8, 256])
    # Q8_0 rounds x/d to an integer q (|q| <= 127, d = max|block|/127): error <= d/2. The scale is stored
    # as F16 (relative error <= 2^-11), which moves q*d by up to 127 * d * 2^-11 more.
    d = np.abs(x.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
    bound = d * (0.5 + 127 * 2.0**-11) + 1e-7
    assert np.all(np.abs((x - y).reshape(-1, 32)) <= bound)


def test_quantize_rejects_bad_rows_and_types():
    with pytest.raises(acestep_ggml.InputError, match="multiple of 32"):
        _core.quantize(np.zeros((2, 33), np.float32), "q8_0")
    with pytest.raises(acestep_ggml.InputError, match="unknown ggml type"):
        _core.quantize(np.zeros((2, 32), np.float32), "q9_9")
    with pytest.raises(acestep_ggml.InputError, match="floating-point"):
        _core.quantize(np.zeros((2, 32), np.int32), "q8_0")


def _run_fetch(dest: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **OFFLINE, "ACESTEP_GGML_CACHE": str(cache)}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch_ggml.py"), str(dest)],
                          capture_output=True, text=True, env=env)


def test_fetch_ggml_fills_an_empty_folder_from_the_cached_sdist(tmp_path):
    cached = Path(os.environ.get("ACESTEP_GGML_CACHE", Path.home() / ".cache" / "acestep-ggml"))
    sdist = cached / "libggml_python-0.20.2.post1.tar.gz"
    if not sdist.is_file():
        # The build fetched ggml for this test run; without a cache it came from a submodule checkout.
        pytest.fail(f"expected the verified ggml sdist in {cached}; run scripts/fetch_ggml.py once")
    r = _run_fetch(tmp_path / "ggml", cached)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ggml" / "CMakeLists.txt").is_file()
    assert (tmp_path / "ggml" / "include" / "ggml.h").is_file()


def test_fetch_ggml_rejects_a_corrupt_cache_and_reports_offline(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "libggml_python-0.20.2.post1.tar.gz").write_bytes(b"not the sdist")
    r = _run_fetch(tmp_path / "ggml", cache)
    assert r.returncode == 1
    assert "fetch_ggml:" in r.stderr
    assert not (tmp_path / "ggml" / "CMakeLists.txt").exists()


def test_configure_with_empty_ggml_and_no_network_names_the_fix(tmp_path):
    src = tmp_path / "src"
    (src / "scripts").mkdir(parents=True)
    (src / "ggml").mkdir()
    shutil.copy(ROOT / "CMakeLists.txt", src)
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "scripts" / "fetch_ggml.py", src / "scripts")
    env = {**os.environ, **OFFLINE, "ACESTEP_GGML_CACHE": str(tmp_path / "empty-cache")}
    # Under scripts/sanitize.sh the preloaded libasan would reach CMake's compiler check, which then
    # fails before the error this test looks for: CMake is not ours, so it runs without the preload.
    env.pop("LD_PRELOAD", None)
    r = subprocess.run(["cmake", "-S", str(src), "-B", str(tmp_path / "build")], capture_output=True, text=True,
                       env=env)
    assert r.returncode != 0
    assert "git submodule update --init ggml" in r.stderr + r.stdout
    assert "scripts/fetch_ggml.py" in r.stderr + r.stdout


def test_config_reader_parses_what_checkpoint_configs_hold():
    import json

    cfg = {"hidden_size": 2048, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06, "is_turbo": True,
           "layer_types": ["sliding_attention", "full_attention"], "fsq_input_levels": [8, 8, 8, 5, 5, 5],
           "model_version": "turbo \u00e9\"q\"", "nested": {"a": [1, {"b": None}]}, "none": None}
    js = json.dumps(cfg, indent=2)
    get = _core._config_get
    assert get(js, "hidden_size", "int") == 2048
    assert get(js, "rope_theta", "float") == 1e6
    assert get(js, "rms_norm_eps", "float") == pytest.approx(1e-6)
    assert get(js, "is_turbo", "bool") is True
    assert get(js, "layer_types", "str_list") == cfg["layer_types"]
    assert get(js, "fsq_input_levels", "int_list") == cfg["fsq_input_levels"]
    assert get(js, "model_version", "str") == cfg["model_version"]
    assert get(js, "absent", "int") is None
    with pytest.raises(acestep_ggml.ModelFileError, match="'rope_theta' must be an integer"):
        get(js, "rope_theta", "int")
    with pytest.raises(acestep_ggml.ModelFileError, match="'hidden_size' has the wrong type"):
        get(js, "hidden_size", "str")
    with pytest.raises(acestep_ggml.ModelFileError, match="malformed config JSON"):
        get('{"a": [1, 2', "a", "int_list")
    with pytest.raises(acestep_ggml.ModelFileError, match="not a JSON object"):
        get("[1]", "a", "int")
