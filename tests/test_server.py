"""The HTTP server against its app, through httpx (FastAPI's TestClient), on the tiny synth models:
acestep.cpp's job API and its result shapes, progress events, the queue's behaviour, failures that
stay the job's, security, the page, upstream's face, and the `serve` command."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from _server import cosine, multipart, need, read_wav, wait, wait_for, wav_bytes
from conftest import fresh_seed

need("fastapi", "pip install 'acestep-ggml[server]'")
need("httpx", "pip install httpx")

from fastapi.testclient import TestClient  # noqa: E402

from acestep_ggml.exchange import write_request  # noqa: E402
from acestep_ggml.server import engine  # noqa: E402
from acestep_ggml.server.app import ServerConfig, create_app  # noqa: E402

RATE, LPS = 200, 25  # the tiny synth models: 200 Hz audio, 25 latents per second
SONG = {"caption": "warm analog pads, slow", "lyrics": "[Verse]\nla la la", "bpm": 90, "keyscale": "A minor",
        "timesignature": "3", "vocal_language": "en", "duration": 4, "output_format": "wav16"}


@pytest.fixture(scope="module")
def models_dir(synth_models):
    return synth_models[2]["f32"]


@contextlib.contextmanager
def serving(models_dir, **config):
    app = create_app(ServerConfig(models=str(models_dir), n_threads=1, **config))
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def api(models_dir):
    """One server for the tests that need no settings of their own."""
    with serving(models_dir) as client:
        yield client


def submit(client, path="/synth", **fields) -> str:
    r = client.post(path, json={**SONG, **fields})
    assert r.status_code == 200, r.text
    assert re.fullmatch(r"[0-9a-f]{16}", r.json()["id"])
    return r.json()["id"]


def slow_song(**fields) -> dict:
    """A song that takes seconds even on the tiny models: 600 s of latents, many steps."""
    return {**SONG, "duration": 600, "inference_steps": 60, **fields}


# -- acceptance: the same audio as the CLI ------------------------------------------------------
def test_synth_result_is_the_cli_synth_of_the_same_request_and_seed(api, models_dir, tmp_path):
    seed = fresh_seed("server synth")
    job = submit(api, seed=seed)
    assert wait(api, job)["status"] == "done"
    r = api.get("/job", params={"id": job, "result": "1"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "multipart/mixed; boundary=ace-batch-boundary"  # acestep.cpp's, exactly
    (audio_type, audio_part), (latent_type, latent_part) = multipart(r.content, r.headers["content-type"])
    assert (audio_type, latent_type) == ("audio/wav", "application/octet-stream")
    served, rate = read_wav(audio_part)
    assert rate == RATE and served.shape == (2, 4 * RATE)
    assert len(latent_part) == 4 * LPS * 64 * 4  # raw f32 [T, 64]

    # The same request through the CLI: an exchange directory, `synth`, the same seed.
    request = engine.make_request(caption=SONG["caption"], lyrics=SONG["lyrics"], bpm=90, keyscale="A minor",
                                  timesignature=3, language="en", duration=4)
    write_request(tmp_path / "ex", request)
    out = tmp_path / "cli.wav"
    cli = subprocess.run([sys.executable, "-m", "acestep_ggml", "synth", "--input-dir", str(tmp_path / "ex"),
                          "--models", str(models_dir), "--output", str(out), "--seed", str(seed), "--threads", "1",
                          "--quiet"], capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    expected, _ = read_wav(out.read_bytes())
    # Both are 16-bit WAVs of one computation; the bar leaves room for nothing but rounding.
    assert cosine(served, expected) >= 0.9999


def test_the_time_signature_reaches_the_model(api):
    """`timesignature` is mapped onto the package's request in one place; a change must change the song."""
    songs = []
    for ts in ("3", 4):
        job = submit(api, seed=5, timesignature=ts)
        assert wait(api, job)["status"] == "done"
        songs.append(api.get("/job/audio", params={"id": job}).content)
    assert songs[0] != songs[1]


def test_lm_writes_codes_that_synth_renders(api):
    job = submit(api, "/lm", duration=10, lm_seed=3)
    status = wait(api, job)
    assert status["status"] == "done", status
    written = api.get("/job", params={"id": job, "result": "1"}).json()
    assert isinstance(written, list) and len(written) == 1
    assert len(written[0]["audio_codes"].split(",")) == 10 * 5  # 5 codes per second
    assert written[0]["bpm"] == 90 and written[0]["timesignature"] == "3" and written[0]["lm_seed"] == 3
    synth = api.post("/synth", json=written[0]).json()["id"]  # acestep.cpp's clients feed the LM's result back
    assert wait(api, synth)["status"] == "done"
    audio, _ = read_wav(api.get("/job/audio", params={"id": synth}).content)
    assert audio.shape[1] == 10 * RATE


