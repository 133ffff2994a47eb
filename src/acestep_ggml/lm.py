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

    def _run_many(self, jobs: List["_Job"], max_new: int, scale: float, stop: int, temperature: float, top_p,
                  top_k) -> List[List[int]]:
        """``_run`` for several items at once, in one KV cache and one graph per token: item j's
        sequences (cond, and uncond when guided) are rows ``k·j .. k·j + k − 1``, each step feeds
        one token to every sequence.  Every item keeps its own prompts, FSM, random stream and
        stop, so its tokens are those of ``_run`` alone; a finished item is fed ``stop`` (ignored)
        until the last one ends.

        Unguided jobs (one sequence each) run one after another through ``_run``: ggml's CPU flash
        attention takes another path for a single sequence than for several (logits differ by
        up to 5e-3 on the tests' tiny LM), which would change the tokens an item draws.  Guided
        jobs batch: 2 sequences and 2N give the same logits bit for bit."""
        k = len(jobs[0].prompts)
        if len(jobs) == 1 or k == 1:
            return [self._run(j.prompts, max_new, scale, j.constraint, stop, j.rng, temperature, top_p, top_k,
                              tick=j.tick) for j in jobs]
        self.reset(k * len(jobs), max(len(p) for j in jobs for p in j.prompts) + max_new)
        for j_i, j in enumerate(jobs):
            j.rows = [self.prefill(k * j_i + s, p) for s, p in enumerate(j.prompts)]
            j.lo = 0  # j.rows[s][m] is the logit of token lo + m
            j.ids = j.constraint.allowed() if j.constraint is not None else None
        while True:
            tokens: List[int] = []
            for j in jobs:
                if not j.done:
                    tok = j.next_token(scale, temperature, top_p, top_k)
                    j.done = (len(j.out) >= max_new or tok == stop
                              or (j.constraint is not None and j.constraint.done))
                    if not j.done and j.constraint is not None:
                        j.ids = j.constraint.allowed()
                tokens += [j.out[-1] if not j.done else stop] * k
            active = [j for j in jobs if not j.done]
            if not active:
                return [j.out for j in jobs]
            # One head span for the batch: the union of the items' next choices.
            if any(j.ids is None for j in active):
                lo, hi = 0, None
            else:
                lo, hi = min(int(j.ids[0]) for j in active), max(int(j.ids[-1]) + 1 for j in active)
            logits = self.decode(tokens, lo, hi)
            for j_i, j in enumerate(jobs):
                if not j.done:
                    j.rows, j.lo = list(logits[k * j_i:k * j_i + k]), lo

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
        return self.generate_batch([request], [seed], cfg_scale=cfg_scale, temperature=temperature, top_p=top_p,
                                   top_k=top_k, fsm=fsm, rewrite_caption=rewrite_caption,
                                   negative_prompt=negative_prompt, legacy_cfg_prompt=legacy_cfg_prompt,
                                   progress=progress)[0]

    def generate_batch(self, requests: List[Request], seeds: List[Optional[int]], cfg_scale: float = LM_CFG_SCALE,
                       temperature: float = LM_TEMPERATURE, top_p: Optional[float] = LM_TOP_P,
                       top_k: Optional[int] = None, fsm: bool = True, rewrite_caption: bool = True,
                       negative_prompt: Optional[str] = None, legacy_cfg_prompt: bool = False,
                       progress: Optional[Callable[[str, int, int], None]] = None) -> List[Request]:
        """:meth:`generate` for several items decoded together: every phase runs the items'
        sequences (each with its CFG pair) in one KV cache, one graph per token.  Item i draws
        from ``seeds[i]`` and its tokens are those of ``generate(requests[i], seed=seeds[i])``.
        ``progress`` reports the furthest item."""
        check_params(temperature, top_p, top_k)
        if not math.isfinite(cfg_scale):
            raise InputError(f"cfg_scale must be finite, got {cfg_scale}")
        if len(requests) != len(seeds) or not requests:
            raise InputError(f"generate_batch takes one seed per request: {len(requests)} requests, "
                             f"{len(seeds)} seeds")
        givens = [given_metadata(r) for r in requests]
        rngs = [np.random.default_rng(s) for s in seeds]
        enc = self.tokenizer.encode
        guide = cfg_scale > 1.0  # the original guides only above 1
        sample_args = (temperature, top_p, top_k)

        def ticker(stage: str, total: int):
            if not progress:
                return None
            furthest = [0]

            def tick(n):
                if n > furthest[0]:
                    furthest[0] = n
                    progress(stage, min(n, total or n), total)
            return tick

        values: List[dict] = [{}] * len(requests)
        phase1 = [i for i, g in enumerate(givens) if not all(k in g for k in ALL_METAS)]
        for i, g in enumerate(givens):
            if i not in phase1:
                values[i] = {k: g[k] for k in ALL_METAS}
        if phase1:
            tick = ticker("lm-metadata", 0)
            jobs = []
            for i in phase1:
                prompts = [enc(cot_prompt(requests[i].caption, requests[i].lyrics))]
                if guide and legacy_cfg_prompt:
                    prompts.append(enc(cot_uncond_prompt(requests[i].lyrics, negative_prompt)))
                constraint = _fsm.CotFSM(self._cot, givens[i], rewrite_caption) if fsm else None
                jobs.append(_Job(prompts, constraint, rngs[i], tick))
            if progress:
                progress("lm-metadata", 0, 0)
            outs = self._run_many(jobs, MAX_COT_TOKENS, cfg_scale, self._cot.end_think, *sample_args)
            for i, j, out in zip(phase1, jobs, outs):
                v = dict(j.constraint.values if fsm else _fsm.parse_cot(self.tokenizer.decode(out)))
                v.update(givens[i])
                if not rewrite_caption:
                    v.pop("caption", None)
                values[i] = v

        # Phase 2: items of one length of codes run together (the FSM's count is per item; one
        # max_new for the cache).
        n_codes = [CODES_PER_SECOND * int(g["duration"]) if "duration" in g else None for g in givens]
        codes_out: List[List[int]] = [[] for _ in requests]
        for n in dict.fromkeys(n_codes):
            group = [i for i, c in enumerate(n_codes) if c == n]
            tick = ticker("lm-codes", n or 0)
            jobs = []
            for i in group:
                r = requests[i]
                prompts = [enc(codes_prompt(r.caption, r.lyrics, _fsm.cot_text(values[i]), legacy_cfg_prompt))]
                if guide:
                    prompts.append(enc(codes_uncond_prompt(r.caption, r.lyrics, negative_prompt, legacy_cfg_prompt)))
                constraint = (_fsm.CodesFSM(n or 0, n or MAX_CODES, self.first_code, N_AUDIO_CODES, self.eos)
                              if fsm else None)
                jobs.append(_Job(prompts, constraint, rngs[i], tick))
            if progress:
                progress("lm-codes", 0, n or 0)
            max_new = (n or MAX_CODES) + (1 if fsm else EXTRA_NEW_TOKENS)
            for i, out in zip(group, self._run_many(jobs, max_new, cfg_scale, self.eos, *sample_args)):
                codes_out[i] = out

        results = []
        for r, v, out in zip(requests, values, codes_out):
            codes = [t - self.first_code for t in out if self.first_code <= t < self.first_code + N_AUDIO_CODES]
            keyscale = v.get("keyscale")
            results.append(dataclasses.replace(
                r, codes=codes, caption=v.get("caption") or r.caption,
                duration=_int_or(v.get("duration"), None), bpm=_int_or(v.get("bpm"), None),
                keyscale=keyscale if keyscale in KEYSCALES else None,
                timesignature=_int_or(v.get("timesignature"), None),
                language=v.get("language") or r.language))
        return results


