"""The six task types and reference-audio timbre against diffusers' AceStepPipeline on tiny random
models and fresh random audio (same initial noise, VAE posterior at its mean on both sides), stage
by stage; the audio tokenizer's codes against diffusers' AceStepAudioTokenizer; the instructions;
the exchange files and CLI flags; and a clear error, with nothing written, for each bad input.

Random inputs come from ACESTEP_TEST_SEED when set (to replay a failure), else a fresh seed that
is printed."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from _synth_reference import CAPTION, LYRICS, STAGES, cosine, reference_run
from conftest import fresh_seed
from diffusers import AceStepPipeline

from acestep_ggml import InputError
from acestep_ggml.exchange import ExchangeError, Request, read_request, write_request
from acestep_ggml.models import AudioTokenizer
from acestep_ggml.pipeline import Synthesizer
from acestep_ggml.tasks import TASKS, instruction

RATE, HOP = 200, 8  # the synth fixtures' tiny VAE: 25 latents per second as the real one


@pytest.fixture
def rng():
    seed = fresh_seed("input")
    return np.random.default_rng(seed)


def random_audio(rng, seconds: float) -> np.ndarray:
    """Stereo noise at the tiny VAE's rate; a length that is not a whole number of latent frames."""
    n = int(seconds * RATE) + int(rng.integers(1, HOP))
    return (0.5 * rng.standard_normal((2, n))).astype(np.float32)


def _outpaint_case(src, start, past_end):
    """Repaint from ``start`` (< 0) to ``past_end`` s after the source; diffusers gets the source
    padded and the window shifted, computed as the original handler does."""
    duration = src.shape[1] / RATE
    end = duration + past_end
    left, right = -start, end - duration
    padded = np.pad(src, ((0, 0), (int(left * RATE), int(right * RATE))))
    return ({"task": "repaint", "src_audio": src, "repainting_start": start, "repainting_end": end},
            {"task_type": "repaint", "src_audio": padded, "repainting_start": start + left, "repainting_end": end + left})


# Each case: our Request's task fields, diffusers' arguments for the same job (the outpainting case
# gives diffusers the padded source and the shifted window, as the original handler computes them).
CASES = {
    "text2music_timbre": lambda src, ref: (
        {"ref_audio": ref, "duration": 2}, {"reference_audio": ref, "audio_duration": 2.0}),
    "cover": lambda src, ref: (
        {"task": "cover", "src_audio": src}, {"task_type": "cover", "src_audio": src}),
    "cover_blend": lambda src, ref: (
        {"task": "cover", "src_audio": src, "audio_cover_strength": 0.6, "ref_audio": ref},
        {"task_type": "cover", "src_audio": src, "audio_cover_strength": 0.6, "reference_audio": ref}),
    "repaint": lambda src, ref: (
        {"task": "repaint", "src_audio": src, "repainting_start": 0.8, "repainting_end": 1.6},
        {"task_type": "repaint", "src_audio": src, "repainting_start": 0.8, "repainting_end": 1.6}),
    "repaint_outpaint": lambda src, ref: _outpaint_case(src, -0.6, 0.8),
    "extract": lambda src, ref: (
        {"task": "extract", "src_audio": src, "track_name": "vocals"},
        {"task_type": "extract", "src_audio": src, "track_name": "vocals"}),
    "lego": lambda src, ref: (
        {"task": "lego", "src_audio": src, "track_name": "guitar", "repainting_start": 0.4, "repainting_end": 2.0},
        {"task_type": "lego", "src_audio": src, "track_name": "guitar", "repainting_start": 0.4, "repainting_end": 2.0}),
    "complete": lambda src, ref: (
        {"task": "complete", "src_audio": src, "track_classes": ["drums", "bass"]},
        {"task_type": "complete", "src_audio": src, "complete_track_classes": ["drums", "bass"]}),
}


# Guided (base/SFT path): the cover blend comes after APG in diffusers, lego's window under guidance.
@pytest.mark.parametrize("case, guidance", [(c, 1.0) for c in CASES] + [("cover_blend", 7.0), ("lego", 7.0)],
                         ids=list(CASES) + ["cover_blend_guided", "lego_guided"])
