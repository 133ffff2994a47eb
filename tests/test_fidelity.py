"""Fidelity to ACE-Step 1.5: every prompt the LM and the DiT see is rendered by the original
package's own code (ace-step15-fork, ``pip install --no-deps ace-step15-fork loguru``) and
compared with ours, as strings and as token ids.

The package's prompt code imports torch, transformers, loguru and PyYAML, which the tests
have.  ``acestep.handler`` also imports torchaudio and ``acestep.dit_alignment_score`` (numba)
for features the prompt builders never touch; those two are stubbed before the import.

Where upstream's newer code differs from the package, the newer behaviour is written out here
with the upstream file it comes from:

* ACE-Step-1.5 ``acestep/llm_inference.py``, ``LLMHandler.build_formatted_prompt_with_cot``
  (the branch after ``if self.use_legacy_cfg_prompt:``, comment "Keep the assistant turn OPEN"):
  phase 2 leaves the assistant turn open, ``add_generation_prompt=True`` + cot + ``"\\n\\n"``;
  the unconditional user message is the bare negative prompt, ``NO USER INPUT`` by default,
  with the empty CoT ``<think>\\n\\n</think>``.  ``use_legacy_cfg_prompt`` defaults to False
  (``LLMHandler.__init__``).  acestep.cpp made the same change in commit 8e7c975
  (2026-04-22, src/prompt.h ``build_lm_prompt_with_cot`` / ``build_lm_prompt_uncond_with_cot``).
* the same file, ``generate_with_stop_condition``: phase 1 passes ``"cfg_scale": 1.0`` (comment
  "CFG must not be applied during CoT"); the package guides phase 1 too, which our
  ``legacy_cfg_prompt`` keeps.
"""
from __future__ import annotations

import importlib.machinery
import itertools
import os
import sys
import types

import fixtures
import pytest
from conftest import fresh_seed
from tokenizers import Tokenizer as HFTokenizer
from transformers import AutoTokenizer

from acestep_ggml import constants, fsm, lm
from acestep_ggml.tokenizer import Tokenizer

CAPTIONS = [
    "calm piano",
    "Energetic: rock with distorted guitars, pounding drums, a shouted chorus and a long fade-out over crowd noise",
    "no", "yes", "on", "1e3",
    "中文流行歌曲，温柔的女声，钢琴伴奏，夜晚的城市",
]
LYRICS = ["", "[Verse]\n我们一起唱歌\n夜空中最亮的星\n\n[Chorus]\nla la la", "[Chorus]\nyes: no\n"]
NEGATIVES = ["NO USER INPUT", "", "   ", "low quality: noisy, distorted"]
# Values per CoT field, the YAML-special ones included; caption comes from CAPTIONS.
VALUES = {"bpm": ["120", "1e3"], "duration": ["30", "600"], "keyscale": ["F# minor", "no"],
          "language": ["no", "zh", "on"], "timesignature": ["4", "3/4", "6"]}


def _stub(name: str, **attrs) -> None:
    if name not in sys.modules:
        m = types.ModuleType(name)
        m.__spec__ = importlib.machinery.ModuleSpec(name, None)
        m.__dict__.update(attrs)
        sys.modules[name] = m


def _import_original():
    try:
        import acestep.llm_inference as llm_inference
        _stub("torchaudio")
        _stub("acestep.dit_alignment_score", MusicStampsAligner=object, MusicLyricScorer=object)
        import acestep.handler as handler
    except ImportError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"the original ACE-Step package is not installed ({e}): pip install --no-deps ace-step15-fork loguru")
    return llm_inference, handler


