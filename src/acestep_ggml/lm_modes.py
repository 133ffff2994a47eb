"""The 5 Hz LM's other modes, as upstream's LLMHandler runs them (ace-step15-fork
``acestep/llm_inference.py``; newer ACE-Step-1.5 keeps the same bodies in its LM task module):

==========  ===================================  =============================================
mode        the user turn                        the answer gives
==========  ===================================  =============================================
understand  the audio codes (``<|audio_code_N|>``  caption, lyrics, bpm, duration, keyscale,
            each, no separator)                  language, time signature (and genres)
inspire     ``{query}\\n\\ninstrumental: false``  a song: caption, lyrics and the metadata
format      ``# Caption\\n{caption}\\n\\n# Lyric\\n  an enhanced caption, formatted lyrics and the
            {lyrics}`` (no trailing newline)     metadata (the given values forced)
==========  ===================================  =============================================

Each is one chat prompt with its own system instruction (constants.LM_*_INSTRUCTION), decoded
without CFG in the original's "understand" phase (``LM.answer``: a chain of thought with a genres
line, then free text); the answer is parsed as ``parse_lm_output`` and
``_extract_lyrics_from_output`` parse it.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Dict, Optional, Sequence

from .constants import (
    AUDIO_CODE_TOKEN,
    BPM_RANGE,
    DURATION_RANGE,
    KEYSCALES,
    LANGUAGES,
    LM_INSPIRED_INSTRUCTION,
    LM_INSTRUMENTAL_LYRICS,
    LM_MODE_MAX_NEW_TOKENS,
    LM_NEGATIVE_PROMPT,
    LM_REWRITE_INSTRUCTION,
    LM_TEMPERATURE,
    LM_UNDERSTAND_INSTRUCTION,
    MAX_CODE,
    TIMESIGNATURES,
    UNDERSTAND_TEMPERATURE,
)
from .errors import ConstraintError, InputError
from .fsm import read_fields
from .lm import LM, chat
from .request import Request, given_metadata

MODES = ("understand", "inspire", "format")
# The LM modes of `lm` and `generate`, named as acestep.cpp's lm_mode: generate writes the
# metadata and audio codes of a request; inspire and format are as above.
LM_MODES = ("generate", "inspire", "format")
Progress = Callable[[str, int, int], None]


# -- prompts --------------------------------------------------------------------------------
def understand_prompt(codes: Sequence[int]) -> str:
    """``build_formatted_prompt_for_understanding``: the codes as one string of code tokens."""
    codes = list(codes)
    if not codes:  # understand_audio_from_codes: "No audio codes provided"
        raise InputError("understand needs audio codes; none were given")
    bad = next((c for c in codes if not 0 <= int(c) <= MAX_CODE), None)
    if bad is not None:
        raise InputError(f"audio code {bad} is outside 0..{MAX_CODE}")
    return chat("".join(AUDIO_CODE_TOKEN.format(int(c)) for c in codes), LM_UNDERSTAND_INSTRUCTION)


def inspire_prompt(query: str, instrumental: bool = False) -> str:
    """``create_sample_from_query``'s prompt: a blank query reads ``NO USER INPUT``."""
    if not query or not query.strip():
        query = LM_NEGATIVE_PROMPT
    return chat(f"{query}\n\ninstrumental: {'true' if instrumental else 'false'}", LM_INSPIRED_INSTRUCTION)


def format_prompt(caption: str, lyrics: str) -> str:
    """``format_sample_from_input``'s prompt: a blank caption reads ``NO USER INPUT``, blank
    lyrics ``[Instrumental]``."""
    return chat(f"# Caption\n{_format_caption(caption)}\n\n# Lyric\n{_format_lyrics(lyrics)}",
                LM_REWRITE_INSTRUCTION)


def _format_caption(caption: str) -> str:
    return caption if caption and caption.strip() else LM_NEGATIVE_PROMPT


def _format_lyrics(lyrics: str) -> str:
    return lyrics if lyrics and lyrics.strip() else LM_INSTRUMENTAL_LYRICS


