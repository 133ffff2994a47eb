"""Constrained decoding: the chain of thought and the audio codes respect the reference's
constraints whatever the model says, prompts are the reference's, and the LM drives it end to end."""
import functools

import numpy as np
import pytest
from _lm_gguf import QWEN3_VOCAB, VOCAB, tiny_lm, tokenizer_json, write_lm
from conftest import fresh_seed
from tokenizers import Tokenizer as HFTokenizer

import acestep_ggml
from acestep_ggml import constants, fsm
from acestep_ggml.request import Request
from acestep_ggml.token_sampling import sample
from acestep_ggml.tokenizer import Tokenizer

EOS = 151645


@functools.lru_cache(maxsize=1)
def _tok():
    return Tokenizer(HFTokenizer.from_str(tokenizer_json()))


@functools.lru_cache(maxsize=1)
def _constraints():
    return fsm.CotConstraints(_tok())


def _check_cot(text, values, given, seed, caption=True):
    assert text.startswith("<think>\n") and text.endswith("\n</think>"), f"seed {seed}: {text!r}"
    parsed = fsm.parse_cot(text)
    fields = [f for f in fsm.FIELDS if caption or f != "caption"]
    assert list(parsed) == fields and list(values) == fields, f"seed {seed}: keys {list(parsed)}"
    # The caption of random logits is noise the parser may read differently (lines starting "<").
    assert {k: v for k, v in parsed.items() if k != "caption"} == \
        {k: v for k, v in values.items() if k != "caption"}, f"seed {seed}: {parsed} != {values}"
    parsed = {k: int(v) if v.isdigit() else v for k, v in parsed.items()}
    assert 30 <= parsed["bpm"] <= 300 and 10 <= parsed["duration"] <= 600, f"seed {seed}: {parsed}"
    assert str(parsed["timesignature"]) in ("2", "3", "4", "6"), f"seed {seed}: {parsed}"
    assert parsed["keyscale"] in constants.KEYSCALES and parsed["language"] in constants.LANGUAGES, f"seed {seed}: {parsed}"
    for k, v in given.items():
        assert str(parsed[k]) == v, f"seed {seed}: given {k}={v!r} came out as {parsed[k]!r}"


def _run_fsm(f, rng, newline_bias=0.0):
    """Drives an FSM with a "model" of random logits over the whole vocabulary, sampled as
    generate() does; ``newline_bias`` favours line breaks (so captions end and continue)."""
    newline = np.zeros(VOCAB, dtype=np.float32)
    mask = _constraints().caption_sets()[2]
    newline[:mask.size] = mask
    out = []
    while not f.done:
        logits = rng.normal(size=VOCAB).astype(np.float32) * 3
        ids = f.allowed()
        sub = logits[ids] + newline_bias * newline[ids]
        if newline_bias and f._after_newline and f._steps[f._step][0] == "caption":
            sub[np.isin(ids, f._first(f._step + 1))] += newline_bias  # and sometimes the caption ends
        # No top-p: sorting 150k flat random logits per token would take most of the test's time.
        tok = int(ids[np.argmax(sub)]) if f.greedy else int(ids[sample(sub, rng, 0.85, None, None)])
        f.advance(tok)
        out.append(tok)
    return out


@pytest.mark.parametrize("trial", range(4))
def test_cot_fsm_with_random_logits_respects_constraints(trial):
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    given = {}
    for k, v in [("bpm", "128"), ("duration", "45"), ("keyscale", "F# minor"), ("language", "ja"),
                 ("timesignature", "3")]:
        if rng.random() < 0.4:
            given[k] = v
    rewrite = trial % 2 == 0
    f = fsm.CotFSM(_constraints(), given, rewrite_caption=rewrite)
    out = _run_fsm(f, rng, newline_bias=8.0)
    text = _tok().decode(out)
    _check_cot(text, f.values, given, seed, caption=rewrite)
    if rewrite:
        caption = text.split("caption:", 1)[1].split("\nduration:", 1)[0]
        assert "`" not in caption and "<|audio_code_" not in caption, f"seed {seed}: {caption!r}"
        # Every line after the first is indented, as YAML continues a scalar.
        assert all(line[:1].isspace() for line in caption.split("\n")[1:] if line), f"seed {seed}"