@pytest.fixture(scope="module")
def original(lm_tokenizer_dir, tmp_path_factory):
    """(the original LLMHandler with its tokenizer, the original DiT handler, the embedding tokenizer)."""
    llm_inference, handler = _import_original()
    h = llm_inference.LLMHandler()
    h.llm_tokenizer = AutoTokenizer.from_pretrained(str(lm_tokenizer_dir))
    dit = handler.AceStepHandler.__new__(handler.AceStepHandler)
    emb = tmp_path_factory.mktemp("qwen3_embedding")
    fixtures.write_embedding_tokenizer(emb)
    dit.text_tokenizer = AutoTokenizer.from_pretrained(str(emb))
    return h, dit, emb


@pytest.fixture(scope="module")
def ours(lm_tokenizer_dir):
    return Tokenizer(HFTokenizer.from_file(str(lm_tokenizer_dir / "tokenizer.json")))


def _same(ours_text, orig_text, ours_tok, orig_tok, what):
    assert ours_text == orig_text, what
    assert ours_tok.encode(ours_text) == orig_tok(orig_text)["input_ids"], what


def _metadata_sets():
    """Every subset of the six CoT fields, the values rotating through the special ones."""
    fields = list(fsm.FIELDS)
    for n, subset in enumerate(itertools.chain.from_iterable(
            itertools.combinations(fields, k) for k in range(len(fields) + 1))):
        values = {}
        for f in subset:
            pool = CAPTIONS if f == "caption" else VALUES[f]
            values[f] = pool[n % len(pool)]
        yield values


def test_cot_text_is_the_originals(original):
    h = original[0]
    count = 0
    for values in _metadata_sets():
        assert fsm.cot_text(values) == h._format_metadata_as_cot(values), values
        count += 1
    assert count == 64
    long = {"caption": CAPTIONS[1] * 2, "language": "no", "bpm": "120"}
    text = fsm.cot_text(long)
    assert text == h._format_metadata_as_cot(long) and "\n  " in text  # wrapped after column 80


def test_phase_one_prompts_are_the_originals(original, ours):
    h = original[0]
    tok = h.llm_tokenizer
    for caption, lyrics in itertools.product(CAPTIONS, LYRICS):
        _same(lm.cot_prompt(caption, lyrics), h.build_formatted_prompt(caption, lyrics), ours, tok, caption)
        for neg in NEGATIVES:
            orig = h.build_formatted_prompt(caption, lyrics, is_negative_prompt=True, negative_prompt=neg)
            _same(lm.cot_uncond_prompt(lyrics, neg), orig, ours, tok, (caption, neg))


def test_phase_two_legacy_prompts_are_the_packages(original, ours):
    h = original[0]
    tok = h.llm_tokenizer
    for (caption, lyrics), values in zip(itertools.product(CAPTIONS, LYRICS), itertools.cycle(_metadata_sets())):
        cot = fsm.cot_text(values)
        _same(lm.codes_prompt(caption, lyrics, cot, legacy=True),
              h.build_formatted_prompt_with_cot(caption, lyrics, cot), ours, tok, (caption, values))
        for neg in NEGATIVES:
            orig = h.build_formatted_prompt_with_cot(caption, lyrics, cot, is_negative_prompt=True,
                                                     negative_prompt=neg)
            _same(lm.codes_uncond_prompt(caption, lyrics, neg, legacy=True), orig, ours, tok, (caption, neg))


def test_phase_two_prompts_are_newest_upstreams(original, ours):
    """Upstream's build_formatted_prompt_with_cot, training-aligned branch (see the module
    docstring), rendered through the same chat template the package uses."""
    h = original[0]
    tok = h.llm_tokenizer
    system = {"role": "system", "content": f"# Instruction\n{constants.LM_INSTRUCTION}\n\n"}

    def upstream(user, cot):
        return tok.apply_chat_template([system, {"role": "user", "content": user}], tokenize=False,
                                       add_generation_prompt=True) + cot + "\n\n"

    for (caption, lyrics), values in zip(itertools.product(CAPTIONS, LYRICS), itertools.cycle(_metadata_sets())):
        cot = h._format_metadata_as_cot(values)
        _same(lm.codes_prompt(caption, lyrics, cot),
              upstream(f"# Caption\n{caption}\n\n# Lyric\n{lyrics}\n", cot), ours, tok, values)
        for neg in NEGATIVES:
            user = neg if h._has_meaningful_negative_prompt(neg) else "NO USER INPUT"
            _same(lm.codes_uncond_prompt(caption, lyrics, neg), upstream(user, "<think>\n\n</think>"), ours, tok, neg)