def test_batches_render_one_track_per_variation(api):
    r = api.post("/synth", json=[{**SONG, "seed": 1, "synth_batch_size": 2}, {**SONG, "seed": 9, "duration": 2}])
    job = r.json()["id"]
    assert wait(api, job)["status"] == "done"
    res = api.get("/job", params={"id": job, "result": "1"})
    parts = multipart(res.content, res.headers["content-type"])
    assert [t for t, _ in parts] == ["audio/wav", "application/octet-stream"] * 3
    lengths = [read_wav(p)[0].shape[1] for t, p in parts if t == "audio/wav"]
    assert lengths == [4 * RATE, 4 * RATE, 2 * RATE]
    assert parts[0][1] != parts[2][1]  # consecutive seeds, different songs


# -- understand, the LM's modes, the sampling controls: what the Python API computes ---------------------
def _song_request(**fields):
    """SONG as the package's Request, as the server maps it (and the CLI test above)."""
    return engine.make_request(caption=SONG["caption"], lyrics=SONG["lyrics"], bpm=90, keyscale="A minor",
                               timesignature=3, language="en", duration=4, **fields)


def _lm_path(api, models_dir):
    return models_dir / api.get("/props").json()["models"]["lm"][0]  # the server's default LM


def _understand(api, files: dict) -> tuple[dict, bytes]:
    r = api.post("/understand", files=files)
    assert r.status_code == 200, r.text
    status = wait(api, r.json()["id"])
    assert status["status"] == "done", status
    res = api.get("/job", params={"id": r.json()["id"], "result": "1"})
    assert res.headers["content-type"] == "multipart/mixed; boundary=ace-batch-boundary"
    (json_type, text), (latent_type, latent) = multipart(res.content, res.headers["content-type"])
    assert (json_type, latent_type) == ("application/json", "application/octet-stream")
    written = json.loads(text)
    assert isinstance(written, list) and len(written) == 1
    return written[0], latent


# The random tiny LM seldom ends its answer: bounded, on both sides, so that each run takes seconds.
ANSWER_TOKENS = 48


def test_understand_returns_acestep_cpps_fields_and_the_python_apis_result(api, models_dir, monkeypatch):
    import acestep_ggml as ace

    monkeypatch.setattr(engine, "LM_MODE_MAX_NEW_TOKENS", ANSWER_TOKENS)
    seed = fresh_seed("server understand")
    audio = np.random.default_rng(seed).uniform(-0.5, 0.5, (2, 3 * RATE)).astype(np.float32)
    got, latent = _understand(api, {"audio": ("song.wav", wav_bytes(audio, RATE)),
                                    "request": (None, json.dumps({"lm_seed": seed}))})
    # acestep.cpp's understand result: an AceRequest, ready for POST /synth (field types as its JSON)
    types = {"caption": str, "lyrics": str, "bpm": int, "duration": float, "keyscale": str, "timesignature": str,
             "vocal_language": str, "audio_codes": str, "seed": int, "lm_seed": int}
    assert {k: type(got[k]) for k in types} == types
    assert got["lm_seed"] == seed and got["seed"] == -1 and got["caption"]
    codes = [int(c) for c in got["audio_codes"].split(",")]
    assert len(codes) == 3 * 5  # 5 Hz codes of 3 s
    assert len(latent) == 3 * LPS * 64 * 4  # the source's latents, raw f32 [T, 64]

    # The Python API on the same audio and seed: the same answer, field for field.
    want = ace.Pipeline(models_dir, n_threads=1).understand(audio, seed=seed, max_new_tokens=ANSWER_TOKENS)
    ts = want.timesignature
    assert got == {**got, "caption": want.caption, "lyrics": want.lyrics, "bpm": want.bpm or 0,
                   "duration": float(want.duration or 0), "keyscale": want.keyscale or "",
                   "timesignature": "" if ts is None else str(ts), "vocal_language": want.language or ""}
    assert codes == want.codes

    # acestep.cpp's clients send the latents back instead of the audio: the same codes, the same answer.
    again, latent2 = _understand(api, {"src_latents": ("src.latents", latent),
                                       "request": (None, json.dumps({"lm_seed": seed}))})
    assert again == got and latent2 == latent
    synth = api.post("/synth", json={**got, "output_format": "wav16"})  # and the result renders
    assert synth.status_code == 200 and wait(api, synth.json()["id"])["status"] == "done"


