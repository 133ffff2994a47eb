"""The Qwen3 byte-level BPE tokenizer, rebuilt from the vocabulary inside a GGUF, and the
ACE-Step text and lyric prompt formats."""
from __future__ import annotations

import os
from typing import List, Optional, Sequence

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as _HFTokenizer

from . import _core
from .constants import (
    AUDIO_CODE_TOKEN,
    DIT_INSTRUCTION,
    ENDOFTEXT,
    ENDOFTEXT_ID,
    FIRST_AUDIO_CODE,
    MAX_LYRIC_TOKENS,
    MAX_TEXT_TOKENS,
    N_AUDIO_CODES,
)
from .errors import ModelFileError

# Qwen2/Qwen3 pre-tokenizer split: contractions, letter runs with one leading non-letter,
# single digits, punctuation runs, newlines, whitespace.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Qwen3's added tokens (id, text, special), as in its tokenizer.json; they follow the 151643 BPE entries.
QWEN3_ADDED = [
    (151643, "<|endoftext|>", True), (151644, "<|im_start|>", True), (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True), (151647, "<|object_ref_end|>", True), (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True), (151650, "<|quad_start|>", True), (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True), (151653, "<|vision_end|>", True), (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True), (151656, "<|video_pad|>", True), (151657, "<tool_call>", False),
    (151658, "</tool_call>", False), (151659, "<|fim_prefix|>", False), (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False), (151662, "<|fim_pad|>", False), (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False), (151665, "<tool_response>", False), (151666, "</tool_response>", False),
    (151667, "<think>", False), (151668, "</think>", False),
]
HF_JSON = "tokenizer.huggingface.json"

# gguf token types (llama.cpp): 1 normal, 3 control, 4 user-defined, 5 unused (padding).
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4


def _optional(f: "_core.GGUFFile", key: str):
    try:
        return f.get(key)
    except KeyError:
        return None