def test_dit_prompts_and_ids_are_the_originals(original, tmp_path):
    """The DiT's text and lyric prompts from the LM's metadata (build_dit_inputs), and their
    ids through the Qwen3-Embedding tokenizer, whose post-processor appends <|endoftext|>:
    ours from a tokenizer.json GGUF and from a published-style one (vocab.json only) alike."""
    import gguf

    _, dit, emb = original
    sources = {"json": tmp_path / "json.gguf", "published": tmp_path / "published.gguf"}
    w = gguf.GGUFWriter(str(sources["json"]), "acestep-text-enc")
    w.add_string("tokenizer.huggingface.json", (emb / "tokenizer.json").read_text(encoding="utf-8"))
    _finish(w)
    fixtures.write_published_tokenizer_gguf(sources["published"], "acestep-text-enc", emb)
    toks = {k: Tokenizer.from_gguf(str(p)) for k, p in sources.items()}
    for caption, lyrics in itertools.product(CAPTIONS, LYRICS):
        for metas in [None, {"bpm": 90, "duration": 45, "keyscale": "C major", "timesignature": "4",
                             "caption": "the LM's " + caption, "language": "ja"}]:
            for language in ["unknown", "zh"]:
                text, lyric = dit.build_dit_inputs("text2music", None, caption, lyrics, metas, language)
                m = metas or {}
                ours_text = Tokenizer.text_prompt(m.get("caption", caption), bpm=m.get("bpm"),
                                                  timesignature=m.get("timesignature"), keyscale=m.get("keyscale"),
                                                  duration=m.get("duration"))
                ours_lyric = Tokenizer.lyric_prompt(lyrics, m.get("language", language))
                assert (ours_text, ours_lyric) == (text, lyric)
                for t in toks.values():
                    assert t.text_ids(m.get("caption", caption), bpm=m.get("bpm"),
                                      timesignature=m.get("timesignature"), keyscale=m.get("keyscale"),
                                      duration=m.get("duration")) == \
                        dit.text_tokenizer(text, truncation=True, max_length=256)["input_ids"]
                    assert t.lyric_ids(lyrics, m.get("language", language)) == \
                        dit.text_tokenizer(lyric, truncation=True, max_length=2048)["input_ids"]
    long = " ".join(CAPTIONS) * 10
    text, _ = dit.build_dit_inputs("text2music", None, long, "", None, "en")
    for t in toks.values():
        ids = t.text_ids(long)
        assert len(ids) == 256 and ids == dit.text_tokenizer(text, truncation=True, max_length=256)["input_ids"]
        assert ids[-1] == 151643  # truncation keeps room for the end-of-text the post-processor appends


def _finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_defaults_are_upstreams():
    """LM sampling defaults of acestep/inference.py GenerationParams (lm_temperature 0.85,
    lm_cfg_scale 2.0, lm_top_p 0.9, lm_top_k 0) and the default negative prompt."""
    import inspect

    from acestep_ggml.lm import LM
    _import_original()
    from acestep.inference import GenerationParams

    p = GenerationParams()
    sig = inspect.signature(LM.generate).parameters
    assert sig["temperature"].default == p.lm_temperature
    assert sig["cfg_scale"].default == p.lm_cfg_scale
    assert sig["top_p"].default == p.lm_top_p and sig["top_k"].default is None and p.lm_top_k == 0
    assert constants.LM_NEGATIVE_PROMPT == p.lm_negative_prompt
    assert p.vocal_language == "unknown" and p.use_cot_caption and p.use_cot_language


