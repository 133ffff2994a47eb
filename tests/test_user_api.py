"""The user's way in: models from a (fake) hub cache, threads, interrupts, download errors."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import acestep_ggml as ace

CAPTION = "warm analog pads, slow"


def put_in_hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """Lay `folder` out as huggingface_hub's cache holds a downloaded snapshot of `repo_id`."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")


@pytest.fixture(scope="module")
def fake_hub(synth_models, tmp_path_factory):
    """One repo of original checkpoints and one of GGUFs, as huggingface_hub's cache holds them."""
    _, checkpoints, ggufs, _ = synth_models
    cache = tmp_path_factory.mktemp("hf-cache")
    put_in_hub_cache(cache, "Org/acestep-checkpoints", checkpoints)
    put_in_hub_cache(cache, "Org/acestep-gguf", ggufs["f32"])
    return cache


@pytest.fixture
def offline_hub(fake_hub, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(fake_hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ACESTEP_GGML_HOME", str(tmp_path / "home"))  # where converted checkpoints go
    return fake_hub


@pytest.mark.parametrize("repo", ["Org/acestep-gguf", "Org/acestep-checkpoints"])
def test_generate_from_a_hub_repo(offline_hub, repo):
    song = ace.generate(repo, CAPTION, duration=1, use_lm=False, seed=5, n_threads=1)
    assert song.audio.shape == (2, 25 * 8) and song.audio.dtype == np.float32  # 1 s at 25 latents/s, hop 8
    assert song.sample_rate == 200


def test_pipeline_from_pretrained_keeps_models_for_repeated_calls(offline_hub):
    pipe = ace.Pipeline.from_pretrained("Org/acestep-gguf", n_threads=1, keep_loaded=True)
    a = pipe.generate(CAPTION, duration=10, bpm=90, keyscale="A minor", timesignature=4, seed=2)
    b = pipe.generate(CAPTION, duration=10, bpm=90, keyscale="A minor", timesignature=4, seed=2)
    assert len(a.request.codes) == 50 and a.request.bpm == 90  # the LM's codes, 5 per second, and the metadata
    np.testing.assert_array_equal(a.audio, b.audio)


def test_progress_follows_lm_tokens_dit_steps_and_vae_tiles(offline_hub):
    events = []
    pipe = ace.Pipeline.from_pretrained("Org/acestep-gguf", n_threads=1)
    # bpm missing: the LM writes a chain of thought first.  30 s at 25 latents/s = 750 frames,
    # decoded in tiles of the VAE's default chunk.
    song = pipe.generate(CAPTION, duration=30, keyscale="A minor", timesignature=4, seed=3, steps=4,
                         progress=lambda *e: events.append(e))
    stages = list(dict.fromkeys(stage for stage, _, _ in events))
    assert stages == ["lm-metadata", "lm-codes", "text", "condition", "codes", "dit", "vae"]
    cot = [done for stage, done, total in events if stage == "lm-metadata"]
    assert cot == list(range(len(cot))) and len(cot) > 5  # every token, unknown total (0)
    codes = [(done, total) for stage, done, total in events if stage == "lm-codes"]
    assert codes[0] == (0, 150) and codes[-1] == (150, 150) and len(song.request.codes) == 150
    assert [d for s, d, _ in events if s == "dit"] == [0, 1, 2, 3, 4]
    chunk = ace.models.DEFAULT_CHUNK
    tiles = [(d, t) for s, d, t in events if s == "vae"]
    assert tiles == [(i, -(-750 // chunk)) for i in range(1, -(-750 // chunk) + 1)]


def test_default_lm_is_the_largest_that_fits(tmp_path):
    files = []
    for name, size in (("lm-0.6B.gguf", 600), ("lm-1.7B.gguf", 1700), ("lm-4B.gguf", 4000)):
        (tmp_path / name).write_bytes(b"\0" * size)
        files.append(tmp_path / name)
    pick = ace.hub.choose_lm
    assert pick(files, 10_000).name == "lm-4B.gguf"
    assert pick(files, 4000).name == "lm-1.7B.gguf"  # 4000 bytes of weights need 30% more
    assert pick(files, 100).name == "lm-0.6B.gguf"  # nothing fits: the smallest
    assert pick(files, None).name == "lm-0.6B.gguf"  # memory unknown: the smallest
    assert ace.hub.available_memory("cpu") > 0


def test_checkpoint_repo_is_converted_once(offline_hub, tmp_path):
    first = ace.hub.resolve("Org/acestep-checkpoints")
    stamp = (first / "source.json").stat().st_mtime_ns
    assert ace.hub.resolve("Org/acestep-checkpoints") == first
    assert (first / "source.json").stat().st_mtime_ns == stamp, "the second call must reuse the conversion"
    assert str(first).startswith(str(tmp_path / "home"))


def test_cli_generate_and_download_from_the_fake_hub(offline_hub, tmp_path):
    import soundfile as sf

    out = tmp_path / "a.wav"
    r = subprocess.run([sys.executable, "-m", "acestep_ggml", "generate", "--caption", CAPTION, "--no-lm",
                        "--duration", "1", "--models", "Org/acestep-gguf", "--threads", "1", "-o", str(out),
                        "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sf.info(str(out)).channels == 2
    r = subprocess.run([sys.executable, "-m", "acestep_ggml", "download", "--repo", "Org/acestep-gguf", "--files",
                        "*.gguf", "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("0123abcd")
    r = subprocess.run([sys.executable, "-m", "acestep_ggml", "download", "--quiet"], capture_output=True, text=True)
    assert r.returncode == 2 and "HF_HUB_OFFLINE" in r.stderr


def test_two_threads_same_seed_same_audio(offline_hub):
    folder = ace.hub.resolve("Org/acestep-gguf")
    results = [None, None]

    def run(i):
        results[i] = ace.Synthesizer(folder, n_threads=1)(ace.Request(caption=CAPTION, duration=1), seed=11).audio

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] is not None and results[1] is not None
    np.testing.assert_array_equal(results[0], results[1])


def test_ctrl_c_stops_without_a_partial_file(offline_hub, tmp_path):
    out = tmp_path / "long.wav"
    # A long song on tiny models: still running when the interrupt arrives.
    p = subprocess.Popen([sys.executable, "-m", "acestep_ggml", "generate", "--caption", CAPTION, "--no-lm",
                          "--duration", "600", "--steps", "200", "--models", "Org/acestep-gguf", "--threads", "1",
                          "-o", str(out), "--quiet"], stderr=subprocess.PIPE, text=True,
                         # A background job of a non-interactive shell inherits SIGINT ignored,
                         # and Python keeps it so: give the child the default, as a terminal does.
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(4)
    p.send_signal(signal.SIGINT)
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail("generate did not stop within 60 s of Ctrl-C")
    assert p.returncode == 130, err
    assert "interrupted" in err
    assert not out.exists() and not list(tmp_path.glob("*.wav*"))


def test_missing_models_say_how_to_get_them(tmp_path):
    r = subprocess.run([sys.executable, "-m", "acestep_ggml", "generate", "--caption", "x", "--no-lm",
                        "--models", str(tmp_path), "-o", str(tmp_path / "x.wav")], capture_output=True, text=True)
    assert r.returncode == 2
    assert str(tmp_path) in r.stderr and "download" in r.stderr


@pytest.mark.parametrize("args, words", [
    (["--duration", "0"], "duration must be 1..600 seconds, got 0"),
    (["--duration", "601"], "duration must be 1..600 seconds, got 601"),
    (["--steps", "0"], "steps must be at least 1"),
    (["--shift", "-1"], "shift must be a positive number"),
])
def test_invalid_arguments_say_which(offline_hub, tmp_path, args, words):
    out = tmp_path / "x.wav"
    r = subprocess.run([sys.executable, "-m", "acestep_ggml", "generate", "--caption", "x", "--no-lm",
                        "--models", "Org/acestep-gguf", "-o", str(out), *args], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert words in r.stderr
    assert not out.exists()


@pytest.mark.parametrize("kwargs, words", [
    ({"duration": 2}, "duration 2 s is outside 10..600 s"),
    ({"bpm": 1000}, "bpm 1000 is outside 30..300"),
    ({"keyscale": "H major"}, "keyscale 'H major'"),
    ({"ref_audio": "no-such-file.wav"}, "ref_audio"),
])
def test_song_inputs_are_checked_before_any_model_is_fetched(monkeypatch, tmp_path, kwargs, words):
    """From a hub repo, a bad duration or reference audio fails before a byte is downloaded,
    not after the synth models are fetched and the LM has run."""
    from acestep_ggml import hub, pipeline

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was fetched before the song's inputs were checked")

    monkeypatch.setattr(pipeline, "resolve", forbidden)
    monkeypatch.setattr(hub, "fetch", forbidden)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ace.InputError, match=words):
        ace.generate("Org/acestep-gguf", CAPTION, **kwargs)