class Tokenizer:
    """A ``tokenizers.Tokenizer`` with ACE-Step's prompt helpers.

    ``Tokenizer.from_gguf(path)`` uses ``tokenizer.huggingface.json`` when the file has it,
    otherwise rebuilds Qwen3's byte-level BPE from ``tokenizer.ggml.tokens`` / ``merges``.
    """

    def __init__(self, tokenizer: _HFTokenizer):
        self.tokenizer = tokenizer

    @classmethod
    def from_gguf(cls, path: "str | os.PathLike | _core.GGUFFile") -> "Tokenizer":
        """The tokenizer a GGUF carries.  A bad ``tokenizer.huggingface.json`` (not UTF-8, not a
        tokenizer) raises ModelFileError naming the file and the key.

        Files written by acestep.cpp's converter (the published ones) hold only the 151,643
        entries of vocab.json: the vocabulary is completed as acestep.cpp's runtime assumes it,
        Qwen3's added tokens at 151643..151668 and ``<|audio_code_N|>`` at 151669 + N, up to the
        model's vocabulary (the rows of its token embedding)."""
        f = path if isinstance(path, _core.GGUFFile) else _core.GGUFFile(os.fspath(path))
        path = f.path
        try:
            hf_json = _optional(f, HF_JSON)
        except UnicodeDecodeError as e:
            raise ModelFileError(f"{path}: {HF_JSON} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        if hf_json:
            try:
                return cls(_HFTokenizer.from_str(hf_json))
            except Exception as e:  # the tokenizers library raises plain Exception
                raise ModelFileError(f"{path}: {HF_JSON} is not a valid tokenizer: {e}") from None
        try:
            tokens = _optional(f, "tokenizer.ggml.tokens")
            merges = _optional(f, "tokenizer.ggml.merges")
        except UnicodeDecodeError as e:
            raise ModelFileError(f"{path}: the token list or merges are not UTF-8 ({e.reason})") from None
        if not tokens or merges is None:
            raise ModelFileError(f"{path}: no tokenizer (neither {HF_JSON} nor "
                                 "tokenizer.ggml.tokens + tokenizer.ggml.merges)")
        rows = {name: shape for name, shape, _ in f.tensors()}.get("model.embed_tokens.weight")
        return cls.from_tokens_and_merges(tokens, merges, _optional(f, "tokenizer.ggml.token_type"),
                                          vocab_size=rows[0] if rows else None)

    @classmethod
    def from_tokens_and_merges(cls, tokens: Sequence[str], merges: Sequence[str],
                               token_types: Optional[Sequence[int]] = None,
                               vocab_size: Optional[int] = None) -> "Tokenizer":
        """Byte-level BPE over ``tokens`` (id = position) and ``merges`` ("a b" strings); tokens
        typed control / user-defined, Qwen3's added tokens, and those of Qwen3's added tokens
        the list lacks become added tokens at their ids.  With ``vocab_size`` beyond the list
        (an LM), the missing ids from 151669 on are ``<|audio_code_N|>``."""
        known = {text: special for _, text, special in QWEN3_ADDED}
        vocab, added = {}, {}
        for i, tok in enumerate(tokens):
            kind = token_types[i] if token_types is not None and i < len(token_types) else _NORMAL
            if tok in known or kind in (_CONTROL, _USER_DEFINED):
                added[i] = (tok, known.get(tok, kind == _CONTROL))
            elif kind == _NORMAL:
                vocab[tok] = i
        for i, text, special in QWEN3_ADDED:
            if i not in added and i >= len(tokens):
                added[i] = (text, special)
        for i in range(max(len(tokens), FIRST_AUDIO_CODE), min(vocab_size or 0, FIRST_AUDIO_CODE + N_AUDIO_CODES)):
            added.setdefault(i, (AUDIO_CODE_TOKEN.format(i - FIRST_AUDIO_CODE), False))
        pairs = [tuple(m.split(" ", 1)) for m in merges]
        tok = _HFTokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tok.decoder = decoders.ByteLevel()
        # Added tokens take the next free id, so they go in in id order (runs of one kind in
        # one call: 64000 audio codes one by one take seconds) and are checked after.
        order = sorted(added)
        start = 0
        while start < len(order):
            special = added[order[start]][1]
            end = start
            while end < len(order) and added[order[end]][1] == special:
                end += 1
            batch = [AddedToken(added[i][0], special=special, normalized=False) for i in order[start:end]]
            (tok.add_special_tokens if special else tok.add_tokens)(batch)
            start = end
        for i in order:
            if tok.token_to_id(added[i][0]) != i:
                raise ModelFileError(f"tokenizer: added token {added[i][0]!r} should have id {i} but got "
                                     f"{tok.token_to_id(added[i][0])}; the token list has gaps")
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, max_length: Optional[int] = None) -> List[int]:
        """Token ids of ``text`` without a post-processor (whatever the source file had, so
        every source gives the same ids), cut to ``max_length`` from the right."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ids if max_length is None else ids[:max_length]

    def encode_eot(self, text: str, max_length: int) -> List[int]:
        """The ids the real Qwen3-Embedding tokenizer gives the DiT's prompts: its
        post-processor (TemplateProcessing) appends ``<|endoftext|>``, and transformers'
        truncation keeps room for it.  acestep.cpp appends it likewise (bpe.h ``bpe_encode``)."""
        return self.encode(text, max_length - 1) + [ENDOFTEXT_ID]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @staticmethod
    def text_prompt(caption: str, instruction: Optional[str] = None, bpm: Optional[int] = None,
                    timesignature: Optional[str] = None, keyscale: Optional[str] = None,
                    duration: Optional[float] = None) -> str:
        """The DiT's text prompt (the pipeline's SFT template with instruction, caption and metas)."""
        instruction = DIT_INSTRUCTION if instruction is None else instruction
        if not instruction.endswith(":"):
            instruction += ":"
        bpm_s = str(bpm) if bpm is not None and bpm > 0 else "N/A"
        ts_s = timesignature if timesignature and str(timesignature).strip() else "N/A"
        ks_s = keyscale if keyscale and keyscale.strip() else "N/A"
        dur_s = f"{int(duration)} seconds" if duration is not None and duration > 0 else "30 seconds"
        metas = f"- bpm: {bpm_s}\n- timesignature: {ts_s}\n- keyscale: {ks_s}\n- duration: {dur_s}\n"
        return f"# Instruction\n{instruction}\n\n# Caption\n{caption}\n\n# Metas\n{metas}{ENDOFTEXT}\n"

    @staticmethod
    def lyric_prompt(lyrics: str, language: str = "unknown") -> str:
        """The lyric prompt: language header, then the lyrics."""
        return f"# Languages\n{language}\n\n# Lyric\n{lyrics}{ENDOFTEXT}"

    def text_ids(self, caption: str, **metas) -> List[int]:
        """Token ids of ``text_prompt(caption, **metas)``, at most 256."""
        return self.encode_eot(self.text_prompt(caption, **metas), MAX_TEXT_TOKENS)

    def lyric_ids(self, lyrics: str, language: str = "unknown") -> List[int]:
        """Token ids of ``lyric_prompt(lyrics, language)``, at most 2048."""
        return self.encode_eot(self.lyric_prompt(lyrics, language), MAX_LYRIC_TOKENS)