@pytest.mark.parametrize("mode, fields, instrumental", [
    ("inspire", {"caption": "a calm piano piece for the evening", "lyrics": "[Instrumental]"}, True),
    ("inspire", {"caption": "an upbeat song about trains", "vocal_language": "en"}, False),
    ("format", {"caption": "rock, guitars", "lyrics": "[Verse]\nla la la", "bpm": 120}, False),
])
def test_lm_modes_inspire_and_format_are_the_python_apis(api, models_dir, monkeypatch, mode, fields, instrumental):
    import acestep_ggml as ace
    from acestep_ggml import lm_modes

    monkeypatch.setattr(engine, "LM_MODE_MAX_NEW_TOKENS", ANSWER_TOKENS)
    seed = fresh_seed(f"server lm_mode {mode}")
    job = api.post("/lm", json={**fields, "lm_mode": mode, "lm_seed": seed, "lm_batch_size": 2}).json()["id"]
    assert wait(api, job)["status"] == "done"
    written = api.get("/job", params={"id": job, "result": "1"}).json()
    assert len(written) == 2 and [w["lm_seed"] for w in written] == [seed, seed + 1]

    lm = ace.LM(_lm_path(api, models_dir), n_threads=1)
    request = engine.make_request(caption=fields["caption"], lyrics=fields.get("lyrics", ""), bpm=fields.get("bpm"),
                                  language="unknown" if instrumental else fields.get("vocal_language"))
    for i, got in enumerate(written):
        # acestep.cpp's defaults for the LM's sampling: temperature 0.85, top-p 0.9
        want = lm_modes.run(lm, request, mode, instrumental=instrumental, seed=seed + i, temperature=0.85,
                            top_p=0.9, top_k=None, max_new_tokens=ANSWER_TOKENS)
        ts = want.timesignature
        assert got["audio_codes"] == ""  # neither mode writes codes
        assert (got["caption"], got["lyrics"], got["bpm"], got["duration"], got["keyscale"], got["timesignature"],
                got["vocal_language"]) == (want.caption, want.lyrics, want.bpm or 0, float(want.duration or 0),
                                           want.keyscale or "", "" if ts is None else str(ts), want.language or "")
    if mode == "format":
        assert written[0]["bpm"] == 120  # given metadata is kept
    if mode == "inspire":
        assert all(w["use_cot_caption"] for w in written)


def _latents(api, body) -> np.ndarray:
    job = api.post("/synth", json=body).json()["id"]
    status = wait(api, job)
    assert status["status"] == "done", status
    res = api.get("/job", params={"id": job, "result": "1"})
    (_, _), (_, latent) = multipart(res.content, res.headers["content-type"])
    return np.frombuffer(latent, "<f4").reshape(-1, 64)


# acestep.cpp's fields -> the Controls the Python API takes for the same song
CONTROLS = [
    ({"solver": "sde"}, {"solver": "sde"}),
    ({"solver": "dpm3m"}, {"solver": "dpm3m"}),
    ({"solver": "stork4", "stork_substeps": 5}, {"solver": "stork4", "stork_substeps": 5}),
    ({"solver": "heun"}, {"solver": "heun"}),
    ({"dcw_scaler": 0.1}, {"dcw_mode": "low", "dcw_scaler": 0.1, "dcw_high_scaler": 0.0}),
    ({"dcw_mode": "double", "dcw_scaler": 0.1, "dcw_high_scaler": 0.3},
     {"dcw_mode": "double", "dcw_scaler": 0.1, "dcw_high_scaler": 0.3}),
    ({"dcw_mode": "pix", "dcw_scaler": 0.2}, {"dcw_mode": "pix", "dcw_scaler": 0.2, "dcw_high_scaler": 0.0}),
    # acestep.cpp leaves DCW off for a solver that injects noise (dit-sampler.h: !injects_noise)
    ({"solver": "sde", "dcw_scaler": 0.1}, {"solver": "sde"}),
    ({"dcw_mode": "high", "dcw_scaler": 0.0}, {}),  # both scalers 0: DCW off, whatever the mode
]


@pytest.fixture(scope="module")
def synthesizer(models_dir):
    import acestep_ggml as ace

    return ace.Synthesizer(models_dir, n_threads=1)


@pytest.mark.parametrize("fields, controls", CONTROLS, ids=lambda v: json.dumps(v) if isinstance(v, dict) else v)
def test_each_sampling_control_is_the_python_apis(api, synthesizer, fields, controls):
    seed = fresh_seed("server controls")
    served = _latents(api, {**SONG, "seed": seed, **fields})
    want = synthesizer(_song_request(), seed=seed, shift=3.0, **controls).latents
    # One computation on both sides (same files, same thread count): only float noise may differ.
    assert cosine(served, want) >= 0.99999
    assert np.linalg.norm(served - want) / np.linalg.norm(want) <= 1e-5
    if controls:  # the control reaches the sampler: the song is not the default one
        plain = synthesizer(_song_request(), seed=seed, shift=3.0).latents
        assert not np.allclose(served, plain, atol=1e-6)


