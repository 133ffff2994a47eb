"""The 5 Hz LM: a Qwen3 causal LM in a C++ graph with a KV cache, and the generation loop that
turns a Request (caption, lyrics, partial metadata) into metadata plus audio codes."""
from __future__ import annotations

import dataclasses
import math
import os
from typing import TYPE_CHECKING, Callable, List, Optional

import numpy as np

from . import _core, memory
from . import fsm as _fsm
from .constants import (
    AUDIO_CODE_TOKEN,
    CODES_PER_SECOND,
    END_THINK,
    IM_END,
    KEYSCALES,
    LM_CFG_SCALE,
    LM_INSTRUCTION,
    LM_MODE_MAX_NEW_TOKENS,
    LM_NEGATIVE_PROMPT,
    LM_TEMPERATURE,
    LM_TOP_P,
    MAX_CODES,
    MAX_COT_TOKENS,
    N_AUDIO_CODES,
    THINK,
    resolve_threads,
)
from .errors import InputError, ModelFileError
from .request import Request, given_metadata
from .token_sampling import check_params, guided, sample
from .tokenizer import Tokenizer

if TYPE_CHECKING:
    from .hub import ModelSet

# Without the FSM the LM may ramble: the original caps the codes phase at 5 * duration + 500
# new tokens, and at 5 * 600 + 500 without a duration.
EXTRA_NEW_TOKENS = 500
# The four fields whose presence skips phase 1 (the original's has_all_metas).
ALL_METAS = ("bpm", "duration", "keyscale", "timesignature")