def test_task_matches_diffusers_pipeline_f32(pipeline_models, rng, case, guidance):
    """Both DiT shapes (2B; XL with diffusers' timbre encoder patched to upstream's CLS token)."""
    models, _, folders, seed = pipeline_models
    src, ref = random_audio(rng, 2.6), random_audio(rng, 4.0)
    ours_fields, theirs = CASES[case](src, ref)
    their_src = theirs.get("src_audio")
    length = (their_src.shape[1] if their_src is not None else 2 * RATE) // HOP
    noise = rng.standard_normal((length, 64), dtype=np.float32)

    req = Request(caption=CAPTION, lyrics=LYRICS, bpm=120, keyscale="F# minor", timesignature=4, language="en",
                  **ours_fields)
    ours = Synthesizer(folders["f32"])(req, init_noise=noise, keep_stages=True, seed=0, posterior="mean",
                                       guidance=guidance).stages
    theirs = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in theirs.items()}
    ref_stages = reference_run(models, noise, theirs.pop("audio_duration", None), guidance=guidance,
                               posterior_mean=True, **theirs)

    names = STAGES + (["enc_hidden_non_cover"] if "enc_hidden_non_cover" in ref_stages else [])
    for k in names:
        assert ours[k].shape == ref_stages[k].shape, (k, ours[k].shape, ref_stages[k].shape)
    table = {k: cosine(ours[k], ref_stages[k]) for k in names}
    print(f"\n{case} stage 1 - cosine:", {k: f"{1 - v:.1e}" for k, v in table.items()})
    # The chunk mask must be exact, not merely close.
    np.testing.assert_array_equal(ours["context"][:, 64:], ref_stages["context"][:, 64:])
    # F32 on both sides: stages differ by summation order only, the source path adding the VAE
    # encoder and, for cover, the tokenizer's codes, which are exact (a code tipped by a rounding
    # edge would show here as a context cosine far below 1).
    bad = {k: v for k, v in table.items() if v < 0.9999}
    assert not bad, f"model seed {seed}: stages below 0.9999: {bad}"


def test_audio_tokenizer_codes_match_diffusers(synth_models, rng):
    models, _, folders, seed = synth_models
    tok = AudioTokenizer(next(folders["f32"].glob("*v15*.gguf")))
    t = int(rng.integers(20, 60)) * 5 + int(rng.integers(1, 5))  # a short last window: silence-padded
    latents = rng.standard_normal((t, 64), dtype=np.float32)
    ours = tok.tokenize(latents)
    ref_tok = models.audio_tokenizer
    silence = models.condition_encoder.silence_latent
    with torch.no_grad():
        _, indices = ref_tok.tokenize(torch.from_numpy(latents)[None], silence)
        # The quantizer's input before rounding, to tell a genuine mismatch from a value on a rounding edge.
        padded = torch.cat([torch.from_numpy(latents), silence[0, :(-t) % 5]])[None].reshape(1, -1, 5, 64)
        z = torch.nn.functional.linear(ref_tok.attention_pooler(ref_tok.audio_acoustic_proj(padded)),
                                       ref_tok.quantizer.project_in.weight, ref_tok.quantizer.project_in.bias)
    want = indices[0, :, 0].numpy()
    assert ours.shape == want.shape == (-(-t // 5),)
    levels = torch.tensor(ref_tok.quantizer.levels, dtype=torch.float32)
    soft = 1 + 1 / (levels - 1)
    bracket = ((levels - 1) * ((z / soft).tanh() * soft).clamp(-1, 1) + (levels - 1)) / 2 + 0.5
    edge = ((bracket - bracket.round()).abs() < 1e-4).any(-1)[0].numpy()
    differ = ours != want
    print(f"\n{len(want)} codes, {int(differ.sum())} differ, {int(edge.sum())} within 1e-4 of a rounding edge")
    # Codes are exact except where the reference's value sits on a rounding edge, where float
    # summation order may tip a digit either way.
    assert not np.any(differ & ~edge), f"model seed {seed}: codes differ at {np.flatnonzero(differ & ~edge)}"
    assert len(np.unique(want)) > 1, "degenerate test: every window gave the same code"


def test_posterior_sample_is_seeded_and_mean_is_the_mean(synth_models, rng):
    _, _, folders, _ = synth_models
    synth = Synthesizer(folders["f32"], keep_loaded=True)
    req = Request(caption="x", task="extract", src_audio=random_audio(rng, 1.0))
    run = lambda **kw: synth(req, steps=1, keep_stages=True, **kw).stages["src_latents"]
    mean = run(seed=1, posterior="mean")
    np.testing.assert_array_equal(mean, synth._model("vae").encode(req.src_audio))
    a, b, c = run(seed=1), run(seed=1), run(seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, mean)


# diffusers 0.42 has no cover-nofsq (its fallback is the text2music line); upstream's
# constants.py gives it the cover instruction (tests/test_fidelity.py checks that).
@pytest.mark.parametrize("task", [t for t in TASKS if t != "cover-nofsq"])
@pytest.mark.parametrize("track_name, track_classes", [(None, None), ("backing_vocals", ["drums", "Bass"])])
def test_instructions_match_diffusers(task, track_name, track_classes):
    want = AceStepPipeline._get_task_instruction(task_type=task, track_name=track_name,
                                                 complete_track_classes=track_classes)
    assert instruction(task, track_name, track_classes) == want


# -- exchange files and CLI flags -----------------------------------------------------

def test_exchange_task_files_round_trip_and_resolve_paths(tmp_path):
    ex = tmp_path / "ex"
    req = Request(caption="c", duration=30, task="lego", src_audio=str(tmp_path / "mix.wav"), ref_audio=str(tmp_path / "r.flac"),
                  repainting_start=-1.5, repainting_end=12.25, track_name="guitar", track_classes=["drums", "bass"],
                  audio_cover_strength=0.5)
    write_request(ex, req)
    assert read_request(ex) == req
    (ex / "src_audio").write_text("songs/mix.wav\n")
    assert read_request(ex).src_audio == str(ex / "songs" / "mix.wav")
    write_request(ex, Request(caption="again"))
    back = read_request(ex)
    assert (back.task, back.src_audio, back.track_classes, back.audio_cover_strength) == ("text2music", None, None, 1.0)


@pytest.mark.parametrize("files, message", [
    ({"task": "remix"}, "task: unknown task 'remix'"),
    ({"audio_cover_strength": "1.5"}, "audio_cover_strength: 1.5 is outside 0..1"),
    ({"audio_cover_strength": "strong"}, "audio_cover_strength: expected a number"),
    ({"repainting_start": "ten"}, "repainting_start: expected a number"),
])
def test_exchange_bad_task_files_raise_naming_the_file(tmp_path, files, message):
    (tmp_path / "caption").write_text("x")
    for k, v in files.items():
        (tmp_path / k).write_text(v)
    with pytest.raises(ExchangeError, match=message.replace(".", r"\.")):
        read_request(tmp_path)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "acestep_ggml", *map(str, args), "--quiet"],
                          check=False, capture_output=True, text=True)