def test_cover_nofsq_is_the_python_apis(api, synthesizer):
    seed = fresh_seed("server cover-nofsq")
    source = np.random.default_rng(seed).uniform(-0.5, 0.5, (2, 2 * RATE)).astype(np.float32)
    request = {**SONG, "task_type": "cover-nofsq", "audio_cover_strength": 0.5, "seed": seed}
    r = api.post("/synth", files={"request": (None, json.dumps(request)), "audio": ("s.wav", wav_bytes(source, RATE))})
    status = wait(api, r.json()["id"])
    assert status["status"] == "done", status
    res = api.get("/job", params={"id": r.json()["id"], "result": "1"})
    served = np.frombuffer(multipart(res.content, res.headers["content-type"])[1][1], "<f4").reshape(-1, 64)
    want = synthesizer(_song_request(task="cover-nofsq", src_audio=source, audio_cover_strength=0.5),
                       seed=seed, shift=3.0).latents
    assert cosine(served, want) >= 0.99999


def test_upstream_infer_method_and_adg_are_the_python_apis(api, synthesizer):
    seed = fresh_seed("server upstream controls")
    base = {"prompt": SONG["caption"], "lyrics": SONG["lyrics"], "audio_duration": 4, "bpm": 90,
            "key_scale": "A minor", "time_signature": "3", "vocal_language": "en", "audio_format": "wav",
            "use_random_seed": False, "seed": seed, "guidance_scale": 3.0}
    for fields, controls in (({"infer_method": "sde"}, {"solver": "sde"}),
                             ({"use_adg": True, "cfg_interval_start": 0.2}, {"use_adg": True,
                                                                             "cfg_interval": (0.2, 1.0)})):
        r = api.post("/release_task", json={**base, **fields})
        assert r.status_code == 200, r.text
        job = r.json()["data"]["task_id"]
        assert wait(api, job)["status"] == "done"
        res = api.get("/job", params={"id": job, "result": "1"})
        served = np.frombuffer(multipart(res.content, res.headers["content-type"])[1][1], "<f4").reshape(-1, 64)
        want = synthesizer(_song_request(), seed=seed, shift=3.0, guidance=3.0, **controls).latents
        assert cosine(served, want) >= 0.99999, fields
        plain = synthesizer(_song_request(), seed=seed, shift=3.0, guidance=3.0).latents
        assert not np.allclose(served, plain, atol=1e-6), fields  # the fields reach the sampler
    r = api.post("/release_task", json={**base, "infer_method": "heun"})
    assert r.status_code == 400 and "infer_method" in r.json()["error"]


def test_without_an_lm_lm_and_understand_answer_501_as_acestep_cpp(api, models_dir, tmp_path):
    lms = api.get("/props").json()["models"]["lm"]
    for f in models_dir.glob("*.gguf"):
        if f.name not in lms:
            (tmp_path / f.name).symlink_to(f)
    with serving(tmp_path) as client:
        assert client.get("/props").json()["models"]["lm"] == []
        r = client.post("/lm", json=SONG)
        assert r.status_code == 501 and "LM" in r.json()["error"]
        r = client.post("/understand", files={"audio": ("a.wav", wav_bytes(np.ones((2, RATE), np.float32) / 4, RATE))})
        assert r.status_code == 501 and "LM" in r.json()["error"]


