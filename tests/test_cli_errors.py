"""Each CLI command run into each error it can reach: exit status 2 and one line ``error: ...``
on stderr, never a traceback.

The errors: a model file that is there but broken (ModelFileError), a bad value (InputError), a
device that is not there or cannot take the work (DeviceError), a malformed exchange directory
(ExchangeError), no models where they were looked for (ModelsNotFound).  `info` takes no input
that can fail.  A device that cannot hold the models is simulated on the CPU (the core raises
DeviceError only for a GPU); with ``--device`` a GPU, a real one is run into as well."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from acestep_ggml.convert.gguf_writer import GGUFWriter

CAPTION = "warm analog pads, slow"
# A device that cannot hold the weights, from the first model each command loads: the classes
# of the core replaced by one that raises as the core does, then the CLI as `python -m` runs it.
SIMULATED_DEVICE_ERROR = """
import sys
from acestep_ggml import _core
from acestep_ggml.errors import DeviceError

def full(*args, **kwargs):
    raise DeviceError("simulated: the device cannot hold the model's weights")

for name in ("_TextEncoder", "_ConditionEncoder", "_Detokenizer", "_AudioTokenizer", "DiT", "VAE", "_LM"):
    setattr(_core, name, full)
from acestep_ggml.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _cli(tmp: Path, *args, env: dict | None = None, simulate_full_device: bool = False):
    # Offline, with an empty hub cache: nothing in these runs may reach the network.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp / "hub-cache"), **(env or {})}
    head = ["-c", SIMULATED_DEVICE_ERROR] if simulate_full_device else ["-m", "acestep_ggml"]
    return subprocess.run([sys.executable, *head, *map(str, args)], capture_output=True, text=True, env=env)


def assert_one_error_line(r: subprocess.CompletedProcess, *words: str) -> None:
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, r.stderr
    for w in words:
        assert w in errors[0], r.stderr


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    """Broken inputs of every kind, small and torch-free."""
    root = tmp_path_factory.mktemp("bad")
    out = {"root": root}
    # GGUFs that open, each of a model kind, holding nothing else: found, then unusable.
    out["hollow_models"] = root / "hollow"
    out["hollow_models"].mkdir()
    for name, arch in (("acestep-v15-turbo-F32", "acestep-dit"), ("Qwen3-Embedding-0.6B-F32", "acestep-text-enc"),
                       ("vae-F32", "acestep-vae"), ("acestep-5Hz-lm-0.6B-F32", "acestep-lm")):
        GGUFWriter(arch).write(out["hollow_models"] / f"{name}.gguf")
    out["garbage_gguf"] = root / "garbage.gguf"
    out["garbage_gguf"].write_bytes(b"GGUF" + bytes(range(256)) * 4)
    out["empty"] = root / "empty"
    out["empty"].mkdir()
    out["exchange"] = root / "exchange"
    out["exchange"].mkdir()
    (out["exchange"] / "caption").write_text(CAPTION)
    out["bad_exchange"] = root / "bad-exchange"
    out["bad_exchange"].mkdir()
    (out["bad_exchange"] / "caption").write_text(CAPTION)
    (out["bad_exchange"] / "bpm").write_text("fast")
    # A VAE checkpoint folder whose weights file is not safetensors.
    out["bad_checkpoint"] = root / "checkpoints" / "vae"
    out["bad_checkpoint"].mkdir(parents=True)
    (out["bad_checkpoint"] / "config.json").write_text('{"_class_name": "AutoencoderOobleck"}')
    (out["bad_checkpoint"] / "model.safetensors").write_bytes(b"\xff" * 64)
    out["a_file"] = root / "a-file"
    out["a_file"].write_text("not a folder")
    return out


@pytest.fixture(scope="module")
def models(synth_models) -> Path:
    """A folder of working tiny GGUFs (DiT, text encoder, VAE, LM)."""
    return synth_models[2]["f32"]


# -- ModelFileError --------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["synth", "generate"])
def test_broken_model_file(bad, tmp_path, command):
    args = (["synth", "--input-dir", bad["exchange"]] if command == "synth"
            else ["generate", "--caption", CAPTION, "--no-lm"])
    r = _cli(tmp_path, *args, "--models", bad["hollow_models"], "-o", tmp_path / "a.wav", "--quiet")
    # The first unusable file the synth stage meets (its order is the stage's), named with what it lacks.
    assert_one_error_line(r, str(bad["hollow_models"]))
    assert not (tmp_path / "a.wav").exists()


def test_broken_model_file_lm(bad, tmp_path):
    r = _cli(tmp_path, "lm", "--models", bad["empty"], "--lm", bad["garbage_gguf"], "--caption", CAPTION,
             "--output-dir", tmp_path / "out", "--quiet")
    assert_one_error_line(r, str(bad["garbage_gguf"]))