@pytest.mark.parametrize("tie", [False, True])
def test_published_style_lm_gives_the_same_codes(tmp_path, tie):
    """An LM GGUF as acestep.cpp's converter writes it (vocab.json only, no tie key when
    false) loads, completes its vocabulary (<|im_end|> = 151645, <|audio_code_N|> = 151669 + N)
    and generates the same metadata and codes as our own file of the same weights."""
    from _lm_gguf import tiny_lm, write_lm

    import acestep_ggml
    from acestep_ggml.request import Request

    seed = fresh_seed()
    model = tiny_lm(seed % 1000, tie=tie)
    write_lm(tmp_path / "ours.gguf", model, dtype="bf16")
    write_lm(tmp_path / "published.gguf", model, dtype="bf16", published=True)
    ours, published = (acestep_ggml.LM(tmp_path / f"{k}.gguf", n_threads=1) for k in ("ours", "published"))
    tok = published.tokenizer.tokenizer
    assert tok.token_to_id("<|im_end|>") == 151645 and tok.token_to_id("<|audio_code_63999|>") == 151669 + 63999
    req = Request(caption="calm piano: rain", lyrics="[Verse]\n夜空中最亮的星", duration=10, bpm=80)
    kw = dict(seed=seed, temperature=1.0, top_p=None, rewrite_caption=False)
    assert published.generate(req, **kw) == ours.generate(req, **kw), f"seed {seed}"
    text = "<|im_start|>user\n# Caption\ncalm<|im_end|><think>\n</think><|audio_code_5|>"
    assert published.tokenizer.encode(text) == ours.tokenizer.encode(text)


def test_corrupt_embedded_tokenizer_is_a_named_model_file_error(tmp_path):
    """Bytes of tokenizer.huggingface.json mutated at random: every failure is a
    ModelFileError naming the file and the key (a bare UnicodeDecodeError or the tokenizers
    library's Exception before).  FUZZ_CASES sets the number of cases (default 40; each
    parses a 7 MB tokenizer)."""
    import numpy as np

    from acestep_ggml import ModelFileError

    seed = int(os.environ.get("FUZZ_SEED") or fresh_seed())
    rng = np.random.default_rng(seed)
    good = (fixtures.qwen3_tokenizer_dir() / "tokenizer.json").read_bytes()
    cases = int(os.environ.get("FUZZ_CASES", 40))
    # Half the cases mutate the JSON's structure near its start (where the tokenizers library
    # parses first); invalid UTF-8 is always one of the mutations.
    for i in range(cases):
        data = bytearray(good)
        if i == 0:
            data[100:101] = b"\xff"
        else:
            for _ in range(int(rng.integers(1, 4))):
                pos = int(rng.integers(0, 4000 if i % 2 else len(data)))
                data[pos] = int(rng.integers(0, 256))
        path = tmp_path / f"case{i}.gguf"
        _write_raw_string(path, "tokenizer.huggingface.json", bytes(data))
        try:
            Tokenizer.from_gguf(str(path))
        except ModelFileError as e:
            assert str(path) in str(e) and "tokenizer.huggingface.json" in str(e), f"seed {seed}: {e}"
        path.unlink()


def _write_raw_string(path, key: str, value: bytes) -> None:
    """A GGUF v3 file with one string key holding arbitrary bytes, no tensors (the gguf
    package only writes valid UTF-8)."""
    import struct

    k = key.encode()
    with open(path, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, 0, 2))
        arch = b"general.architecture"
        f.write(struct.pack("<Q", len(arch)) + arch + struct.pack("<I", 8))
        f.write(struct.pack("<Q", len(b"acestep-lm")) + b"acestep-lm")
        f.write(struct.pack("<Q", len(k)) + k + struct.pack("<I", 8))
        f.write(struct.pack("<Q", len(value)) + value)


