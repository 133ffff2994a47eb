"""Bad model files and bad convert sources: each gives a clear Python exception (or a
one-line CLI error) naming the file and the problem, never a crash inside ggml."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

import acestep_ggml
from acestep_ggml import ModelFileError, ModelsNotFound, _core
from acestep_ggml.convert import convert


@pytest.fixture(scope="module")
def vae_file(tiny_original_dir, tmp_path_factory) -> Path:
    (path,) = convert(tiny_original_dir / "vae", tmp_path_factory.mktemp("vae"), quiet=True)
    return path


def _first_tensor(path: Path):
    name, shape, _ = acestep_ggml.GGUFFile(str(path)).tensors()[0]
    return name, list(shape)


def test_non_gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 this is a zip, not a GGUF" * 10)
    with pytest.raises(ModelFileError, match="not a GGUF file") as e:
        acestep_ggml.GGUFFile(str(path))
    assert str(path) in str(e.value)


@pytest.mark.parametrize("where", ["header", "tensor data"])
def test_truncated_file(vae_file, tmp_path, where):
    data = vae_file.read_bytes()
    last_tensor = acestep_ggml.GGUFFile(str(vae_file)).tensors()[-1][0]
    cut = 200 if where == "header" else len(data) - 16
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:cut])
    with pytest.raises(ModelFileError, match="truncated") as e:
        acestep_ggml.GGUFFile(str(path))
    assert str(path) in str(e.value)
    if where == "tensor data":  # the message names the tensor that does not fit
        assert last_tensor in str(e.value)


def test_wrong_kind(vae_file):
    with pytest.raises(ModelFileError, match="general.architecture is 'acestep-vae', expected 'acestep-dit'") as e:
        _core.load_weights(str(vae_file), "acestep-dit", [])
    assert str(vae_file) in str(e.value)


def test_missing_tensor(vae_file):
    with pytest.raises(ModelFileError, match="tensor 'decoder.nope.weight' is missing") as e:
        _core.load_weights(str(vae_file), "acestep-vae", [("decoder.nope.weight", [4], "f32")])
    assert str(vae_file) in str(e.value)


def test_tensor_of_wrong_shape(vae_file):
    name, shape = _first_tensor(vae_file)
    wrong = shape[:-1] + [shape[-1] + 1]
    with pytest.raises(ModelFileError, match=f"tensor '{name}' has shape") as e:
        _core.load_weights(str(vae_file), "acestep-vae", [(name, wrong, "keep")])
    assert str(vae_file) in str(e.value)
    assert _core.load_weights(str(vae_file), "acestep-vae", [(name, shape, "keep")]) > 0


def test_tensor_of_integer_type(tmp_path):
    path = tmp_path / "ints.gguf"
    w = gguf.GGUFWriter(str(path), "acestep-vae")
    w.add_tensor("decoder.conv1.bias", np.arange(8, dtype=np.int32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelFileError, match="'decoder.conv1.bias' has type i32, which is not a float") as e:
        _core.load_weights(str(path), "acestep-vae", [("decoder.conv1.bias", [8], "f32")])
    assert str(path) in str(e.value)
    with pytest.raises(ModelFileError, match="not a float"):
        acestep_ggml.GGUFFile(str(path)).tensor("decoder.conv1.bias")


def _cli(*args) -> subprocess.CompletedProcess:
    # The environment as the tests got it: the installed package in CI, PYTHONPATH=src in a dev tree.
    return subprocess.run([sys.executable, "-m", "acestep_ggml", *map(str, args)], capture_output=True, text=True)


def test_cli_convert_missing_directory(tmp_path):
    missing = tmp_path / "no-such-checkpoints"
    r = _cli("convert", missing, tmp_path / "out", "--quiet")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0], r.stderr


def test_cli_convert_empty_directory(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _cli("convert", empty, tmp_path / "out", "--quiet")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(empty) in lines[0] and "no ACE-Step checkpoint" in lines[0], r.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_convert_folder_without_weights(tmp_path):
    folder = tmp_path / "vae"
    folder.mkdir()
    (folder / "config.json").write_text('{"_class_name": "AutoencoderOobleck"}')
    with pytest.raises(ModelsNotFound, match="no model.safetensors") as e:
        convert(folder, tmp_path / "out", quiet=True)
    assert str(folder) in str(e.value)