def test_cot_fsm_rejects_tokens_outside_the_structure():
    f = fsm.CotFSM(_constraints(), {})
    with pytest.raises(acestep_ggml.ConstraintError, match="not allowed"):
        f.advance(EOS)


def test_codes_fsm_blocks_eos_until_the_duration_and_forces_it_then():
    f = fsm.CodesFSM(50, 50, QWEN3_VOCAB, 64000, EOS)
    rng = np.random.default_rng(0)
    for _ in range(50):
        ids = f.allowed()
        assert EOS not in ids and len(ids) == 64000
        f.advance(int(rng.choice(ids)))
    assert list(f.allowed()) == [EOS]
    with pytest.raises(acestep_ggml.ConstraintError, match="not allowed after 50 codes"):
        f.advance(QWEN3_VOCAB)
    f.advance(EOS)
    assert f.done and f.count == 50


def test_codes_fsm_lets_the_lm_end_between_the_bounds():
    f = fsm.CodesFSM(0, 3, QWEN3_VOCAB, 64000, EOS)
    assert EOS in f.allowed() and len(f.allowed()) == 64001
    for _ in range(3):
        f.advance(QWEN3_VOCAB + 7)
    assert list(f.allowed()) == [EOS]
    f = fsm.CodesFSM(0, 3, QWEN3_VOCAB, 64000, EOS)
    f.advance(EOS)
    assert f.done and f.count == 0


def _caption_fsm():
    return fsm.CotFSM(_constraints(), {"bpm": "90"})


def _to_caption(f):
    while f._steps[f._step][0] != "caption":
        f.advance(int(f.allowed()[0]))


def test_caption_forbids_backticks_audio_codes_and_special_tokens():
    f = _caption_fsm()
    _to_caption(f)
    ids = set(f.allowed().tolist())
    tok = _tok().tokenizer
    for t in ("`", "```", " `"):
        for i in _tok().encode(t):
            if "`" in tok.id_to_token(i):
                assert i not in ids, t
    assert not any(i >= 151643 for i in ids)  # no added tokens: no audio codes, no </think>
    assert _tok().encode(" calm")[0] in ids
    with pytest.raises(acestep_ggml.ConstraintError, match="caption"):
        f.advance(QWEN3_VOCAB + 5)


def test_caption_is_bounded_to_512_tokens_then_ends():
    f = _caption_fsm()
    _to_caption(f)
    word = _tok().encode(" la")[0]
    for _ in range(constants.MAX_CAPTION_TOKENS):
        f.advance(word)
    assert f.allowed().tolist() == _tok().encode("\n")
    f.advance(f.allowed()[0])
    # After the bound the caption may not continue: only the next field's line.
    assert f.allowed().tolist() == _tok().encode("duration:")[:1]
    out = _run_fsm(f, np.random.default_rng(0))
    assert f.values["caption"] == " ".join(["la"] * 512) and f.done and out[-1] == _constraints().end_think


def test_caption_continues_on_indented_lines_and_ends_on_the_next_field():
    f = _caption_fsm()
    _to_caption(f)
    for t in _tok().encode(" A calm song.\n  With piano\n"):
        f.advance(t)
    cont = _tok().encode("\tand strings.\n")
    assert cont[0] in f.allowed()
    for t in cont:
        f.advance(t)
    nxt = _tok().encode("duration:")[0]
    assert nxt in f.allowed()
    f.advance(nxt)
    assert f.values["caption"] == "A calm song. With piano and strings."
    assert f._steps[f._step][0] == "duration"


def test_language_first_token_is_greedy():
    f = fsm.CotFSM(_constraints(), {}, rewrite_caption=False)
    while not f.greedy:
        ids = f.allowed()
        f.advance(int(ids[0]))
    assert f._steps[f._step][0] == "language" and len(f.allowed()) > 10


# One thread: the tiny graphs are too small to share, and spinning threads stall on a busy machine.
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "lm.gguf"
    write_lm(path, tiny_lm(7), dtype="bf16")
    return acestep_ggml.LM(path, n_threads=1)