def test_value_sets_and_instructions_are_the_originals():
    _import_original()
    from acestep import constants as c

    assert list(constants.LANGUAGES) == c.VALID_LANGUAGES
    assert set(constants.KEYSCALES) == c.VALID_KEYSCALES
    assert constants.BPM_RANGE == (c.BPM_MIN, c.BPM_MAX)
    assert constants.DURATION_RANGE == (c.DURATION_MIN, c.DURATION_MAX)
    assert [int(t) for t in constants.TIMESIGNATURES] == c.VALID_TIME_SIGNATURES
    assert constants.LM_INSTRUCTION == c.DEFAULT_LM_INSTRUCTION
    assert constants.DIT_INSTRUCTION == c.DEFAULT_DIT_INSTRUCTION
    # cover-nofsq came after the package: upstream ACE-Step-1.5 acestep/constants.py (PR #1142)
    # gives it the cover instruction, as acestep.cpp src/task-types.h does.
    ours = dict(constants.TASK_INSTRUCTIONS)
    assert ours.pop("cover-nofsq") == c.TASK_INSTRUCTIONS["cover"]
    assert ours == c.TASK_INSTRUCTIONS
    assert constants.LM_UNDERSTAND_INSTRUCTION == c.DEFAULT_LM_UNDERSTAND_INSTRUCTION
    assert constants.LM_INSPIRED_INSTRUCTION == c.DEFAULT_LM_INSPIRED_INSTRUCTION
    assert constants.LM_REWRITE_INSTRUCTION == c.DEFAULT_LM_REWRITE_INSTRUCTION


# -- the LM's other modes: understand, inspire, format ---------------------------------------
# Answers shaped as the LM writes them (the original's own docstring example among them), and
# malformed ones: no </think>, no <think>, a "# Lyric" header, "# Lyrics" (kept by upstream's
# regex), N/A values, a field without a value, unindented junk, code tokens.
ANSWERS = [
    "<think>\nbpm: 73\ncaption: A calm piano melody\nduration: 273\ngenres: Chinese folk\nkeyscale: G major\n"
    "language: en\ntimesignature: 4\n</think>\n\n# Lyric\n[Verse]\nla la\n<|im_end|>",
    "<think>\nbpm: 120\ncaption: Energetic rock with distorted guitars, pounding drums, a shouted chorus\n"
    "  and a long fade-out\nduration: 45\ngenres: rock, punk\nkeyscale: F# minor\nlanguage: ja\n"
    "timesignature: 3\n</think>\n# Lyrics\n[Chorus]\nyes: no<|im_end|>",
    "<think>\nbpm: N/A\ncaption:\n  multi\n  line\nduration: fast\nkeyscale: H major\njunk line\n"
    "language:\n</think>\n<|im_end|>",
    "bpm: 90\ncaption: no think tags at all\n<|audio_code_5|><|audio_code_7|>",
    "<think>\nbpm: 100\ncaption: unfinished",
    "<think>\n\n</think>\n\ncaption: after an empty think\n[Verse]\nwords",
    "",
    "<|im_end|>",
    "<think>\nBPM: 80\nCaption: upper-case keys\n</think>\n# lyric\n  indented lyrics  \n",
]
QUERIES = ["a soft Bengali love song for a quiet evening", "", "   ", "中文流行歌曲，温柔的女声"]


def _capture(h, answer):
    """Replaces the original's generation by a recorder that answers ``answer``."""
    seen = {}

    def fake(formatted_prompt, cfg=None, **kw):
        seen.update(prompt=formatted_prompt, cfg=cfg, **kw)
        return answer, "ok"

    h.generate_from_formatted_prompt = fake
    h.llm_initialized = True
    return seen


