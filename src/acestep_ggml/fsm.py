"""Constrained decoding of the 5 Hz LM, as the reference's metadata FSM does it.

Phase 1, the chain of thought, is ``<think>\\n`` + YAML with the sorted keys bpm, caption,
duration, keyscale, language, timesignature + ``\\n</think>``.  Each line ``key: value\\n`` is
one choice among the token sequences of every allowed value (a token trie), or a single forced
sequence when the user gave the value.  Phase 2 allows audio-code tokens only, then EOS exactly
when ``5 * duration`` codes are out.

The FSMs work on token ids: ``allowed()`` is an int array of the ids the model may emit next
(already computed when the FSM is built or advanced), ``advance(id)`` moves on.
"""
from __future__ import annotations

import json
import re
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

FIELDS = ("bpm", "caption", "duration", "keyscale", "language", "timesignature")
BPM_RANGE = (30, 300)
DURATION_RANGE = (10, 600)
TIMESIGNATURES = ("2", "3", "4", "6")
LANGUAGES = (
    "ar", "az", "bg", "bn", "ca", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fr", "he", "hi", "hr",
    "ht", "hu", "id", "is", "it", "ja", "ko", "la", "lt", "ms", "ne", "nl", "no", "pa", "pl", "pt", "ro",
    "ru", "sa", "sk", "sr", "sv", "sw", "ta", "te", "th", "tl", "tr", "uk", "ur", "vi", "yue", "zh", "unknown",
)
# The reference accepts Unicode sharps and flats next to ASCII ones.
KEYSCALES = tuple(f"{n}{a} {m}" for n in "ABCDEFG" for a in ("", "#", "b", "\u266f", "\u266d")
                  for m in ("major", "minor"))
CODES_PER_SECOND = 5


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
    raise KeyError(field)


_PLAIN = re.compile(r"[^\s\-?:,\[\]{}#&*!|>'\"%@`][^\n\t]*")
_RESERVED = re.compile(r"(?i)(true|false|yes|no|on|off|null|~|[-+]?[0-9][0-9_.:eE+-]*)")


def yaml_scalar(text: str) -> str:
    """``text`` as a one-line YAML scalar: plain where YAML reads it back unchanged, else
    double-quoted (a JSON string is valid YAML)."""
    if (_PLAIN.fullmatch(text) and not text.endswith((" ", ":")) and ": " not in text and " #" not in text
            and not _RESERVED.fullmatch(text)):
        return text
    return json.dumps(text, ensure_ascii=False)


# Fields whose values are text: written as YAML strings, quoted where YAML would read them as
# something else (the language code "no" is a YAML boolean).  The others are integers.
TEXT_FIELDS = ("caption", "keyscale", "language")


def _field_text(field: str, value: str) -> str:
    return yaml_scalar(value) if field in TEXT_FIELDS else value


def cot_yaml(values: Dict[str, str]) -> str:
    """The YAML body of the chain of thought (sorted keys, given fields only)."""
    return "\n".join(f"{k}: {_field_text(k, values[k])}" for k in FIELDS if values.get(k) is not None)


def cot_text(values: Dict[str, str]) -> str:
    return f"<think>\n{cot_yaml(values)}\n</think>"


def parse_cot(text: str) -> Dict[str, str]:
    """``key: value`` lines of a chain of thought (the think tags, if present, are dropped)."""
    body = text.split("<think>", 1)[-1].split("</think>", 1)[0]
    out = {}
    for line in body.split("\n"):
        key, sep, value = line.partition(": ")
        if sep and key in FIELDS:
            value = value.strip()
            if key in TEXT_FIELDS and value.startswith('"'):
                try:
                    value = json.loads(value)
                except ValueError:
                    pass
            out[key] = value
    return out


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
            raise ValueError(f"constrained decoding: the tokens of {value!r} are a prefix of another value's")
        node.value = value

    def allowed(self) -> np.ndarray:
        if self.ids is None:
            self.ids = np.fromiter(sorted(self.children), dtype=np.int64, count=len(self.children))
        return self.ids


class CotConstraints:
    """The per-tokenizer part of phase 1: one trie of ``key: value\\n`` lines per field."""

    def __init__(self, encode: Callable[[str], List[int]], think: int, end_think: int, newline_ids: List[int]):
        self.encode = encode
        self.think, self.end_think, self.newline_ids = think, end_think, list(newline_ids)
        self._tries: Dict[str, _Trie] = {}

    def line(self, field: str, value: str) -> List[int]:
        return self.encode(f"{field}: {_field_text(field, value)}\n")

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


class CotFSM:
    """Phase 1: forces ``<think>\\n``, then one line per field (given values forced), then ``</think>``."""

    def __init__(self, constraints: CotConstraints, given: Dict[str, Optional[str]]):
        c = constraints
        self.values: Dict[str, str] = {}
        self._steps: List = [("forced", [c.think] + c.newline_ids)]
        for f in FIELDS:
            self._steps.append((f, c.trie(f, given.get(f))))
        self._steps.append(("forced", [c.end_think]))
        self._step, self._pos, self._node = 0, 0, None
        self._enter()

    @property
    def done(self) -> bool:
        return self._step >= len(self._steps)

    def _enter(self) -> None:
        self._pos = 0
        if not self.done and self._steps[self._step][0] != "forced":
            self._node = self._steps[self._step][1]

    def allowed(self) -> np.ndarray:
        if self.done:
            return np.empty(0, dtype=np.int64)
        kind, data = self._steps[self._step]
        if kind == "forced":
            return np.array([data[self._pos]], dtype=np.int64)
        return self._node.allowed()

    def advance(self, token: int) -> None:
        if self.done:
            raise ValueError("the chain of thought is already complete")
        kind, data = self._steps[self._step]
        if kind == "forced":
            if token != data[self._pos]:
                raise ValueError(f"token {token} is not allowed here (expected {data[self._pos]})")
            self._pos += 1
            if self._pos == len(data):
                self._step += 1
                self._enter()
            return
        nxt = self._node.children.get(int(token))
        if nxt is None:
            raise ValueError(f"token {token} is not allowed in the {kind} line")
        self._node = nxt
        if nxt.value is not None:
            self.values[kind] = nxt.value
            self._step += 1
            self._enter()


class CodesFSM:
    """Phase 2: audio-code tokens until ``n_codes`` are out, then EOS."""

    def __init__(self, n_codes: int, first_code_id: int, n_code_ids: int, eos: int):
        self.n_codes, self.eos, self.count, self.done = n_codes, eos, 0, False
        self._codes = np.arange(first_code_id, first_code_id + n_code_ids, dtype=np.int64)
        self._eos = np.array([eos], dtype=np.int64)

    def allowed(self) -> np.ndarray:
        if self.done:
            return np.empty(0, dtype=np.int64)
        return self._eos if self.count >= self.n_codes else self._codes

    def advance(self, token: int) -> None:
        if self.done:
            raise ValueError("the audio codes are already complete")
        if token == self.eos and self.count >= self.n_codes:
            self.done = True
        elif self.count < self.n_codes and self._codes[0] <= token <= self._codes[-1]:
            self.count += 1
        else:
            raise ValueError(f"token {token} is not allowed after {self.count} of {self.n_codes} codes")