@pytest.mark.parametrize("trial", range(3))
def test_generate_end_to_end_respects_constraints(tiny, trial):
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    duration = int(rng.integers(10, 14))
    req = Request(caption="lo-fi hip hop: mellow", lyrics="[verse]\nhello", duration=duration,
                  bpm=[None, 90][trial % 2], keyscale=[None, "Bb major"][trial % 2], language="en")
    out = tiny.generate(req, seed=seed, cfg_scale=[2.0, 1.0, 3.0][trial], rewrite_caption=False)
    assert len(out.codes) == 5 * duration, f"seed {seed}: {len(out.codes)} codes"
    assert all(0 <= c < 64000 for c in out.codes), f"seed {seed}"
    assert out.duration == duration and out.caption == req.caption and out.lyrics == req.lyrics
    assert 30 <= out.bpm <= 300 and out.keyscale in constants.KEYSCALES, f"seed {seed}: {out}"
    assert out.timesignature in (2, 3, 4, 6), f"seed {seed}: {out}"
    if req.bpm is not None:
        assert (out.bpm, out.keyscale) == (req.bpm, req.keyscale), f"seed {seed}: {out}"
    again = tiny.generate(req, seed=seed, cfg_scale=[2.0, 1.0, 3.0][trial], rewrite_caption=False)
    assert again == out, f"seed {seed}: not reproducible"


def test_generate_with_all_metadata_skips_phase_one(tiny, monkeypatch):
    prompts = []
    run = tiny._run
    monkeypatch.setattr(tiny, "_run", lambda p, *a, **k: prompts.append(p) or run(p, *a, **k))
    req = Request(caption="ambient", duration=10, bpm=60, keyscale="C minor", timesignature=4, language="en")
    out = tiny.generate(req, seed=1, temperature=0.0)
    assert len(out.codes) == 50 and (out.bpm, out.keyscale, out.timesignature) == (60, "C minor", 4)
    assert len(prompts) == 1  # no chain of thought: only the codes phase ran
    text = _tok().decode(prompts[0][0])
    assert "<think>\nbpm: 60\nduration: 10\nkeyscale: C minor\ntimesignature: 4\n</think>\n\n" in text
    assert out.caption == "ambient" and out.language == "en"


def test_generate_lets_the_lm_choose_language_and_caption(tiny):
    """Without --language the LM writes it (not always en); with rewriting the caption is the LM's."""
    langs, captions = set(), set()
    for seed in range(4):
        # top_p off: the random LM's flat logits make every token a full sort otherwise.
        out = tiny.generate(Request(caption="calm piano", duration=10), seed=seed, temperature=1.0, top_p=None)
        assert out.language in constants.LANGUAGES and len(out.codes) == 50
        langs.add(out.language)
        captions.add(out.caption)
    assert langs != {"en"}, langs
    assert "calm piano" not in captions or len(captions) > 1, captions


def test_cli_lm_writes_the_exchange_directory(tiny, tmp_path):
    from acestep_ggml.cli import main
    from acestep_ggml.exchange import read_request

    out = tmp_path / "song"
    rc = main(["lm", "--models", str(tmp_path), "--lm", tiny.path, "--caption", "calm piano", "--duration", "10",
               "--bpm", "70", "--keyscale", "D minor", "--timesignature", "3", "--seed", "3", "--threads", "1",
               "--output-dir", str(out)])
    assert rc == 0
    req = read_request(out)
    assert len(req.codes) == 50 and (req.bpm, req.keyscale, req.timesignature, req.duration) == (70, "D minor", 3, 10)
    assert main(["lm", "--models", str(tmp_path), "--lm", tiny.path, "--caption", "x", "--duration", "5",
                 "--output-dir", str(out)]) == 2


def test_cli_lm_writes_the_lms_caption_and_language(tiny, tmp_path):
    """Rewriting on (the default) and no --language: the exchange directory receives the
    caption and the language the LM wrote, which the synth stage then reads."""
    from acestep_ggml.cli import main
    from acestep_ggml.exchange import read_request

    out = tmp_path / "song"
    args = ["lm", "--models", str(tmp_path), "--lm", tiny.path, "--caption", "calm piano", "--duration", "10",
            "--seed", "5", "--threads", "1", "--top-p", "1", "--output-dir", str(out)]
    assert main(args) == 0
    req = read_request(out)
    again = tiny.generate(Request(caption="calm piano", duration=10), seed=5, top_p=1.0)
    assert (req.caption, req.language, req.codes) == (again.caption, again.language, again.codes)
    assert req.language in constants.LANGUAGES
    assert main(args + ["--no-rewrite-caption"]) == 0
    assert read_request(out).caption == "calm piano"
