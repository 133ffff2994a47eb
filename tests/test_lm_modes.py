"""The LM's other modes (understand, inspire, format) and cover-nofsq: constrained decoding
keeps the answer's structure whatever the model says, malformed answers end in upstream's
fallbacks or a named error, and the CLI writes exchange directories `synth` renders again.
The prompts and parsing against the original package's own code: tests/test_fidelity.py."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import fresh_seed
from test_fsm import _constraints, _tok

import acestep_ggml as ace
from acestep_ggml import constants, fsm, lm_modes
from acestep_ggml.errors import ConstraintError, InputError
from acestep_ggml.exchange import read_request
from acestep_ggml.token_sampling import sample

EOS = 151645


def _drive(f, rng, text_tokens=20):
    """Random logits over the vocabulary; once in the free text, EOS after ``text_tokens``."""
    out, in_text = [], 0
    while not f.done:
        ids = f.allowed()
        if f._steps[f._step][0] == "text":
            in_text += 1
            if in_text > text_tokens:
                ids = np.array([EOS])
        logits = rng.normal(size=ids.size).astype(np.float32) * 3
        tok = int(ids[np.argmax(logits)]) if f.greedy else int(ids[sample(logits, rng, 0.85, None, None)])
        f.advance(tok)
        out.append(tok)
    return out


@pytest.mark.parametrize("mode", ["understand", "inspire", "format"])
def test_understand_phase_with_random_logits_parses_into_a_request(mode):
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    given = {"language": "ja"} if mode == "inspire" else {"bpm": "128", "keyscale": "C major"} if mode == "format" else {}
    text_ids = np.arange(constants.FIRST_AUDIO_CODE)
    f = fsm.CotFSM(_constraints(), given, understand=True, text_ids=text_ids, eos=EOS)
    text = _tok().decode(_drive(f, rng))
    assert text.startswith("<think>\nbpm:") and "\ngenres:" in text and "</think>" in text, f"seed {seed}: {text!r}"
    assert "<|audio_code_" not in text
    meta = lm_modes.parse_answer(text, mode)
    assert {"bpm", "duration", "keyscale", "language", "timesignature"} <= set(meta), f"seed {seed}: {meta}"
    req = lm_modes.to_request(meta)
    assert req.caption and 30 <= req.bpm <= 300 and 10 <= req.duration <= 600, f"seed {seed}: {req}"
    assert req.keyscale in constants.KEYSCALES and req.language in constants.LANGUAGES
    assert str(req.timesignature) in constants.TIMESIGNATURES
    for k, v in given.items():
        assert str(getattr(req, k)) == v, f"seed {seed}: given {k}={v} came out {getattr(req, k)}"


def test_format_with_a_language_leaves_the_language_line_out():
    f = fsm.CotFSM(_constraints(), {"language": "en"}, understand=True, skip_language=True,
                   text_ids=np.arange(constants.FIRST_AUDIO_CODE), eos=EOS)
    text = _tok().decode(_drive(f, np.random.default_rng(fresh_seed())))
    assert "\nlanguage:" not in text and "\ntimesignature:" in text
    assert lm_modes.to_request(lm_modes.parse_answer(text, "format"), language="en").language == "en"


def test_the_fsm_rejects_audio_codes_in_the_free_text():
    f = fsm.CotFSM(_constraints(), {}, understand=True, text_ids=np.arange(constants.FIRST_AUDIO_CODE), eos=EOS)
    _drive(f, np.random.default_rng(0), text_tokens=0)  # runs through to EOS
    f = fsm.CotFSM(_constraints(), {}, understand=True, text_ids=np.arange(constants.FIRST_AUDIO_CODE), eos=EOS)
    while f._steps[f._step][0] != "text":
        f.advance(int(f.allowed()[0]))
    with pytest.raises(ConstraintError, match="not allowed in the text"):
        f.advance(constants.FIRST_AUDIO_CODE + 7)


def test_malformed_answers_fall_back_or_name_the_problem():
    rng = np.random.default_rng(fresh_seed())
    alphabet = list("<>/|:\n \tabc#123") + ["<think>", "</think>", "caption:", "bpm:", "<|im_end|>", "# Lyric\n"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 40))))
        for mode in lm_modes.MODES:
            meta = lm_modes.parse_answer(text, mode)
            try:
                req = lm_modes.to_request(meta)
            except ConstraintError as e:
                assert "no caption" in str(e)
                continue
            assert req.bpm is None or 30 <= req.bpm <= 300
            assert req.timesignature is None or str(req.timesignature) in constants.TIMESIGNATURES
    odd = "<think>\nbpm: 1000\ncaption: x\nduration: 5.5\nkeyscale: H major\nlanguage: xx\ntimesignature: 3/4\n</think>"
    req = lm_modes.to_request(lm_modes.parse_answer(odd, "understand"))
    assert (req.caption, req.bpm, req.duration, req.keyscale, req.language, req.timesignature) == \
        ("x", None, None, None, None, 3)
    with pytest.raises(ConstraintError, match="no caption"):
        lm_modes.to_request(lm_modes.parse_answer("", "understand"))
    with pytest.raises(InputError, match="unknown LM mode"):
        lm_modes.parse_answer("x", "dream")
    with pytest.raises(InputError, match="no.*codes|none were given"):
        lm_modes.understand_prompt([])
    with pytest.raises(InputError, match="outside"):
        lm_modes.understand_prompt([64000])


# -- end to end on tiny random models -----------------------------------------------------
def _cli(*args, timeout=900):
    r = subprocess.run([sys.executable, "-m", "acestep_ggml", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def song(synth_models, tmp_path_factory):
    """A 12 s song file at the tiny VAE's rate."""
    rate = 200
    t = np.arange(12 * rate) / rate
    wave = np.stack([np.sin(2 * np.pi * 7 * t), np.cos(2 * np.pi * 5 * t)]).astype(np.float32) * 0.5
    path = tmp_path_factory.mktemp("song") / "song.wav"
    ace.write_audio(path, wave, rate)
    return path