def test_broken_model_file_convert(bad, tmp_path):
    r = _cli(tmp_path, "convert", bad["bad_checkpoint"], tmp_path / "out", "--quiet")
    assert_one_error_line(r, "model.safetensors", "not a safetensors file")


# -- InputError ------------------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["synth", "--input-dir", "{exchange}", "--models", "{empty}", "-o", "{tmp}/a.xyz"], ["a.xyz", "audio format"]),
    (["generate", "--caption", CAPTION, "--no-lm", "--models", "{empty}", "-o", "{tmp}/a.xyz"], ["audio format"]),
    # From a hub repo, checked before anything is fetched.
    (["generate", "--caption", CAPTION, "--duration", "5", "--models", "Org/acestep-gguf", "-o", "{tmp}/a.wav"],
     ["duration 5 s is outside 10..600 s"]),
    (["generate", "--caption", CAPTION, "--lyrics-file", "{tmp}/no-lyrics.txt", "--models", "{empty}", "-o",
      "{tmp}/a.wav"], ["--lyrics-file", "no-lyrics.txt"]),
    (["synth", "--input-dir", "{exchange}", "--models", "{empty}", "-o", "{tmp}/a.wav", "--init-noise",
      "{a_file}"], ["--init-noise", "a-file"]),
    (["lm", "--models", "{empty}", "--caption", CAPTION, "--bpm", "1000", "--output-dir", "{tmp}/out"],
     ["bpm 1000 is outside 30..300"]),
    (["convert", "{a_file}", "{tmp}/out"], ["a-file", "not a directory"]),
])
def test_bad_value(bad, tmp_path, args, words):
    values = {k: v for k, v in bad.items()} | {"tmp": tmp_path}
    r = _cli(tmp_path, *(a.format(**values) for a in args), "--quiet")
    assert_one_error_line(r, *words)


# -- DeviceError -----------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["synth", "lm", "generate"])
def test_device_that_is_not_there(models, bad, tmp_path, command):
    args = {"synth": ["synth", "--input-dir", bad["exchange"], "-o", tmp_path / "a.wav"],
            "lm": ["lm", "--caption", CAPTION, "--duration", "10", "--output-dir", tmp_path / "out"],
            "generate": ["generate", "--caption", CAPTION, "--no-lm", "--duration", "1", "-o", tmp_path / "a.wav"]}
    r = _cli(tmp_path, *args[command], "--models", models, "--device", "cuda:7", "--quiet")
    assert_one_error_line(r, "cuda:7")


@pytest.mark.parametrize("command", ["synth", "lm", "generate"])
def test_device_that_cannot_hold_the_models(models, bad, tmp_path, command):
    args = {"synth": ["synth", "--input-dir", bad["exchange"], "-o", tmp_path / "a.wav"],
            "lm": ["lm", "--caption", CAPTION, "--duration", "10", "--output-dir", tmp_path / "out"],
            "generate": ["generate", "--caption", CAPTION, "--duration", "10", "-o", tmp_path / "a.wav"]}
    r = _cli(tmp_path, *args[command], "--models", models, "--threads", "1", "--quiet", simulate_full_device=True)
    assert_one_error_line(r, "simulated: the device cannot hold")


def test_strict_device_op_off_the_device(models, bad, tmp_path, device):
    """The issue's own case: `synth --device <gpu>` under ACESTEP_GGML_STRICT_DEVICE=1, the VAE's
    fused CPU kernels forced on, fails naming the op instead of a traceback."""
    if device == "cpu":
        pytest.skip("every op runs on the CPU device; run with --device <gpu>")
    r = _cli(tmp_path, "synth", "--input-dir", bad["exchange"], "--models", models, "-o", tmp_path / "a.wav",
             "--device", device, "--quiet", env={"ACESTEP_GGML_STRICT_DEVICE": "1", "ACESTEP_GGML_VAE_OPS": "fused"})
    assert_one_error_line(r, "ACESTEP_GGML_STRICT_DEVICE")


# -- ExchangeError ---------------------------------------------------------------------------

def test_malformed_exchange_directory(models, bad, tmp_path):
    r = _cli(tmp_path, "synth", "--input-dir", bad["bad_exchange"], "--models", models, "-o", tmp_path / "a.wav",
             "--quiet")
    assert_one_error_line(r, "bpm: expected an integer")


def test_exchange_directory_that_is_a_file(models, bad, tmp_path):
    """Found before the LM runs, not after."""
    r = _cli(tmp_path, "lm", "--models", models, "--caption", CAPTION, "--output-dir", bad["a_file"], "--quiet",
             simulate_full_device=True)
    assert_one_error_line(r, "a-file", "not a directory")