def test_synth_cli_task_flags_run_a_repaint(synth_models, rng, tmp_path):
    import soundfile as sf

    _, _, folders, _ = synth_models
    src = tmp_path / "song.wav"
    sf.write(src, 0.5 * rng.standard_normal((2 * RATE, 2)), RATE, subtype="FLOAT")
    write_request(tmp_path / "ex", Request(caption=CAPTION, lyrics=LYRICS))
    out = tmp_path / "out.wav"
    # Outpainting: 1 s past the end of the 2 s source.
    r = _cli("synth", "--input-dir", tmp_path / "ex", "--models", folders["f32"], "-o", out, "--task", "repaint",
             "--src-audio", src, "--repaint", 1.0, 3.0, "--posterior", "mean", "--seed", 1)
    assert r.returncode == 0, r.stderr
    assert sf.info(str(out)).frames == 3 * RATE


def test_generate_with_source_audio_skips_the_lm(synth_models, rng, monkeypatch):
    from acestep_ggml import lm as lm_module
    from acestep_ggml.pipeline import Pipeline

    _, _, folders, _ = synth_models
    monkeypatch.setattr(lm_module.LM, "from_models", lambda *a, **k: pytest.fail("the LM ran for a cover"))
    src = random_audio(rng, 1.6)
    result = Pipeline(folders["f32"]).generate(CAPTION, LYRICS, task="cover", src_audio=src, steps=2, seed=5)
    # The cover's codes come from the source: its length decides the song's.
    assert result.audio.shape == (2, src.shape[1] // HOP * HOP)


def test_generate_cli_task_flags_run_a_complete(synth_models, rng, tmp_path):
    import soundfile as sf

    _, _, folders, _ = synth_models
    src = tmp_path / "drums.flac"
    sf.write(src, np.clip(0.3 * rng.standard_normal((2 * RATE, 2)), -1, 1), RATE)
    out = tmp_path / "out.wav"
    r = _cli("generate", "--caption", CAPTION, "--models", folders["f32"], "-o", out, "--task", "complete",
             "--src-audio", src, "--track-classes", "bass, keyboard", "--ref-audio", src, "--steps", 2)
    assert r.returncode == 0, r.stderr
    assert sf.info(str(out)).frames == 2 * RATE


# -- bad input: a clear error and no output -------------------------------------------

def _wav(rng, path, seconds=2.0):
    import soundfile as sf

    sf.write(path, random_audio(rng, seconds).T, RATE, subtype="FLOAT")
    return path


@pytest.mark.parametrize("fields, message", [
    ({"task": "cover", "src_audio": "{tmp}/missing.wav"}, "src_audio: audio file '.*missing.wav' does not exist"),
    ({"task": "cover", "src_audio": "{tmp}/garbage.wav"}, "src_audio: cannot read audio file"),
    ({"ref_audio": "{tmp}/missing.flac"}, "ref_audio: audio file '.*missing.flac' does not exist"),
    ({"task": "repaint", "src_audio": "{tmp}/ok.wav", "repainting_start": 2.5, "repainting_end": 3.0},
     "lies outside the 2.0. s of source audio"),
    ({"task": "repaint", "src_audio": "{tmp}/ok.wav", "repainting_start": -3.0, "repainting_end": -1.0}, "lies outside"),
    ({"task": "repaint", "src_audio": "{tmp}/ok.wav", "repainting_start": 1.5, "repainting_end": 1.5},
     "start 1.5 s must come before end 1.5 s"),
    ({"task": "remix"}, "unknown task 'remix'"),
    ({"task": "extract", "track_name": "vocals"}, "task 'extract' needs source audio"),
    ({"task": "repaint", "repainting_start": 1.0, "repainting_end": 2.0}, "task 'repaint' needs source audio"),
    ({"task": "cover", "src_audio": "{tmp}/ok.wav", "audio_cover_strength": 1.5}, "audio_cover_strength must be .* 0..1"),
    ({"task": "cover", "src_audio": "{tmp}/ok.wav", "audio_cover_strength": -0.1}, "audio_cover_strength must be"),
    ({"task": "cover", "src_audio": "{tmp}/ok.wav", "codes": [1, 2]}, "either audio codes or source audio"),
    ({"track_name": "drums"}, "track_name applies to extract and lego"),
    ({"task": "extract", "src_audio": np.zeros((2, 601 * RATE), np.float32)}, "src_audio lasts 601.000 s"),
    ({"task": "complete", "src_audio": "{tmp}/ok.wav", "track_classes": "drums,bass"}, "must be a list of track names"),
], ids=["missing-src", "unreadable-src", "missing-ref", "window-after-end", "window-before-start",
        "start-equals-end", "unknown-task", "extract-without-source", "repaint-without-source",
        "cover-strength-high", "cover-strength-negative", "codes-and-source", "track-without-extract",
        "source-too-long", "track-classes-as-string"])
def test_bad_task_input_raises_before_any_model_runs(synth_models, rng, tmp_path, fields, message):
    _, _, folders, _ = synth_models
    _wav(rng, tmp_path / "ok.wav")
    (tmp_path / "garbage.wav").write_bytes(b"RIFF\x00\x00not audio at all")
    fields = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in fields.items()}
    synth = Synthesizer(folders["f32"])
    with pytest.raises(InputError, match=message):
        synth(Request(caption="x", duration=2, **fields), progress=lambda stage, done, total: pytest.fail(stage))
    assert not synth._loaded, "models were loaded for a request that could be refused up front"


@pytest.mark.parametrize("flags, message", [
    (["--task", "extract"], "task 'extract' needs source audio"),
    (["--task", "cover", "--src-audio", "{tmp}/missing.wav"], "does not exist"),
    (["--task", "repaint", "--src-audio", "{tmp}/ok.wav", "--repaint", "4", "5"], "lies outside"),
    (["--task", "cover", "--src-audio", "{tmp}/ok.wav", "--cover-strength", "2"], "audio_cover_strength must be"),
    (["--task", "remix"], "invalid choice: 'remix'"),
])
def test_cli_bad_task_input_writes_nothing(synth_models, rng, tmp_path, flags, message):
    _, _, folders, _ = synth_models
    _wav(rng, tmp_path / "ok.wav")
    write_request(tmp_path / "ex", Request(caption="x", duration=2))
    out = tmp_path / "out.wav"
    r = _cli("synth", "--input-dir", tmp_path / "ex", "--models", folders["f32"], "-o", out,
             *[f.format(tmp=tmp_path) for f in flags])
    assert r.returncode == 2
    assert message in r.stderr or re.search(message, r.stderr), r.stderr
    assert not out.exists() and not list(tmp_path.glob("*.tmp*")) and not list(tmp_path.glob(".tmp-*"))