def test_understand_cli_writes_a_directory_synth_renders(synth_models, song, tmp_path):
    models = synth_models[2]["f32"]
    out = tmp_path / "understood"
    _cli("understand", song, "--models", models, "--output-dir", out, "--seed", 3, "--threads", 1,
         "--max-new-tokens", 700, "--quiet")
    req = read_request(out)
    assert req.caption.strip() and (out / "lyrics").exists()
    assert 30 <= req.bpm <= 300 and req.keyscale in constants.KEYSCALES and req.language in constants.LANGUAGES
    assert 10 <= int((out / "duration").read_text()) <= 600
    assert len(req.codes) == 12 * constants.CODES_PER_SECOND  # 12 s of 25 Hz latents in 5-frame windows
    _cli("synth", "--input-dir", out, "--models", models, "-o", tmp_path / "again.wav", "--seed", 1,
         "--steps", 2, "--threads", 1, "--quiet")
    assert (tmp_path / "again.wav").stat().st_size > 0
    # The same codes from a file give the same answer (same seed).
    (tmp_path / "codes").write_text(",".join(map(str, req.codes)))
    _cli("understand", "--codes", tmp_path / "codes", "--models", models, "--output-dir", tmp_path / "u2",
         "--seed", 3, "--threads", 1, "--max-new-tokens", 700, "--quiet")
    assert read_request(tmp_path / "u2") == req


@pytest.mark.parametrize("mode", ["inspire", "format"])
def test_lm_modes_cli_write_caption_lyrics_and_metadata(synth_models, tmp_path, mode):
    out = tmp_path / mode
    _cli("lm", "--lm-mode", mode, "--models", synth_models[2]["f32"], "--caption", "a soft love song",
         "--lyrics", "[Verse]\nla la", "--output-dir", out, "--seed", 5, "--threads", 1, "--max-new-tokens", 700,
         "--quiet", *(["--instrumental"] if mode == "inspire" else ["--bpm", 99]))
    req = read_request(out)
    assert req.caption.strip() and (out / "lyrics").exists() and req.codes is None
    assert 30 <= req.bpm <= 300 and req.keyscale in constants.KEYSCALES
    if mode == "format":
        assert req.bpm == 99  # given: forced into the chain of thought


def test_understand_rejects_silence_and_ambiguous_input(synth_models, tmp_path):
    pipe = ace.Pipeline(synth_models[2]["f32"], n_threads=1)
    with pytest.raises(InputError, match="silent"):
        pipe.understand(np.zeros((2, 400), dtype=np.float32))
    with pytest.raises(InputError, match="exactly one"):
        pipe.understand()
    with pytest.raises(InputError, match="outside"):
        pipe.understand(codes=[70000])


def test_cover_nofsq_takes_the_source_latents_as_context(synth_models):
    """cover-nofsq (upstream PR #1142, acestep.cpp run_cover_nofsq): the DiT's context is the
    source's own latents with a mask of ones; cover's is the 5 Hz round trip of them."""
    from test_tasks import random_audio

    from acestep_ggml import Request, Synthesizer

    synth = Synthesizer(synth_models[2]["f32"], keep_loaded=True)
    src = random_audio(np.random.default_rng(fresh_seed("input")), 2.0)
    run = lambda task, **kw: synth(Request(caption="x", task=task, src_audio=src, **kw), steps=1, seed=4,  # noqa: E731
                                   keep_stages=True).stages
    raw, cover = run("cover-nofsq"), run("cover")
    np.testing.assert_array_equal(raw["context"][:, :64], raw["src_latents"])
    np.testing.assert_array_equal(raw["context"][:, 64:], 1.0)
    assert "codes" not in raw and "codes" in cover
    assert not np.allclose(cover["context"][:, :64], cover["src_latents"])
    blended = run("cover-nofsq", audio_cover_strength=0.3)
    assert "enc_hidden_non_cover" in blended  # the text2music condition after the cover steps, as cover


def test_generate_with_inspire_renders_the_lms_song(synth_models, tmp_path):
    """`generate --lm-mode inspire`: the LM writes a song from the query, then its codes (the
    duration the user gave kept), then the synth stage renders it."""
    out = tmp_path / "song.wav"
    _cli("generate", "--lm-mode", "inspire", "--caption", "a soft love song", "--duration", 10, "--models",
         synth_models[2]["f32"], "-o", out, "--seed", 2, "--steps", 1, "--threads", 1, "--quiet")
    wave, rate = ace.read_audio(out)
    assert wave.shape[-1] == 10 * rate