# -- ModelsNotFound --------------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["synth", "--input-dir", "{exchange}", "--models", "{empty}", "-o", "{tmp}/a.wav"], ["{empty}", "download"]),
    (["generate", "--caption", CAPTION, "--no-lm", "--models", "{empty}", "-o", "{tmp}/a.wav"], ["{empty}"]),
    (["generate", "--caption", CAPTION, "--no-lm", "-o", "{tmp}/a.wav"], ["HF_HUB_OFFLINE"]),
    (["lm", "--models", "{empty}", "--caption", CAPTION, "--output-dir", "{tmp}/out"], ["{empty}"]),
    (["lm", "--models", "{hollow_models}", "--lm", "9B", "--caption", CAPTION, "--output-dir", "{tmp}/out"],
     ["9B", "acestep-5Hz-lm-0.6B-F32.gguf"]),
    (["convert", "{tmp}/no-checkpoints", "{tmp}/out"], ["no-checkpoints"]),
    (["download"], ["HF_HUB_OFFLINE"]),
    (["download", "--repo", "Org/no-such-repo", "--files", "*.gguf"], ["Org/no-such-repo"]),
])
def test_no_models_there(bad, tmp_path, args, words):
    values = {k: v for k, v in bad.items()} | {"tmp": tmp_path}
    r = _cli(tmp_path, *(a.format(**values) for a in args), "--quiet")
    assert_one_error_line(r, *(w.format(**values) for w in words))


# -- Ctrl-C ----------------------------------------------------------------------------------

def test_ctrl_c_is_one_line_and_130(models, tmp_path):
    """The LM of a long song, interrupted once it writes codes: ``interrupted``, exit 130, no
    traceback, no exchange directory."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub-cache")}
    p = subprocess.Popen([sys.executable, "-m", "acestep_ggml", "lm", "--models", str(models), "--caption", CAPTION,
                          "--duration", "600", "--bpm", "90", "--keyscale", "A minor", "--timesignature", "4",
                          "--threads", "1", "--output-dir", str(tmp_path / "out")],
                         stderr=subprocess.PIPE, text=True, env=env,
                         # As a terminal gives it: SIGINT at its default, not ignored as in a background job.
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: p.stderr.read(1), "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while "lm-codes" not in "".join(err) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert p.poll() is None, "".join(err)
    p.send_signal(signal.SIGINT)
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail("lm did not stop within 60 s of Ctrl-C")
    reader.join(10)
    text = "".join(err)
    assert p.returncode == 130 and "Traceback" not in text, text
    assert text.replace("\r", "\n").strip().splitlines()[-1] == "interrupted", text
    assert not (tmp_path / "out").exists()


# -- the other commands: understand, batch, serve (tests/fuzz has the model-file fuzzers) --------

@pytest.mark.parametrize("args, words", [
    (["understand", "{tmp}/no-such.wav", "--models", "{empty}", "--output-dir", "{tmp}/out"], []),
    (["understand", "{garbage_gguf}", "--models", "{hollow_models}", "--output-dir", "{tmp}/out"], []),
    (["understand", "--codes", "{tmp}/no-codes.txt", "--models", "{empty}", "--output-dir", "{tmp}/out"],
     ["no-codes.txt"]),
    (["understand", "--codes", "{a_file}", "--models", "{hollow_models}", "--output-dir", "{tmp}/out"], ["a-file"]),
    (["understand", "--models", "{empty}", "--output-dir", "{tmp}/out"], ["--codes"]),
    (["batch", "{tmp}/no-table.jsonl", "--models", "{empty}", "--output-dir", "{tmp}/out"], ["no-table.jsonl"]),
    (["batch", "{garbage_gguf}", "--models", "{empty}", "--output-dir", "{tmp}/out"], []),
    (["batch", "{bad_table}", "--models", "{empty}", "--output-dir", "{tmp}/out"], []),
    (["serve", "--models", "{empty}", "--port", "0", "--max-queue", "0"], ["--max-queue"]),
])
def test_every_command_bad_input(bad, tmp_path, args, words):
    """No command prints a traceback for bad input: `understand` with missing or unreadable audio
    or codes, `batch` with a missing or malformed table, `serve` with a bad option."""
    bad_table = tmp_path / "table.jsonl"
    bad_table.write_text('{"id": "a", "caption": "x", "duration": "long"}\n{not json\n')
    values = {k: v for k, v in bad.items()} | {"tmp": tmp_path, "bad_table": bad_table}
    r = subprocess.run([sys.executable, "-m", "acestep_ggml", *(a.format(**values) for a in args), "--quiet"]
                       if args[0] != "serve" else [sys.executable, "-m", "acestep_ggml",
                                                   *(a.format(**values) for a in args)],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub-cache")})
    assert_one_error_line(r, *words)