# -- parsing --------------------------------------------------------------------------------
def extract_lyrics(text: str) -> str:
    """The text after the first ``</think>``, as ``_extract_lyrics_from_output``: stripped, a
    leading ``# Lyric`` header removed (upstream's pattern ``^#\\s*Lyri[c|cs]?\\s*\\n`` -- a
    character class, so ``# Lyric`` and ``# Lyri`` headers go but ``# Lyrics`` stays), a trailing
    ``<|im_end|>`` removed; "" without ``</think>``."""
    m = re.search(r"</think>", text)
    if not m:
        return ""
    after = text[m.end():].strip()
    if not after:
        return ""
    after = re.sub(r"^#\s*Lyri[c|cs]?\s*\n", "", after, flags=re.IGNORECASE)
    after = re.sub(r"<\|im_end\|>\s*$", "", after)
    return after.strip()


def _number(value: str):
    try:
        return int(value)
    except ValueError:
        return value


def parse_answer(text: str, mode: str, instrumental: bool = False, lyrics: str = "") -> Dict[str, Any]:
    """The metadata dict the original's mode method returns for the LM's answer ``text``
    (``parse_lm_output``: bpm and duration as int where they read as one, the other fields as
    stripped strings, caption lines joined), with its lyrics rule: understand keeps lyrics only
    when there are some; inspire writes ``[Instrumental]`` for an instrumental song without them
    and echoes ``instrumental``; format keeps the (defaulted) input ``lyrics`` without them.
    An empty answer is an empty dict, as the original returns ``{}`` for it."""
    if mode not in MODES:
        raise InputError(f"unknown LM mode {mode!r}: choose one of {', '.join(MODES)}")
    if not text:
        return {}
    fields = read_fields(text)
    metadata: Dict[str, Any] = {}
    for key in ("bpm", "caption", "duration", "genres", "keyscale", "language", "timesignature"):
        if key in fields:
            metadata[key] = _number(fields[key]) if key in ("bpm", "duration") else fields[key]
    found = extract_lyrics(text)
    if found:
        metadata["lyrics"] = found
    elif mode == "inspire" and instrumental:
        metadata["lyrics"] = LM_INSTRUMENTAL_LYRICS
    elif mode == "format":
        metadata["lyrics"] = _format_lyrics(lyrics)
    if mode == "inspire":
        metadata["instrumental"] = instrumental
    return metadata


def _in_range(value, lo: int, hi: int) -> Optional[int]:
    try:
        v = int(round(float(value)))
    except (TypeError, ValueError, OverflowError):
        return None
    return v if lo <= v <= hi else None


def to_request(metadata: Dict[str, Any], codes: Optional[Sequence[int]] = None, language: Optional[str] = None) -> Request:
    """A Request from a mode's metadata, converted as upstream's wrappers (inference.py
    ``understand_music``, ``create_sample``, ``format_sample``) convert it: a value that does not
    read (``N/A``, text where a number belongs) is left unset.  We also leave unset what the
    generate mode's constrained decoding would not accept (bpm outside 30..300, duration outside
    10..600 s, a key, language or time signature not in its lists), so the request can go on to
    ``LM.generate`` and the synth stage; ``language`` stands for a language the LM was not asked
    (format with a given language).  ConstraintError when the answer holds no caption."""
    caption = str(metadata.get("caption") or "").strip()
    if not caption:
        raise ConstraintError("the LM's answer holds no caption; with constrained decoding (the default) it "
                              "always does")
    keyscale = metadata.get("keyscale")
    lang = metadata.get("language") or language
    ts = str(metadata.get("timesignature") or "").split("/")[0].strip()
    return Request(caption=caption, lyrics=str(metadata.get("lyrics") or ""),
                   codes=list(codes) if codes is not None else None,
                   bpm=_in_range(metadata.get("bpm"), *BPM_RANGE),
                   duration=_in_range(metadata.get("duration"), *DURATION_RANGE),
                   keyscale=keyscale if keyscale in KEYSCALES else None,
                   timesignature=int(ts) if ts in TIMESIGNATURES else None,
                   language=lang if lang in LANGUAGES else None)