@dataclasses.dataclass
class _Job:
    """One item of ``LM._run_many``: its prompts, FSM, random stream and the tokens so far."""

    prompts: List[List[int]]
    constraint: object
    rng: np.random.Generator
    tick: Optional[Callable[[int], None]] = None
    out: List[int] = dataclasses.field(default_factory=list)
    done: bool = False
    rows: list = dataclasses.field(default_factory=list)
    lo: int = 0
    ids: Optional[np.ndarray] = None

    def next_token(self, scale: float, temperature: float, top_p, top_k) -> int:
        """Chooses, records and reports the next token exactly as ``LM._run`` does."""
        ids, c = self.ids, self.constraint
        if ids is not None and ids.size == 1:
            tok = int(ids[0])  # forced: nothing to draw
        else:
            logits = guided(self.rows[0], self.rows[1], scale) if len(self.rows) == 2 else self.rows[0]
            if ids is not None and not (ids[0] == self.lo and ids.size == logits.size):
                logits = logits[ids - self.lo]
            greedy = c is not None and c.greedy
            tok = int(np.argmax(logits)) if greedy else sample(logits, self.rng, temperature, top_p, top_k)
            tok = int(ids[tok]) if ids is not None else self.lo + tok
        if c is not None:
            c.advance(tok)
        self.out.append(tok)
        if self.tick is not None:
            self.tick(len(self.out))
        return tok


def _int_or(text: Optional[str], fallback):
    try:
        return int(text)
    except (TypeError, ValueError):
        return fallback