def _random_peft_lora(folder, synthesizer, seed: int, rank: int = 4) -> None:
    """A PEFT LoRA folder (upstream's trainer layout: keys relative to the decoder, q/k/v/o of every
    attention) with random A and B for the tiny DiT the server serves."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape, _ in synthesizer.files["dit"].tensors():
        parts = name.split(".")
        if len(shape) == 2 and parts[0] == "decoder" and parts[-2] in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out, inp = shape
            key = "base_model.model." + ".".join(parts[1:-1])
            tensors[key + ".lora_A.weight"] = rng.standard_normal((rank, inp)).astype(np.float32) * 0.3
            tensors[key + ".lora_B.weight"] = rng.standard_normal((out, rank)).astype(np.float32) * 0.3
    assert tensors
    folder.mkdir()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": rank, "lora_alpha": 2.0 * rank, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}))


def test_adapters_are_named_from_the_servers_folder_and_worn_per_request(models_dir, synthesizer, tmp_path):
    import acestep_ggml as ace

    seed = fresh_seed("server adapters")
    _random_peft_lora(tmp_path / "peft-style", synthesizer, seed)
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "notes.txt").write_text("not an adapter")
    with serving(models_dir, adapters=str(tmp_path)) as client:
        assert client.get("/props").json()["adapters"] == ["broken.safetensors", "peft-style"]
        for name in ("notes.txt", "../broken.safetensors", str(tmp_path / "peft-style")):
            r = client.post("/synth", json={**SONG, "adapter": name, "adapter_scale": 0.5})
            assert r.status_code == 400 and r.json()["error"].startswith("adapter: no adapter named"), (name, r.text)
        # A request may wear the folder's adapter at its own scale: the Python API's song with
        # that LoRA merged at that scale (run time on the server, merged here: one result).
        worn = _latents(client, {**SONG, "seed": seed, "adapter": "peft-style", "adapter_scale": 0.7})
        want = ace.Synthesizer(models_dir, n_threads=1, loras=[(str(tmp_path / "peft-style"), 0.7)])(
            _song_request(), seed=seed, shift=3.0).latents
        assert cosine(worn, want) >= 0.99999
        assert np.linalg.norm(worn - want) / np.linalg.norm(want) <= 1e-4  # merged vs run-time sums: float noise
        plain = _latents(client, {**SONG, "seed": seed})  # the next request without: the adapter is off again
        assert cosine(plain, synthesizer(_song_request(), seed=seed, shift=3.0).latents) >= 0.99999
        assert cosine(plain, worn) < 0.9999
        # A broken adapter file fails its own job, naming the file; the server goes on.
        job = client.post("/synth", json={**SONG, "adapter": "broken.safetensors"}).json()["id"]
        status = wait(client, job)
        assert status["status"] == "failed" and "broken.safetensors" in status.get("error", ""), status
        assert wait(client, submit(client))["status"] == "done"
    with serving(models_dir) as client:
        r = client.post("/synth", json={**SONG, "adapter": "peft-style"})
        assert r.status_code == 400 and r.json()["error"].startswith("adapter: this server has no adapters")
    from acestep_ggml.errors import InputError

    with pytest.raises(InputError, match="--adapters"):
        create_app(ServerConfig(models=str(models_dir), adapters=str(tmp_path / "nowhere")))


# -- progress ---------------------------------------------------------------------------------------
def test_events_report_each_stage_and_a_rising_percentage(api):
    job = submit(api, inference_steps=6)
    events = []
    with api.stream("GET", "/job/events", params={"id": job}) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        for line in s.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
    assert events[-1]["state"] == "done" and events[-1]["progress"] == 100
    percents = [e["progress"] for e in events]
    assert percents == sorted(percents)
    # Events carry the newest state when the stream wakes, so a short stage may pass unseen; the order holds.
    stages = list(dict.fromkeys(e["stage"] for e in events if e["stage"]))
    order = ["text", "condition", "dit", "vae"]
    assert "dit" in stages and stages == sorted(stages, key=order.index)
    steps = [e["done"] for e in events if e["stage"] == "dit"]
    assert steps == sorted(steps) and all(e["total"] == 6 for e in events if e["stage"] == "dit")


# -- bad input: 4xx naming the field, and the server stays up ---------------------------------------
@pytest.mark.parametrize("body, status, words", [
    (b'{"caption": "x", ', 400, "invalid JSON"),
    (b"[]", 400, "empty request"),
    (b'"just a string"', 400, "body"),
    (b'{"caption": "x", "bpm": NaN}', 400, "bpm"),
    (json.dumps({**SONG, "tempo": 90}).encode(), 400, "tempo"),
    (json.dumps({**SONG, "bpm": "fast"}).encode(), 400, "bpm"),
    (json.dumps({**SONG, "duration": 601}).encode(), 400, "duration"),
    (json.dumps({**SONG, "seed": 2**32}).encode(), 400, "seed"),
    (json.dumps({**SONG, "caption": ""}).encode(), 400, "caption"),
    (json.dumps({**SONG, "output_format": "mp3"}).encode(), 400, "output_format"),
    (json.dumps({**SONG, "solver": "rk4"}).encode(), 400, "solver"),
    (json.dumps({**SONG, "solver": "stork4", "stork_substeps": 1}).encode(), 400, "stork_substeps"),
    (json.dumps({**SONG, "dcw_scaler": -0.1}).encode(), 400, "dcw_scaler"),
    (json.dumps({**SONG, "dcw_high_scaler": "high"}).encode(), 400, "dcw_high_scaler"),
    (json.dumps({**SONG, "dcw_mode": "band", "dcw_scaler": 0.1}).encode(), 400, "dcw_mode"),
    (json.dumps({**SONG, "lm_mode": "dream"}).encode(), 400, "lm_mode"),
    (json.dumps({**SONG, "adapter": "singer.safetensors"}).encode(), 400, "adapter: this server has no adapters"),
    (json.dumps({**SONG, "cover_noise_strength": 0.5}).encode(), 400, "cover_noise_strength"),
    (json.dumps({**SONG, "latent_rescale": 0.9}).encode(), 400, "latent_rescale"),
    (json.dumps({**SONG, "task_type": "cover-nofsq"}).encode(), 400, "audio"),
    (json.dumps({**SONG, "task_type": "repaint"}).encode(), 400, "audio"),
    (json.dumps({**SONG, "synth_model": "nope.gguf"}).encode(), 400, "synth_model"),
    (json.dumps({**SONG, "audio_codes": "1,2,x"}).encode(), 400, "audio_codes"),
    (json.dumps({**SONG, "custom_timesteps": "0.5,0.9,0"}).encode(), 400, "custom_timesteps"),
    (json.dumps({**SONG, "guidance_scale": 0.5}).encode(), 400, "guidance_scale"),
    (json.dumps([{**SONG, "synth_batch_size": 5}, {**SONG, "synth_batch_size": 5}]).encode(), 400, "synth_batch_size"),
    (b"[" * 100000, 400, "invalid JSON"),
])
def test_bad_synth_requests_get_a_4xx_naming_the_problem(api, body, status, words):
    r = api.post("/synth", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    assert api.get("/health").json() == {"status": "ok"}


def test_bad_requests_elsewhere_and_the_server_still_works(api):
    assert api.post("/lm", content=b"{nope", headers={"Content-Type": "application/json"}).status_code == 400
    r = api.post("/lm", json={**SONG, "duration": 5})  # the LM writes 10..600 s
    assert r.status_code == 400 and "duration" in r.json()["error"]
    r = api.post("/lm", json={**SONG, "duration": 10, "keyscale": "H major"})
    assert r.status_code == 400 and "keyscale" in r.json()["error"]
    assert api.get("/job").status_code == 400  # no id
    assert api.get("/job", params={"id": "0123456789abcdef"}).status_code == 404
    assert api.post("/job", params={"id": "0123456789abcdef", "cancel": "1"}).status_code == 404
    r = api.post("/understand", files={"audio": ("a.wav", b"RIFF")})
    assert r.status_code == 400 and r.json()["error"].startswith("audio: cannot decode")
    assert api.post("/understand", json={}).status_code == 400  # multipart only, as acestep.cpp
    r = api.post("/understand", files={"request": (None, "{}")})
    assert r.status_code == 400 and "'audio' or 'src_latents'" in r.json()["error"]
    r = api.post("/understand", files={"src_latents": ("z", b"\0" * 100)})
    assert r.status_code == 400 and "src_latents" in r.json()["error"]
    r = api.post("/understand", files={"audio": ("a.wav", wav_bytes(np.zeros((2, RATE), np.float32), RATE)),
                                       "request": (None, json.dumps({"lm_model": "nope"}))})
    assert r.status_code == 400 and "lm_model" in r.json()["error"]
    r = api.post("/lm", json={**SONG, "lm_mode": "inspire", "caption": " "})
    assert r.status_code == 400 and "caption" in r.json()["error"]
    r = api.post("/synth", files={"request": (None, json.dumps({**SONG, "task_type": "cover"})),
                                  "audio": ("a.wav", b"not audio at all")})
    assert r.status_code == 400 and r.json()["error"].startswith("audio: cannot decode")
    r = api.post("/synth", files={"request": (None, json.dumps(SONG)), "src_latents": ("z", b"\0" * 256)})
    assert r.status_code == 400 and "src_latents" in r.json()["error"]
    job = submit(api)
    assert wait(api, job)["status"] == "done"


# -- jobs that fail, and the next one --------------------------------------------------------------
def test_a_job_failing_late_is_failed_with_its_message_and_the_next_runs(api):
    source = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 2 * RATE)).astype(np.float32)
    request = {**SONG, "task_type": "repaint", "repainting_start": 30, "repainting_end": 40}
    r = api.post("/synth", files={"request": (None, json.dumps(request)), "audio": ("src.wav", wav_bytes(source, RATE))})
    status = wait(api, r.json()["id"])
    assert status["status"] == "failed" and "outside the 2.00 s of source audio" in status["error"]
    assert api.get("/job", params={"id": r.json()["id"], "result": "1"}).status_code == 404
    assert wait(api, submit(api))["status"] == "done"


def test_an_unexpected_error_fails_the_job_not_the_server(models_dir, monkeypatch):
    real = engine.Engine.run_synth
    calls = []

    def out_of_memory_once(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("cannot allocate 40 GiB")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(engine.Engine, "run_synth", out_of_memory_once)
    with serving(models_dir) as client:
        status = wait(client, submit(client))
        assert status["status"] == "failed" and status["error"] == "MemoryError: cannot allocate 40 GiB"
        assert wait(client, submit(client))["status"] == "done"


def test_a_song_that_cannot_fit_in_memory_fails_its_job_before_any_work(api, monkeypatch):
    # acestep_ggml/memory.py: the need is checked before any model loads; MemoryRefused is of the
    # family, so the job fails with its message and the server goes on.
    monkeypatch.setenv("ACESTEP_GGML_MEMORY_LIMIT", "1M")
    status = wait(api, submit(api))
    assert status["status"] == "failed" and "needs about" in status["error"] and "1 MiB free" in status["error"]
    monkeypatch.delenv("ACESTEP_GGML_MEMORY_LIMIT")
    assert wait(api, submit(api))["status"] == "done"


# -- cancel and the queue ---------------------------------------------------------------------------
def test_cancel_stops_a_running_job_at_its_next_step_and_a_waiting_one_at_once(api):
    running = api.post("/synth", json=slow_song()).json()["id"]
    waiting = submit(api)
    wait_for(api, running, lambda s: s["stage"] == "dit" and s["done"] >= 1)
    assert api.get("/job", params={"id": waiting}).json()["position"] == 1
    assert api.post("/job", params={"id": waiting, "cancel": "1"}).json() == {"status": "cancelled"}
    assert api.get("/job", params={"id": waiting}).json()["status"] == "cancelled"
    assert api.post("/job", params={"id": running, "cancel": "1"}).json() == {"status": "cancelled"}
    status = wait(api, running, timeout=30)
    assert status["status"] == "cancelled" and status["done"] < 60
    assert api.post("/job", params={"id": running}).status_code == 400  # no action given
    assert wait(api, submit(api))["status"] == "done"


def test_a_full_queue_answers_429_and_takes_jobs_again_once_it_drains(models_dir):
    with serving(models_dir, max_queue=1) as client:
        running = client.post("/synth", json=slow_song()).json()["id"]
        wait_for(client, running, lambda s: s["state"] == "running")
        waiting = submit(client)
        r = client.post("/synth", json=SONG)
        assert r.status_code == 429 and r.headers["retry-after"] and "queue is full" in r.json()["error"]
        client.post("/job", params={"id": running, "cancel": "1"})
        assert wait(client, waiting)["status"] == "done"
        assert wait(client, submit(client))["status"] == "done"


def test_the_last_n_results_are_kept(models_dir):
    with serving(models_dir, keep_results=2) as client:
        jobs = [submit(client, duration=1) for _ in range(3)]
        for job in jobs:
            wait(client, job)
        assert client.get("/job", params={"id": jobs[0]}).status_code == 404
        assert [j["id"] for j in client.get("/jobs").json()] == jobs[:0:-1]


def test_models_stay_loaded_between_jobs_and_unload_when_idle(models_dir):
    with serving(models_dir, idle_unload=1.0) as client:
        assert wait(client, submit(client))["status"] == "done"
        assert client.get("/props").json()["devices"][0]["loaded"]
        deadline = time.monotonic() + 10
        while client.get("/props").json()["devices"][0]["loaded"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.get("/props").json()["devices"][0]["loaded"] == []
        assert wait(client, submit(client))["status"] == "done"  # and they load again


# -- security ----------------------------------------------------------------------------------------
def test_api_key_guards_every_route_but_health_and_the_page(models_dir):
    with serving(models_dir, api_key="s3cret") as client:
        assert client.get("/health").status_code == 200
        assert client.get("/").status_code == 200 and client.get("/static/app.js").status_code == 200
        for method, path in [("GET", "/props"), ("GET", "/jobs"), ("POST", "/synth"), ("GET", "/openapi.json"),
                             ("GET", "/job?id=0123456789abcdef"), ("GET", "/logs")]:
            r = client.request(method, path, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
            assert client.request(method, path.replace("/logs", "/props")).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert client.get("/props", headers=ok).status_code == 200
        job = client.post("/synth", json=SONG, headers=ok).json()["id"]
        assert client.get("/job", params={"id": job}, headers=ok).status_code == 200
        r = client.post("/release_task", json={"prompt": "x", "audio_format": "wav", "ai_token": "s3cret"})
        assert r.status_code == 200  # upstream's clients send the key in the body
        assert client.post("/release_task", json={"prompt": "x", "audio_format": "wav"}).status_code == 401


def test_request_bodies_over_the_limit_get_413(models_dir):
    with serving(models_dir, max_body=64 * 1024) as client:
        big = json.dumps({**SONG, "lyrics": "la " * 30000})
        assert client.post("/synth", content=big, headers={"Content-Type": "application/json"}).status_code == 413

        def chunks():  # no Content-Length: counted as it streams
            for _ in range(20):
                yield b"x" * 8192

        r = client.post("/synth", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        assert client.get("/health").status_code == 200


def test_cors_is_off_unless_an_origin_is_configured(models_dir, api):
    preflight = {"Origin": "http://example.com", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in api.options("/synth", headers=preflight).headers
    with serving(models_dir, cors_origins=["http://example.com"]) as client:
        r = client.options("/synth", headers=preflight)
        assert r.headers["access-control-allow-origin"] == "http://example.com"


def test_v1_audio_serves_job_results_only_never_files(api):
    for path in ("/etc/passwd", "../../etc/passwd", "0123456789abcdef-0.wav", f"{os.sep}tmp"):
        assert api.get("/v1/audio", params={"path": path}).status_code == 404


# -- the page, the spec, the logs, /props -------------------------------------------------------------
def test_the_page_and_its_files_are_served(api):
    r = api.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert '<form id="compose"' in r.text
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        r = api.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]


def test_openapi_describes_the_api(api):
    spec = api.get("/openapi.json").json()
    for path in ("/lm", "/synth", "/vae", "/job", "/job/events", "/props", "/health", "/release_task"):
        assert path in spec["paths"], path
    assert "timesignature" in spec["components"]["schemas"]["AceRequest"]["properties"]


def test_props_lists_models_and_defaults(api):
    props = api.get("/props").json()
    assert props["models"]["dit"] == ["acestep-v15-turbo-F32.gguf"] and props["models"]["lm"]
    assert props["default"]["timesignature"] == "" and props["default"]["output_format"] == "mp3"
    assert props["sample_rate"] == RATE and props["output_formats"] == ["wav16", "wav24", "wav32"]


def test_logs_stream_the_server_log(api):
    submit(api)
    with api.stream("GET", "/logs") as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        for line in s.iter_lines():
            if line.startswith("data:") and "job" in line:
                break


# -- the VAE and upstream's face ----------------------------------------------------------------------
def test_vae_encodes_audio_to_latents_and_decodes_them_back(api):
    audio = np.random.default_rng(1).uniform(-0.5, 0.5, (2, 2 * RATE)).astype(np.float32)
    job = api.post("/vae", files={"audio": ("a.wav", wav_bytes(audio, RATE))}).json()["id"]
    assert wait(api, job)["status"] == "done"
    res = api.get("/job", params={"id": job, "result": "1"})
    assert res.headers["content-type"] == "application/octet-stream" and len(res.content) == 2 * LPS * 64 * 4
    job = api.post("/vae", files={"src_latents": ("z.vae", res.content),
                                  "request": (None, json.dumps({"output_format": "wav32"}))}).json()["id"]
    assert wait(api, job)["status"] == "done"
    res = api.get("/job", params={"id": job, "result": "1"})
    decoded, rate = read_wav(res.content)
    assert res.headers["content-type"] == "audio/wav" and rate == RATE and decoded.shape == (2, 2 * RATE)
    r = api.post("/vae", files={"src_latents": ("z.vae", b"\0" * 100)})
    assert r.status_code == 400 and "src_latents" in r.json()["error"]


def test_upstream_release_task_query_result_and_audio(api):
    r = api.post("/release_task", json={"prompt": SONG["caption"], "lyrics": "la", "audio_duration": 3,
                                        "bpm": 100, "audio_format": "wav", "use_random_seed": False, "seed": 4})
    body = r.json()
    assert r.status_code == 200 and body["code"] == 200 and body["error"] is None
    task = body["data"]["task_id"]
    assert body["data"]["status"] == "queued" and body["data"]["queue_position"] >= 0
    wait(api, task)
    data = api.post("/query_result", json={"task_id_list": json.dumps([task, "feedfeedfeedfeed"])}).json()["data"]
    assert [d["status"] for d in data] == [1, 0]
    item = json.loads(data[0]["result"])[0]
    assert item["metas"]["bpm"] == 100 and item["metas"]["duration"] == 3
    audio = api.get(item["file"])
    assert audio.status_code == 200 and read_wav(audio.content)[0].shape == (2, 3 * RATE)
    # thinking: the LM writes the codes first, then the synth stage renders them (one job)
    r = api.post("/release_task", json={"caption": SONG["caption"], "thinking": True, "duration": 10, "bpm": 90,
                                        "keyscale": "A minor", "timesignature": 4, "audio_format": "wav"})
    status = wait(api, r.json()["data"]["task_id"])
    assert status["status"] == "done" and status["kind"] == "generate"
    assert read_wav(api.get("/job/audio", params={"id": status["id"]}).content)[0].shape == (2, 10 * RATE)
    r = api.post("/release_task", json={"prompt": "x", "src_audio_path": "/etc/passwd", "audio_format": "wav"})
    assert r.status_code == 400 and "src_audio_path" in r.json()["error"]
    r = api.post("/release_task", data={"prompt": "x", "audio_format": "wav", "task_type": "cover"},
                 files={"src_audio": ("s.wav", wav_bytes(np.zeros((2, RATE), np.float32) + 0.1, RATE))})
    assert r.status_code == 200, r.text
    assert wait(api, r.json()["data"]["task_id"])["status"] == "done"


# -- the command ---------------------------------------------------------------------------------------
def test_serve_command_listens_on_loopback_and_stops_on_ctrl_c(models_dir):
    httpx = need("httpx", "pip install httpx")
    proc = subprocess.Popen([sys.executable, "-m", "acestep_ggml", "serve", "--models", str(models_dir),
                             "--port", "0", "--threads", "1"], stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, "the server exited before listening"
            m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
            url = m and m.group(1)
        assert url, "no listening line"
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}
        assert httpx.get(f"{url}/").status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0