def chat(user: str, instruction: str = LM_INSTRUCTION) -> str:
    """The original's system and user messages through the Qwen3 chat template, the assistant
    turn opened (``add_generation_prompt=True``)."""
    return (f"<|im_start|>system\n# Instruction\n{instruction}\n\n<|im_end|>\n"
            f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")


def user_message(caption: str, lyrics: str) -> str:
    return f"# Caption\n{caption}\n\n# Lyric\n{lyrics}\n"


def _negative(negative_prompt: Optional[str]) -> Optional[str]:
    """The negative prompt when the user gave one (the original's _has_meaningful_negative_prompt)."""
    p = (negative_prompt or "").strip()
    return negative_prompt if p and p != LM_NEGATIVE_PROMPT else None


def cot_prompt(caption: str, lyrics: str) -> str:
    """Phase 1 (the chain of thought), conditional: ``build_formatted_prompt``."""
    return chat(user_message(caption, lyrics))


def cot_uncond_prompt(lyrics: str, negative_prompt: Optional[str] = LM_NEGATIVE_PROMPT) -> str:
    """Phase 1, unconditional: the lyrics alone, or the negative prompt as the caption."""
    neg = _negative(negative_prompt)
    return chat(user_message(neg, lyrics) if neg is not None else f"# Lyric\n{lyrics}\n")


def codes_prompt(caption: str, lyrics: str, cot: str, legacy: bool = False) -> str:
    """Phase 2 (the audio codes), conditional: the chain of thought in the assistant turn.

    Upstream's training-aligned format (``use_legacy_cfg_prompt=False``, the default of
    ACE-Step-1.5 since April 2026 and of acestep.cpp since 2026-04-22) leaves the turn open,
    ``<think>..</think>\\n\\n`` followed by the codes.  ``legacy`` is the format of the
    ace-step15-fork package: the CoT as a finished assistant message, turn closed."""
    if not legacy:
        return chat(user_message(caption, lyrics)) + cot + "\n\n"
    body = cot.split(END_THINK)[0].rstrip("\n").split(THINK)[-1].lstrip("\n")
    return chat(user_message(caption, lyrics)) + f"<think>\n{body.strip(chr(10))}\n</think>\n\n<|im_end|>\n"


def codes_uncond_prompt(caption: str, lyrics: str, negative_prompt: Optional[str] = LM_NEGATIVE_PROMPT,
                        legacy: bool = False) -> str:
    """Phase 2, unconditional: an empty chain of thought.  The user message is the bare
    negative prompt (``NO USER INPUT`` by default), as CFG dropout looked in training; with
    ``legacy`` it is the caption (or the negative prompt) and the lyrics, turn closed."""
    neg = _negative(negative_prompt)
    if not legacy:
        return chat(neg if neg is not None else LM_NEGATIVE_PROMPT) + "<think>\n\n</think>\n\n"
    return chat(user_message(neg if neg is not None else caption, lyrics)) + "<think>\n\n</think>\n\n<|im_end|>\n"


class LM:
    """The 5 Hz LM from an ``acestep-lm`` GGUF.

    ``reset(n_seq, n_ctx)`` makes a KV cache of ``n_seq`` sequences, ``prefill(seq, ids)``
    appends a prompt to one of them and ``decode(tokens)`` feeds one token to each; both return
    next-token logits.  ``generate(request)`` does the whole job."""

    def __init__(self, path: str | os.PathLike | _core.GGUFFile, device: str = "cpu", n_threads: Optional[int] = None,
                 kv_type: str = "f16"):
        # opened once, for the weights and the tokenizer (or already open: a ModelSet's)
        file = path if isinstance(path, _core.GGUFFile) else _core.GGUFFile(os.fspath(path))
        self.path, self.device, self._hparams = file.path, device, file.hparams
        self._lm = _core._LM(file, device, resolve_threads(n_threads))
        self.kv_type = kv_type
        self.tokenizer = Tokenizer.from_gguf(file)
        tok = self.tokenizer.tokenizer
        self.eos = tok.token_to_id(IM_END)
        self.first_code = tok.token_to_id(AUDIO_CODE_TOKEN.format(0))
        missing = [t for t in (IM_END, THINK, END_THINK, AUDIO_CODE_TOKEN.format(0)) if tok.token_to_id(t) is None]
        if missing:
            raise ModelFileError(f"{self.path}: the tokenizer lacks {', '.join(missing)}")
        last = tok.token_to_id(AUDIO_CODE_TOKEN.format(N_AUDIO_CODES - 1))
        if last != self.first_code + N_AUDIO_CODES - 1 or last >= self.vocab_size:
            raise ModelFileError(f"{self.path}: the {N_AUDIO_CODES} audio-code tokens are not consecutive ids "
                                 "inside the model's vocabulary")
        self._cot = _fsm.CotConstraints(self.tokenizer)

    @classmethod
    def from_models(cls, models: "str | os.PathLike | ModelSet", which: Optional[str] = None, device: str = "cpu",
                    n_threads: Optional[int] = None) -> "LM":
        """The LM of a model folder (or checkpoint folder / hub repo, see ``hub.resolve``): ``which``
        is a size in the file name ("0.6B", "1.7B", "4B") or a GGUF path; by default the largest
        LM the device's free memory holds (``hub.choose_lm``)."""
        from . import hub

        if which and os.path.isfile(which):
            return cls(which, device, n_threads)
        found = models if isinstance(models, hub.ModelSet) else hub.find_models(hub.resolve(models))
        if which:
            return cls(found.open(found.get("acestep-lm", prefer=which)), device, n_threads)
        found.get("acestep-lm")  # raises, saying how to get models, when there is none
        path = hub.choose_lm(found.files["acestep-lm"], hub.available_memory(device))
        return cls(found.open(path), device, n_threads)

    @property
    def vocab_size(self) -> int:
        return self._lm.vocab_size

    def reset(self, n_seq: int, n_ctx: int, kv_type: Optional[str] = None) -> None:
        """MemoryRefused, before the cache is made, when the device or host lacks its memory."""
        kv = kv_type or self.kv_type
        need = memory.lm_cache_need(self._hparams, int(n_seq), int(n_ctx), 4 if kv == "f32" else 2)
        memory.check([need], self.device, what=f"the LM's KV cache of {n_seq} x {n_ctx} tokens")
        self._lm.reset(int(n_seq), int(n_ctx), kv)

    def prefill(self, seq: int, ids) -> np.ndarray:
        """Appends ``ids`` to sequence ``seq``; logits after its last token: [vocab]."""
        return self._lm.prefill(int(seq), ids)

    def decode(self, tokens, lo: int = 0, hi: Optional[int] = None) -> np.ndarray:
        """One token per sequence; next logits of the vocabulary ids ``lo..hi-1`` (default all):
        [n_seq, hi - lo].  Computing only the rows the next token may take saves most of the
        output head's work in the audio-code phase."""
        return self._lm.decode(tokens, int(lo), -1 if hi is None else int(hi))

    def length(self, seq: int) -> int:
        return self._lm.length(int(seq))

    # ------------------------------------------------------------------
    def _run(self, prompts: List[List[int]], max_new: int, scale: float, constraint, stop: int,
             rng: np.random.Generator, temperature: float, top_p, top_k, tick=None) -> List[int]:
        """Decodes from cond (and uncond, when guided) prompts; the same token goes to both.
        ``tick(n)`` is called after each token with the number of tokens so far."""
        n_seq = len(prompts)
        self.reset(n_seq, max(len(p) for p in prompts) + max_new)
        rows = [self.prefill(s, p) for s, p in enumerate(prompts)]
        lo = 0  # rows[i][j] is the logit of token lo + j
        ids = constraint.allowed() if constraint is not None else None  # the FSM's choices, sorted
        out: List[int] = []
        run: List[int] = []  # tokens chosen since the last pass through the model
        while len(out) < max_new:
            if ids is not None and ids.size == 1:
                tok = int(ids[0])  # forced: nothing to draw
            else:
                logits = guided(rows[0], rows[1], scale) if n_seq == 2 else rows[0]
                if np.isnan(logits).any() or np.isposinf(logits).any():  # broken weights: no draw to make
                    raise ModelFileError(f"{self.path}: the LM's logits are NaN or infinite; its weights are broken")
                if ids is not None and not (ids[0] == lo and ids.size == logits.size):
                    logits = logits[ids - lo]  # a subset of the computed rows
                greedy = constraint is not None and constraint.greedy
                tok = int(np.argmax(logits)) if greedy else sample(logits, rng, temperature, top_p, top_k)
                tok = int(ids[tok]) if ids is not None else lo + tok
            if constraint is not None:
                constraint.advance(tok)
            out.append(tok)
            run.append(tok)
            if tick is not None:
                tick(len(out))
            if tok == stop or (constraint is not None and constraint.done):
                break
            ids = constraint.allowed() if constraint is not None else None
            if ids is not None and ids.size == 1 and len(out) < max_new:
                continue  # a forced token needs no logits: it joins this run, fed in one pass
            # The head computes only the span that holds the next token's choices.
            lo, hi = (int(ids[0]), int(ids[-1]) + 1) if ids is not None else (0, None)
            rows = list(self._lm.extend(run, lo, -1 if hi is None else hi))
            run = []
        return out

    def answer(self, prompt: str, given: Optional[dict] = None, skip_language: bool = False,
               temperature: float = LM_TEMPERATURE, top_p: Optional[float] = None, top_k: Optional[int] = None,
               seed: Optional[int] = None, fsm: bool = True, max_new_tokens: int = LM_MODE_MAX_NEW_TOKENS,
               progress: Optional[Callable[[str, int, int], None]] = None) -> str:
        """The LM's answer to ``prompt`` in the original's "understand" phase, as text (special
        tokens kept, as the original decodes with ``skip_special_tokens=False``): a chain of
        thought with a genres line (the ``given`` values forced, the language line left out
        with ``skip_language``), then free text without audio codes up to EOS or
        ``max_new_tokens``.  No CFG, as understand, inspire and format run.  Used by
        acestep_ggml.lm_modes; ``progress("lm-answer", n, 0)`` follows the tokens."""
        check_params(temperature, top_p, top_k)
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        text_ids = np.arange(self.first_code, dtype=np.int64)  # every id below the audio codes
        constraint = _fsm.CotFSM(self._cot, given or {}, understand=True, skip_language=skip_language,
                                 text_ids=text_ids, eos=self.eos) if fsm else None
        tick = (lambda n: progress("lm-answer", n, 0)) if progress else None
        if progress:
            progress("lm-answer", 0, 0)
        out = self._run([self.tokenizer.encode(prompt)], max_new_tokens, 1.0, constraint, self.eos,
                        np.random.default_rng(seed), temperature, top_p, top_k, tick=tick)
        return self.tokenizer.decode(out)

    def generate(self, request: Request, cfg_scale: float = LM_CFG_SCALE, temperature: float = LM_TEMPERATURE,
                 top_p: Optional[float] = LM_TOP_P, top_k: Optional[int] = None, seed: Optional[int] = None,
                 fsm: bool = True, rewrite_caption: bool = True, negative_prompt: Optional[str] = None,
                 legacy_cfg_prompt: bool = False,
                 progress: Optional[Callable[[str, int, int], None]] = None) -> Request:
        """Fills the request's missing metadata (phase 1, a chain of thought) and its audio codes
        (phase 2); returns a new Request, as the original's ``generate_with_stop_condition``.

        Defaults are upstream's (acestep/inference.py GenerationParams): temperature 0.85,
        CFG 2.0, top-p 0.9, no top-k.  Phase 1 is skipped when bpm, duration, keyscale and
        timesignature are all given; the CoT then holds exactly those four.  Otherwise the LM
        writes the missing fields, its own caption (``rewrite_caption``, the original's
        ``use_cot_caption``; off, the caption line is left out) and the language (unless one is
        given).  Phase 1 runs without CFG, as newest upstream does; ``legacy_cfg_prompt`` takes
        the ace-step15-fork package's prompts, CFG in phase 1 included.  The returned request
        carries the LM's caption and language, which the synth stage's prompts take.

        Codes: exactly 5 per second of a duration the user set (the original's target_codes);
        otherwise the LM ends the song itself, at most at 600 s.

        ``progress(stage, done, total)`` follows the tokens: stage "lm-metadata" (phase 1,
        ``total`` 0 as its length is not known ahead) and "lm-codes" (``total`` = the codes to
        write, 0 when the LM decides)."""
        check_params(temperature, top_p, top_k)
        if not math.isfinite(cfg_scale):
            raise InputError(f"cfg_scale must be finite, got {cfg_scale}")
        given = given_metadata(request)
        rng = np.random.default_rng(seed)
        enc = self.tokenizer.encode
        guide = cfg_scale > 1.0  # the original guides only above 1
        sample_args = (rng, temperature, top_p, top_k)

        if all(k in given for k in ALL_METAS):
            values = {k: given[k] for k in ALL_METAS}
        else:
            prompts = [enc(cot_prompt(request.caption, request.lyrics))]
            if guide and legacy_cfg_prompt:
                prompts.append(enc(cot_uncond_prompt(request.lyrics, negative_prompt)))
            constraint = _fsm.CotFSM(self._cot, given, rewrite_caption) if fsm else None
            tick = (lambda n: progress("lm-metadata", n, 0)) if progress else None
            if progress:
                progress("lm-metadata", 0, 0)
            out = self._run(prompts, MAX_COT_TOKENS, cfg_scale, constraint, self._cot.end_think, *sample_args,
                            tick=tick)
            values = dict(constraint.values if fsm else _fsm.parse_cot(self.tokenizer.decode(out)))
            values.update(given)
            if not rewrite_caption:
                values.pop("caption", None)

        cot = _fsm.cot_text(values)
        prompts = [enc(codes_prompt(request.caption, request.lyrics, cot, legacy_cfg_prompt))]
        if guide:
            prompts.append(enc(codes_uncond_prompt(request.caption, request.lyrics, negative_prompt,
                                                   legacy_cfg_prompt)))
        n_codes = CODES_PER_SECOND * int(given["duration"]) if "duration" in given else None
        tick = (lambda n: progress("lm-codes", min(n, n_codes or n), n_codes or 0)) if progress else None
        if progress:
            progress("lm-codes", 0, n_codes or 0)
        if fsm:
            constraint = _fsm.CodesFSM(n_codes or 0, n_codes or MAX_CODES, self.first_code, N_AUDIO_CODES, self.eos)
            out = self._run(prompts, (n_codes or MAX_CODES) + 1, cfg_scale, constraint, self.eos, *sample_args,
                            tick=tick)
        else:
            out = self._run(prompts, (n_codes or MAX_CODES) + EXTRA_NEW_TOKENS, cfg_scale, None, self.eos,
                            *sample_args, tick=tick)
        codes = [t - self.first_code for t in out if self.first_code <= t < self.first_code + N_AUDIO_CODES]

        keyscale = values.get("keyscale")
        return dataclasses.replace(
            request, codes=codes, caption=values.get("caption") or request.caption,
            duration=_int_or(values.get("duration"), None), bpm=_int_or(values.get("bpm"), None),
            keyscale=keyscale if keyscale in KEYSCALES else None,
            timesignature=_int_or(values.get("timesignature"), None),
            language=values.get("language") or request.language)


def _int_or(text: Optional[str], fallback):
    try:
        return int(text)
    except (TypeError, ValueError):
        return fallback
