"""Constrained decoding of the 5 Hz LM, as the reference's metadata FSM does it.

Phase 1, the chain of thought, is ``<think>\\n`` + YAML with the sorted keys bpm, caption,
duration, keyscale, language, timesignature + ``\\n</think>``.  Each line ``key: value\\n`` is
one choice among the token sequences of every allowed value (a token trie), or a single forced
sequence when the user gave the value; the caption is free text.  Phase 2 allows audio-code
tokens and EOS; with a duration the user set, EOS exactly when ``5 * duration`` codes are out
(the original's ``target_codes``), otherwise when the LM ends, at most at 600 s.

The FSMs work on token ids: ``allowed()`` is an int array of the ids the model may emit next
(already computed when the FSM is built or advanced), ``advance(id)`` moves on.

The LM's other modes (understand, inspire, format; acestep_ggml.lm_modes) run the original's
"understand" phase: the same chain of thought with a ``genres`` line between duration and
keyscale, then free text (the lyrics) up to EOS with the audio codes masked.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence

import numpy as np
import yaml

from .constants import (
    BPM_RANGE,
    DURATION_RANGE,
    END_THINK,
    KEYSCALES,
    LANGUAGES,
    MAX_CAPTION_TOKENS,
    MAX_GENRES_TOKENS,
    THINK,
    TIMESIGNATURES,
)
from .errors import ConstraintError, InputError

FIELDS = ("bpm", "caption", "duration", "keyscale", "language", "timesignature")
# The understand phase's fields (constrained_logits_processor.py _get_next_field_state, field_order).
UNDERSTAND_FIELDS = ("bpm", "caption", "duration", "genres", "keyscale", "language", "timesignature")
# Byte-level BPE spells a space U+0120, a tab U+0109, a line feed U+010A, a carriage return U+010D.
_BLANK = "\u0120\u0109\u010a\u010d"


def choices(field: str) -> List[str]:
    """Every value the FSM allows for a metadata field (caption excepted: it is always given)."""
    if field == "bpm":
        return [str(v) for v in range(BPM_RANGE[0], BPM_RANGE[1] + 1)]
    if field == "duration":
        return [str(v) for v in range(DURATION_RANGE[0], DURATION_RANGE[1] + 1)]
    if field == "keyscale":
        return list(KEYSCALES)
    if field == "language":
        return list(LANGUAGES)
    if field == "timesignature":
        return list(TIMESIGNATURES)
    raise InputError(f"{field!r} is not a metadata field with a set of values")


def cot_yaml(values: Dict[str, Optional[str]]) -> str:
    """The YAML body of the chain of thought, byte for byte as the original writes it
    (acestep/llm_inference.py ``_format_metadata_as_cot``): the given fields only, digit strings
    as integers, a ``4/4`` time signature as ``4``, then ``yaml.dump(allow_unicode=True,
    sort_keys=True)`` -- plain scalars wrap after column 80 with two-space continuation lines,
    strings YAML would read as something else (``no``, ``1e3``, ``a: b``) are single-quoted."""
    items = {}
    for key in FIELDS:
        value = values.get(key)
        if value is None:
            continue
        if key == "timesignature" and value.endswith("/4"):
            value = value.split("/")[0]
        items[key] = int(value) if value.isdigit() else value
    return yaml.dump(items, allow_unicode=True, sort_keys=True).strip() if items else ""


def cot_text(values: Dict[str, Optional[str]]) -> str:
    return f"<think>\n{cot_yaml(values)}\n</think>"


def join_caption(text: str) -> str:
    """A caption written over several YAML lines as one line: each line stripped, joined by
    single spaces (the original's ``postprocess_caption``)."""
    return " ".join(line.strip() for line in text.split("\n") if line.strip())


def read_fields(text: str) -> Dict[str, str]:
    """Every ``key: value`` field of an LM answer, values stripped, as the original's
    ``parse_lm_output`` reads them: the text inside the first ``<think>..</think>`` (else the
    text before the first audio code), lines starting with ``<`` skipped, a line that starts
    without whitespace and holds ``:`` opens a field (key lower-cased), lines starting with a
    space or tab continue it, a field without a value line is dropped; a caption's lines are
    joined (``postprocess_caption``)."""
    m = re.search(r"<think>(.*?)</think>", text, re.DOTALL)
    body = m.group(1).strip() if m else ""
    if not body:
        body = text.split("<|audio_code_")[0].strip()
    out: Dict[str, str] = {}
    key, lines = None, []

    def flush():
        if key and lines:
            value = "\n".join(lines)
            out[key] = join_caption(value) if key == "caption" else value.strip()

    for line in body.split("\n"):
        if line.strip().startswith("<"):
            continue
        if line and not line[0].isspace() and ":" in line:
            flush()
            name, first = line.split(":", 1)
            key, lines = name.strip().lower(), ([first] if first.strip() else [])
        elif line.startswith((" ", "\t")) and key:
            lines.append(line)
    flush()
    return out


def parse_cot(text: str) -> Dict[str, str]:
    """The metadata fields of a chain of thought (see ``read_fields``)."""
    return {k: v for k, v in read_fields(text).items() if k in FIELDS}


class _Trie:
    """Token-id sequences, prefix-free, each ending in a value."""

    __slots__ = ("children", "value", "ids")

    def __init__(self):
        self.children: Dict[int, "_Trie"] = {}
        self.value: Optional[str] = None
        self.ids: Optional[np.ndarray] = None

    def add(self, seq: Sequence[int], value: str) -> None:
        node = self
        for t in seq:
            if node.value is not None:
                break
            node = node.children.setdefault(int(t), _Trie())
        if node.children or node.value is not None:
            raise ConstraintError(f"constrained decoding: the tokens of {value!r} are a prefix of another value's")
        node.value = value

    def allowed(self) -> np.ndarray:
        if self.ids is None:
            self.ids = np.fromiter(sorted(self.children), dtype=np.int64, count=len(self.children))
        return self.ids


class CotConstraints:
    """The per-tokenizer part of phase 1: one trie of ``key: value\\n`` lines per field, and the
    token sets of the free-text caption."""

    def __init__(self, tokenizer):
        self.encode, self.decode = tokenizer.encode, tokenizer.decode
        tok = tokenizer.tokenizer
        self.think, self.end_think = tok.token_to_id(THINK), tok.token_to_id(END_THINK)
        self.newline_ids = tokenizer.encode("\n")
        self.caption_prefix = tokenizer.encode("caption:")
        self._vocab = tok.get_vocab(with_added_tokens=False)
        self._tries: Dict[str, _Trie] = {}
        self._caption_sets = None

    def line(self, field: str, value: str) -> List[int]:
        """The tokens of one metadata line as the LM writes it in phase 1: the value unquoted,
        as the original's FSM injects ``" {value}\\n"`` after the field name."""
        return self.encode(f"{field}: {value}\n")

    def trie(self, field: str, given: Optional[str] = None) -> _Trie:
        if given is not None:
            t = _Trie()
            t.add(self.line(field, given), given)
            return t
        if field not in self._tries:
            t = _Trie()
            for v in choices(field):
                t.add(self.line(field, v), v)
            self._tries[field] = t
        return self._tries[field]

    def caption_sets(self):
        """(ids a caption may use, those that continue it after a line break, a mask of the ids
        that hold a line break, the ids that hold more than white space).  The caption is text:
        the BPE tokens only (no special or added tokens, so no audio codes), none holding a
        backtick (the original blocks the backtick so that no code block starts).  A
        continuation line starts with a space or a tab, as YAML indents it."""
        if self._caption_sets is None:
            n = max(self._vocab.values()) + 1
            ok, cont, newline, visible = (np.zeros(n, dtype=bool) for _ in range(4))
            for text, i in self._vocab.items():
                ok[i] = "`" not in text
                cont[i] = ok[i] and text[0] in "\u0120\u0109"
                newline[i] = "\u010a" in text
                visible[i] = ok[i] and text.strip(_BLANK) != ""
            self._caption_sets = (np.flatnonzero(ok), np.flatnonzero(cont), newline, np.flatnonzero(visible))
        return self._caption_sets

    def line_sets(self):
        """(ids of a one-line free value that hold more than white space, the ids it may go on
        with: text without line breaks or backticks)."""
        _, _, newline, visible = self.caption_sets()
        text = self.caption_sets()[0]
        rest = text[~newline[text]]
        return visible[~newline[visible]], rest


class CotFSM:
    """Phase 1, as the original's MetadataConstrainedLogitsProcessor: forces ``<think>\\n``, then
    the lines bpm, caption, duration, keyscale, language, timesignature, then ``</think>``.

    Given values are forced; the others are one choice among the token sequences of every
    allowed value (a token trie).  The caption (``rewrite_caption``) is free text bounded as the
    original bounds it: at most 512 tokens, no backticks, no audio codes, continuation lines
    indented; without it the caption line is left out (the original's ``skip_caption``).  The
    first token of a language the LM chooses is taken greedily (``greedy``), as the original's
    LANGUAGE_VALUE state does.  A caption starts with a token that is more than white space, so
    that it is never empty.

    The understand phase (``understand=True``, the original's ``generation_phase="understand"``
    with ``skip_genres=False``) adds a ``genres`` line after duration: one line of free text
    (the original constrains it to its genres_vocab.txt where it finds that file; here it is
    bounded by MAX_GENRES_TOKENS), and after ``</think>`` free text up to EOS
    (``text_ids``: the ids it may use, the audio codes excluded).  ``skip_language`` leaves the
    language line out (format with a given language)."""

    def __init__(self, constraints: CotConstraints, given: Dict[str, Optional[str]], rewrite_caption: bool = True,
                 understand: bool = False, skip_language: bool = False, text_ids: Optional[np.ndarray] = None,
                 eos: Optional[int] = None):
        c = self.c = constraints
        self.values: Dict[str, str] = {}
        self._steps: List = [("forced", [c.think] + c.newline_ids)]
        for f in UNDERSTAND_FIELDS if understand else FIELDS:
            if f == "caption":
                if rewrite_caption:
                    self._steps += [("forced", c.caption_prefix), ("caption", None)]
            elif f == "genres":
                self._steps += [("forced", c.encode("genres:")), ("line", "genres")]
            elif not (f == "language" and skip_language):
                self._steps.append((f, c.trie(f, given.get(f))))
        self._steps.append(("forced", [c.end_think]))
        if understand:
            if text_ids is None or eos is None:
                raise ConstraintError("the understand phase needs the ids of its free text and the EOS id")
            self._steps.append(("text", (np.asarray(text_ids, dtype=np.int64), int(eos))))
        self._step, self._pos, self._node = 0, 0, None
        self._caption: List[int] = []
        self._visible = False  # the caption (or line) holds more than white space
        self._after_newline = False
        self._enter()

    @property
    def done(self) -> bool:
        return self._step >= len(self._steps)

    @property
    def greedy(self) -> bool:
        """True where the next token is the LM's most likely choice, not a sample."""
        return not self.done and self._steps[self._step][0] == "language" and len(self._node.children) > 1

    def _enter(self) -> None:
        self._pos = 0
        self._caption, self._visible, self._after_newline = [], False, False
        if not self.done and self._steps[self._step][0] not in ("forced", "caption", "line", "text"):
            self._node = self._steps[self._step][1]

    def _first(self, step: int) -> np.ndarray:
        kind, data = self._steps[step]
        return np.array([data[0]], dtype=np.int64) if kind == "forced" else data.allowed()

    def _newline(self) -> np.ndarray:
        return np.array(self.c.newline_ids[:1], dtype=np.int64)

    def allowed(self) -> np.ndarray:
        if self.done:
            return np.empty(0, dtype=np.int64)
        kind, data = self._steps[self._step]
        if kind == "forced":
            return np.array([data[self._pos]], dtype=np.int64)
        if kind == "caption":
            text, cont, _, visible = self.c.caption_sets()
            full = len(self._caption) >= MAX_CAPTION_TOKENS
            if not self._visible:
                return visible
            if self._after_newline:
                nxt = self._first(self._step + 1)
                return nxt if full else np.union1d(cont, nxt)
            return self._newline() if full else text
        if kind == "line":
            first, rest = self.c.line_sets()
            if not self._visible:
                return first
            return self._newline() if len(self._caption) >= MAX_GENRES_TOKENS else np.union1d(rest, self._newline())
        if kind == "text":
            return data[0]
        return self._node.allowed()

    def _next_step(self) -> None:
        self._step += 1
        self._enter()

    def advance(self, token: int) -> None:
        if self.done:
            raise ConstraintError("the chain of thought is already complete")
        token = int(token)
        kind, data = self._steps[self._step]
        if kind == "forced":
            if token != data[self._pos]:
                raise ConstraintError(f"token {token} is not allowed here (expected {data[self._pos]})")
            self._pos += 1
            if self._pos == len(data):
                self._next_step()
            return
        if kind == "caption":
            if self._after_newline and token in self._first(self._step + 1):
                # A line that does not start with whitespace: the next field, the caption is over.
                self.values["caption"] = join_caption(self.c.decode(self._caption))
                self._next_step()
                self.advance(token)
                return
            if token not in self.allowed():
                raise ConstraintError(f"token {token} is not allowed in the caption")
            self._caption.append(token)
            self._visible = True
            self._after_newline = bool(self.c.caption_sets()[2][token])
            return
        if kind == "line":
            if token not in self.allowed():
                raise ConstraintError(f"token {token} is not allowed in the {data} line")
            if self._visible and token == self.c.newline_ids[0]:
                self.values[data] = self.c.decode(self._caption).strip()
                self._next_step()
                return
            self._caption.append(token)
            self._visible = True
            return
        if kind == "text":
            ids, eos = data
            if token == eos:
                self._next_step()
            elif not np.isin(token, ids):
                raise ConstraintError(f"token {token} is not allowed in the text after {END_THINK}")
            return
        nxt = self._node.children.get(token)
        if nxt is None:
            raise ConstraintError(f"token {token} is not allowed in the {kind} line")
        self._node = nxt
        if nxt.value is not None:
            self.values[kind] = nxt.value
            self._next_step()


class CodesFSM:
    """Phase 2: audio-code tokens and EOS.  EOS is blocked until ``min_codes`` are out and forced
    once ``max_codes`` are: ``min_codes == max_codes`` is the original's exact count for a
    duration the user set; ``min_codes=0`` lets the LM end the song itself."""

    greedy = False  # the codes are always sampled

    def __init__(self, min_codes: int, max_codes: int, first_code_id: int, n_code_ids: int, eos: int):
        self.min_codes, self.max_codes, self.eos, self.count, self.done = min_codes, max_codes, eos, 0, False
        self._codes = np.arange(first_code_id, first_code_id + n_code_ids, dtype=np.int64)
        self._eos = np.array([eos], dtype=np.int64)
        self._both = np.union1d(self._eos, self._codes)

    def allowed(self) -> np.ndarray:
        if self.done:
            return np.empty(0, dtype=np.int64)
        if self.count >= self.max_codes:
            return self._eos
        return self._codes if self.count < self.min_codes else self._both

    def advance(self, token: int) -> None:
        if self.done:
            raise ConstraintError("the audio codes are already complete")
        if token == self.eos and self.count >= self.min_codes:
            self.done = True
        elif self.count < self.max_codes and self._codes[0] <= token <= self._codes[-1]:
            self.count += 1
        else:
            raise ConstraintError(f"token {token} is not allowed after {self.count} codes "
                             f"({self.min_codes}..{self.max_codes})")
