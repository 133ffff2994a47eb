"""The web page in a real browser: Playwright driving Debian's chromium against the server on
loopback.  It fills the form, submits, watches the progress bar move with the job's events, and
reads in the page a playable song of the requested duration; the job list cancels a job.  A
screenshot of each viewport is kept (ACESTEP_GGML_ARTIFACTS, else build/test-artifacts)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from _server import live_server, need, need_file

need("fastapi", "pip install 'acestep-ggml[server]'")
sync_api = need("playwright.sync_api", "pip install playwright")
CHROMIUM = "/usr/bin/chromium"

from acestep_ggml.server.app import ServerConfig, create_app  # noqa: E402

# Browsers decode audio from 3 kHz up (Chromium's media limits); the tiny synth models make 200 Hz.
# Their DiT and text encoder, with a tiny VAE at 4 kHz (hop 8: 500 latents per second).
PAGE_RATE = 4000
SECONDS = 3
ARTIFACTS = Path(os.environ.get("ACESTEP_GGML_ARTIFACTS", Path(__file__).parents[1] / "build" / "test-artifacts"))


@pytest.fixture(scope="module")
def page_models(synth_models, tmp_path_factory):
    from _vae_gguf import make_reference, write_gguf
    from conftest import SYNTH_VAE

    _, _, folders, seed = synth_models
    folder = tmp_path_factory.mktemp("page-models")
    for f in folders["f32"].glob("*.gguf"):
        if not f.name.startswith("vae"):
            (folder / f.name).symlink_to(f)
    write_gguf(make_reference(dict(SYNTH_VAE, sampling_rate=PAGE_RATE), seed), folder / "vae-F32.gguf")
    return folder


@pytest.fixture(scope="module")
def browser():
    need_file(CHROMIUM, "apt-get install chromium (Playwright's own browser download is not used)")
    with sync_api.sync_playwright() as p:
        # --no-sandbox: CI runs as root; autoplay: play() without a click, to check the audio plays.
        # Without LD_PRELOAD: under scripts/sanitize.sh the preloaded libasan would reach the browser,
        # which is not ours, and it then never starts (Playwright's launch times out).
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        b = p.chromium.launch(executable_path=CHROMIUM, env=env,
                              args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        yield b
        b.close()


def test_page_makes_a_song_shows_progress_and_plays_it(page_models, browser):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with live_server(create_app(ServerConfig(models=str(page_models), n_threads=1))) as url:
        # bypass_csp: Playwright evaluates its checks as strings, which the page's policy forbids.
        context = browser.new_context(viewport={"width": 390, "height": 844}, bypass_csp=True)
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_function("document.querySelector('#format').options.length > 0")
        assert "4000 Hz" in page.text_content("#server")

        page.fill("#caption", "warm analog pads, slow, dreamy")
        page.fill("#lyrics", "[Verse]\nla la la")
        page.fill("#duration", str(SECONDS))
        page.fill("#bpm", "96")
        page.select_option("#timesignature", "4")
        page.fill("#keyscale", "D minor")
        page.fill("#seed", "21")
        page.fill("#steps", "8")
        page.select_option("#solver", "dpm3m")
        page.uncheck("#use-lm")  # the LM's codes are 25 Hz latents; this VAE runs at 500
        posted = []
        page.on("request", lambda r: posted.append(r.post_data) if r.url.endswith("/synth") else None)
        page.click("#generate")
        page.wait_for_function("document.querySelector('#waveform').dataset.seconds", timeout=180_000)

        log = page.evaluate("window.progressLog")
        assert log == sorted(log) and log[-1] == 100, log
        assert len(posted) == 1 and json.loads(posted[0])["solver"] == "dpm3m"  # the solver the form chose
        assert len([p for p in log if 0 < p < 100]) >= 5, log  # the bar moved through the job, not in one jump
        assert page.evaluate("document.querySelector('#progress').value") == 100

        decoded = float(page.get_attribute("#waveform", "data-seconds"))
        assert abs(decoded - SECONDS) <= 1 / 500, decoded  # within one latent frame
        page.wait_for_function("document.querySelector('#player').readyState >= 1")
        assert abs(page.evaluate("document.querySelector('#player').duration") - SECONDS) <= 0.01
        assert page.evaluate("document.querySelector('#player').play().then(() => 'playing', e => String(e))") \
            == "playing"
        page.wait_for_function("document.querySelector('#player').currentTime > 0.2", timeout=10_000)
        assert page.get_attribute("#download", "download").endswith(".wav")
        page.wait_for_selector("#jobs li .state.done")
        assert page.is_hidden("#message")
        page.evaluate("window.scrollTo(0, 0)")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
        page.screenshot(path=str(ARTIFACTS / "server-page-phone.png"), full_page=True)
        page.set_viewport_size({"width": 1280, "height": 900})
        page.screenshot(path=str(ARTIFACTS / "server-page-desktop.png"), full_page=True)
        assert not errors, errors
        context.close()


def test_page_under_a_prefix_cancels_a_running_job_from_its_list(page_models, browser):
    """Mounted under /music/, as behind a proxy that strips the prefix: the page's URLs are relative."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    app = create_app(ServerConfig(models=str(page_models), n_threads=1))
    proxied = Starlette(routes=[Mount("/music", app)], lifespan=lambda _: app.router.lifespan_context(app))
    with live_server(proxied) as url:
        context = browser.new_context(bypass_csp=True)
        page = context.new_page()
        page.goto(url + "/music/")
        page.wait_for_function("document.querySelector('#format').options.length > 0")
        page.fill("#caption", "a long one")
        page.fill("#duration", "30")
        page.fill("#steps", "200")
        page.uncheck("#use-lm")
        page.click("#generate")
        cancel = page.locator("#jobs li button", has_text="Cancel")
        cancel.first.wait_for(timeout=60_000)
        time.sleep(0.2)
        cancel.first.click()
        page.wait_for_selector("#message:not([hidden])", timeout=60_000)
        assert "cancelled" in page.text_content("#message")
        page.wait_for_selector("#jobs li .state.cancelled", timeout=10_000)
        context.close()


def test_page_understands_an_uploaded_song_and_fills_the_form(page_models, browser, tmp_path, monkeypatch):
    """The understand box: an uploaded song goes to POST /understand; the LM's reading fills the form."""
    import numpy as np
    import soundfile as sf

    from acestep_ggml.server import engine

    monkeypatch.setattr(engine, "LM_MODE_MAX_NEW_TOKENS", 48)  # the random tiny LM seldom ends its answer
    song = tmp_path / "song.wav"
    sf.write(song, np.random.default_rng(3).uniform(-0.5, 0.5, (2 * PAGE_RATE, 2)).astype(np.float32), PAGE_RATE)
    with live_server(create_app(ServerConfig(models=str(page_models), n_threads=1))) as url:
        context = browser.new_context(bypass_csp=True)
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_function("document.querySelector('#format').options.length > 0")
        page.set_input_files("#understand-audio", str(song))
        page.click("#understand")
        page.wait_for_function("document.querySelector('#stage').textContent.includes('form holds')",
                               timeout=180_000)
        assert page.is_hidden("#message"), page.text_content("#message")
        assert page.input_value("#caption").strip()  # the LM's caption (random weights: any text)
        assert page.evaluate("window.progressLog").pop() == 100
        page.wait_for_selector("#jobs li .state.done")
        assert not errors, errors
        context.close()