# -- the modes ------------------------------------------------------------------------------
def understand(lm: LM, codes: Sequence[int], *, temperature: float = UNDERSTAND_TEMPERATURE,
               top_p: Optional[float] = None, top_k: Optional[int] = None, seed: Optional[int] = None,
               fsm: bool = True, max_new_tokens: int = LM_MODE_MAX_NEW_TOKENS,
               progress: Optional[Progress] = None) -> Request:
    """Audio codes -> a Request with the LM's caption, lyrics and metadata, the codes kept (so
    the synth stage can render it again).  Defaults are ``understand_audio_from_codes``'s:
    temperature 0.3, no top-p or top-k."""
    text = lm.answer(understand_prompt(codes), temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                     fsm=fsm, max_new_tokens=max_new_tokens, progress=progress)
    return to_request(parse_answer(text, "understand"), codes=codes)


def inspire(lm: LM, query: str, *, instrumental: bool = False, language: Optional[str] = None,
            temperature: float = LM_TEMPERATURE, top_p: Optional[float] = None, top_k: Optional[int] = None,
            seed: Optional[int] = None, fsm: bool = True, max_new_tokens: int = LM_MODE_MAX_NEW_TOKENS,
            progress: Optional[Progress] = None) -> Request:
    """A query -> a song's Request (``create_sample_from_query``): ``instrumental`` goes into the
    prompt (and gives ``[Instrumental]`` lyrics when the LM writes none); a ``language`` (not
    blank, not ``unknown``) is forced into the chain of thought."""
    given = {}
    if language and language.strip() and language.strip().lower() != "unknown":
        given = given_metadata(Request(caption="-", language=language.strip()))
    text = lm.answer(inspire_prompt(query, instrumental), given=given, temperature=temperature, top_p=top_p,
                     top_k=top_k, seed=seed, fsm=fsm, max_new_tokens=max_new_tokens, progress=progress)
    return to_request(parse_answer(text, "inspire", instrumental=instrumental))


def format_request(lm: LM, request: Request, *, temperature: float = LM_TEMPERATURE, top_p: Optional[float] = None,
                   top_k: Optional[int] = None, seed: Optional[int] = None, fsm: bool = True,
                   max_new_tokens: int = LM_MODE_MAX_NEW_TOKENS, progress: Optional[Progress] = None) -> Request:
    """A request's caption and lyrics -> an enhanced caption, formatted lyrics and metadata
    (``format_sample_from_input``).  The request's bpm, duration, keyscale, time signature and
    language are forced into the chain of thought; with a language the language line is left
    out, as upstream does, and the request keeps its own.  The task fields are kept."""
    given = given_metadata(_with_caption(request))
    text = lm.answer(format_prompt(request.caption, request.lyrics), given=given,
                     skip_language="language" in given, temperature=temperature, top_p=top_p, top_k=top_k,
                     seed=seed, fsm=fsm, max_new_tokens=max_new_tokens, progress=progress)
    out = to_request(parse_answer(text, "format", lyrics=request.lyrics), language=given.get("language"))
    return _keep_task(request, out)


def _with_caption(request: Request) -> Request:
    """given_metadata checks a caption; format reads a blank one as NO USER INPUT."""
    return dataclasses.replace(request, caption=_format_caption(request.caption))


def _keep_task(old: Request, new: Request) -> Request:
    task = {f: getattr(old, f) for f in ("task", "src_audio", "ref_audio", "repainting_start", "repainting_end",
                                         "track_name", "track_classes", "audio_cover_strength")}
    return dataclasses.replace(new, **task)


def run(lm: LM, request: Request, lm_mode: str = "generate", *, instrumental: bool = False,
        **kwargs) -> Request:
    """One LM mode on a request (the `lm` CLI's ``--lm-mode``): generate (``LM.generate``, the
    metadata and audio codes), inspire (the caption is the query; the request's language is
    forced; bpm, duration, keyscale and time signature the request gives replace the LM's,
    as a user edits the fields upstream's "create sample" fills) or format.  Keyword arguments
    go to the mode's function."""
    if lm_mode == "generate":
        return lm.generate(request, **kwargs)
    if lm_mode == "inspire":
        out = inspire(lm, request.caption, instrumental=instrumental, language=request.language, **kwargs)
        mine = {k: getattr(request, k) for k in ("bpm", "duration", "keyscale", "timesignature")}
        return _keep_task(request, dataclasses.replace(out, **{k: v for k, v in mine.items() if v is not None}))
    if lm_mode == "format":
        return format_request(lm, request, **kwargs)
    raise InputError(f"unknown lm_mode {lm_mode!r}: choose one of {', '.join(LM_MODES)}")