def test_understand_prompt_and_parsing_are_the_originals(original, ours, lm_tokenizer_dir):
    """The token ids are compared with a transformers tokenizer that knows the audio-code
    tokens: the published checkpoint's tokenizer_config.json lists them; our test tokenizer's
    does not, and transformers' Qwen2Tokenizer takes its added tokens from there."""
    from transformers import AddedToken

    from acestep_ggml import lm_modes

    h = original[0]
    with_codes = AutoTokenizer.from_pretrained(str(lm_tokenizer_dir))
    with_codes.add_tokens([AddedToken(constants.AUDIO_CODE_TOKEN.format(i), special=False, normalized=False)
                           for i in range(constants.N_AUDIO_CODES)])
    rng = __import__("numpy").random.default_rng(fresh_seed())
    for answer in ANSWERS:
        codes = [int(c) for c in rng.integers(0, constants.N_AUDIO_CODES, size=int(rng.integers(1, 40)))]
        seen = _capture(h, answer)
        meta, _ = h.understand_audio_from_codes("".join(f"<|audio_code_{c}|>" for c in codes))
        _same(lm_modes.understand_prompt(codes), seen["prompt"], ours, with_codes, codes)
        assert len(ours.encode(seen["prompt"])) == 24 + len(codes) + 5  # one id per code
        assert seen["cfg"]["generation_phase"] == "understand" and not seen["cfg"]["skip_genres"]
        assert seen["cfg"]["user_metadata"] is None and seen["stop_at_reasoning"] is False
        assert lm_modes.parse_answer(answer, "understand") == meta, answer


def test_inspire_prompt_and_parsing_are_the_originals(original, ours):
    from acestep_ggml import lm_modes

    h = original[0]
    for (query, instrumental, language), answer in zip(
            itertools.product(QUERIES, (False, True), (None, "bn", "unknown", " ")), itertools.cycle(ANSWERS)):
        seen = _capture(h, answer)
        meta, _ = h.create_sample_from_query(query, instrumental=instrumental, vocal_language=language)
        _same(lm_modes.inspire_prompt(query, instrumental), seen["prompt"], ours, h.llm_tokenizer, query)
        want = {"language": "bn"} if language == "bn" else None
        assert seen["cfg"]["user_metadata"] == want and not seen["cfg"]["skip_language"]
        assert seen["cfg"]["generation_phase"] == "understand" and not seen["cfg"]["skip_genres"]
        assert lm_modes.parse_answer(answer, "inspire", instrumental=instrumental) == meta, answer


def test_format_prompt_and_parsing_are_the_originals(original, ours):
    from acestep_ggml import lm_modes

    h = original[0]
    for (caption, lyrics), answer in zip(itertools.product(CAPTIONS + ["", "  "], LYRICS + ["  "]),
                                         itertools.cycle(ANSWERS)):
        seen = _capture(h, answer)
        meta, _ = h.format_sample_from_input(caption, lyrics)
        _same(lm_modes.format_prompt(caption, lyrics), seen["prompt"], ours, h.llm_tokenizer, (caption, lyrics))
        assert seen["cfg"]["generation_phase"] == "understand" and not seen["cfg"]["skip_genres"]
        assert lm_modes.parse_answer(answer, "format", lyrics=lyrics) == meta, answer
    # Given metadata is forced; a given language leaves the language line out.
    seen = _capture(h, ANSWERS[0])
    h.format_sample_from_input("x", "y", user_metadata={"bpm": 90, "language": "en", "keyscale": "C major"})
    assert seen["cfg"]["user_metadata"] == {"bpm": 90, "language": "en", "keyscale": "C major"}
    assert seen["cfg"]["skip_language"] is True


def test_lm_mode_defaults_are_upstreams(original):
    import inspect

    from acestep_ggml import lm_modes

    h = original[0]
    for ours_fn, orig_fn in ((lm_modes.understand, h.understand_audio_from_codes),
                             (lm_modes.inspire, h.create_sample_from_query),
                             (lm_modes.format_request, h.format_sample_from_input)):
        a, b = inspect.signature(ours_fn).parameters, inspect.signature(orig_fn).parameters
        for name in ("temperature", "top_p", "top_k"):
            assert a[name].default == b[name].default, (ours_fn.__name__, name)
        assert b["use_constrained_decoding"].default is True and a["fsm"].default is True
