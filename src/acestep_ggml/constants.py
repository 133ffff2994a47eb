"""The fixed values of ACE-Step 1.5 that this package uses, each defined once: rates, token ids,
prompt strings, the ranges of the metadata, limits and defaults.  Where a value is the original
ACE-Step code's, the comment says where it comes from."""
from __future__ import annotations

import os
from typing import Optional

# -- rates ------------------------------------------------------------------------------------
# The published VAE's config (a VAE file states its own; these are the fallbacks): 48 kHz stereo,
# a hop of 2*4*4*6*10 = 1920 samples, so 25 latent frames a second.
SAMPLE_RATE = 48000
VAE_DOWNSAMPLING_RATIOS = (2, 4, 4, 6, 10)
# The LM writes 5 audio codes a second; the detokenizer expands each code into 5 latent frames
# (its pool window: 25 Hz latents / 5 Hz codes).
CODES_PER_SECOND = 5
LATENTS_PER_CODE = 5

# -- token ids --------------------------------------------------------------------------------
# Qwen3's <|endoftext|>: appended to the DiT's prompts by the Qwen3-Embedding tokenizer's post-processor.
ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 151643
IM_END = "<|im_end|>"  # the LM's end of turn, its EOS
THINK, END_THINK = "<think>", "</think>"
# The LM's audio codes follow Qwen3's added tokens: <|audio_code_N|> = 151669 + N, N < 64000
# (FSQ levels 8*8*8*5*5*5).
AUDIO_CODE_TOKEN = "<|audio_code_{}|>"
FIRST_AUDIO_CODE = 151669
N_AUDIO_CODES = 64000
MAX_CODE = N_AUDIO_CODES - 1

# -- prompt strings (the original's acestep/constants.py) --------------------------------------
DIT_INSTRUCTION = "Fill the audio semantic mask based on the given conditions:"  # DEFAULT_DIT_INSTRUCTION
LM_INSTRUCTION = "Generate audio semantic tokens based on the given conditions:"  # DEFAULT_LM_INSTRUCTION
# The instruction line of the DiT's text prompt, per task (TASK_INSTRUCTIONS).
TASK_INSTRUCTIONS = {
    "text2music": DIT_INSTRUCTION,
    "repaint": "Repaint the mask area based on the given conditions:",
    "cover": LM_INSTRUCTION,
    # Upstream ACE-Step-1.5 (newer than the package, PR #1142) and acestep.cpp: a cover whose
    # context is the source's own latents, without the 5 Hz code round trip; same instruction.
    "cover-nofsq": LM_INSTRUCTION,
    "extract": "Extract the {TRACK_NAME} track from the audio:",
    "extract_default": "Extract the track from the audio:",
    "lego": "Generate the {TRACK_NAME} track based on the audio context:",
    "lego_default": "Generate the track based on the audio context:",
    "complete": "Complete the input track with {TRACK_CLASSES}:",
    "complete_default": "Complete the input track:",
}
# The system instructions of the LM's other modes (DEFAULT_LM_UNDERSTAND_INSTRUCTION,
# DEFAULT_LM_INSPIRED_INSTRUCTION, DEFAULT_LM_REWRITE_INSTRUCTION; see acestep_ggml.lm_modes).
LM_UNDERSTAND_INSTRUCTION = "Understand the given musical conditions and describe the audio semantics accordingly:"
LM_INSPIRED_INSTRUCTION = "Expand the user's input into a more detailed and specific musical description:"
LM_REWRITE_INSTRUCTION = "Format the user's input into a more detailed and specific musical description:"
# What inspire and format put in place of a blank query, caption or lyrics (llm_inference.py
# create_sample_from_query, format_sample_from_input).
LM_INSTRUMENTAL_LYRICS = "[Instrumental]"
# The LM's unconditional user message when no negative prompt is given (the original's default
# negative_prompt, acestep/llm_inference.py).
LM_NEGATIVE_PROMPT = "NO USER INPUT"

# -- metadata: the values the LM may write (the original's acestep/constants.py) -----------------
MAX_DURATION = 600  # seconds (DURATION_MAX); the synth stage takes the same bound
BPM_RANGE = (30, 300)  # BPM_MIN, BPM_MAX
DURATION_RANGE = (10, MAX_DURATION)  # DURATION_MIN, DURATION_MAX
TIMESIGNATURES = ("2", "3", "4", "6")  # VALID_TIME_SIGNATURES
LANGUAGES = (  # VALID_LANGUAGES
    "ar", "az", "bg", "bn", "ca", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fr", "he", "hi", "hr",
    "ht", "hu", "id", "is", "it", "ja", "ko", "la", "lt", "ms", "ne", "nl", "no", "pa", "pl", "pt", "ro",
    "ru", "sa", "sk", "sr", "sv", "sw", "ta", "te", "th", "tl", "tr", "uk", "ur", "vi", "yue", "zh", "unknown",
)
# VALID_KEYSCALES: the original accepts Unicode sharps and flats next to ASCII ones.
KEYSCALES = tuple(f"{n}{a} {m}" for n in "ABCDEFG" for a in ("", "#", "b", "\u266f", "\u266d")
                  for m in ("major", "minor"))
# The synth stage renders any whole number of seconds up to MAX_DURATION; 120 when none is given.
MIN_SYNTH_DURATION = 1
DEFAULT_DURATION = 120

# -- limits -----------------------------------------------------------------------------------
MAX_CODES = CODES_PER_SECOND * MAX_DURATION  # the most audio codes one song takes
MAX_LATENT_FRAMES = MAX_CODES * LATENTS_PER_CODE  # the most latent frames the DiT is given (600 s at 25 Hz)
# The DiT's prompts, in tokens, as the original pipeline truncates them.
MAX_TEXT_TOKENS = 256
MAX_LYRIC_TOKENS = 2048
# The original's caption bound (constrained_logits_processor.py: caption_token_count >= 512
# forces a newline).
MAX_CAPTION_TOKENS = 512
# Phase 1's bound (acestep.cpp pipeline-lm.cpp); with the FSM the CoT ends well before (a caption
# of at most MAX_CAPTION_TOKENS tokens and five short lines).
MAX_COT_TOKENS = 2048

# -- defaults ---------------------------------------------------------------------------------
# The DiT sampler: upstream's defaults (acestep/gradio_ui/events/generation_handlers.py,
# get_model_type_ui_settings): turbo 8 steps without guidance, base/SFT 32 steps at 7.0; shift 3.
TURBO_STEPS = 8
BASE_STEPS = 32
BASE_GUIDANCE = 7.0
SHIFT = 3.0
# The solvers (upstream: infer_method ode/sde with sampler_mode euler/heun; acestep.cpp: solver
# euler/sde/dpm3m/stork4) and STORK4's ROCK4 degree (acestep.cpp task-types.h: 10; its tables end at 148).
SOLVERS = ("euler", "sde", "dpm3m", "stork4", "heun")
STORK_SUBSTEPS = 10
STORK_SUBSTEPS_RANGE = (2, 148)
# DCW (upstream acestep/models/common/dcw_correction.py): the modes and upstream's scalers.
DCW_MODES = ("low", "high", "double", "pix")
DCW_SCALER = 0.05
DCW_HIGH_SCALER = 0.02
# Repaint (upstream generate_music._resolve_repaint_config): how much of the source outside the
# window is held: conservative = injection through every step, 25 latent frames and 0.05 s of
# crossfade; balanced scales those by 1 - strength; aggressive none (the diffusers pipeline's
# behaviour, our default; upstream's is balanced at 0.5).
REPAINT_MODES = ("conservative", "balanced", "aggressive")
REPAINT_MODE = "aggressive"
REPAINT_STRENGTH = 0.5
REPAINT_CROSSFADE_FRAMES = 25
REPAINT_CROSSFADE_SECONDS = 0.05
# The LM's sampling: upstream's acestep/inference.py GenerationParams (lm_cfg_scale,
# lm_temperature, lm_top_p; lm_top_k 0, i.e. off).
LM_CFG_SCALE = 2.0
LM_TEMPERATURE = 0.85
LM_TOP_P = 0.9
# Understand samples cooler (LLMHandler.understand_audio_from_codes: temperature 0.3, no top-p);
# inspire and format take 0.85 without top-p (create_sample_from_query, format_sample_from_input).
UNDERSTAND_TEMPERATURE = 0.3
# The answer of understand, inspire and format: at most max_model_len (4096) - 64 new tokens
# (llm_inference.py, the pt backend's bound).
LM_MODE_MAX_NEW_TOKENS = 4096 - 64
# A genres line is free text when no vocabulary constrains it (upstream without genres_vocab.txt);
# our bound keeps a model that never writes a line break from running on.
MAX_GENRES_TOKENS = 64


def resolve_threads(n_threads: Optional[int]) -> int:
    """CPU threads of a model: the caller's number, else all cores, as ggml's CPU backend is
    fastest with them."""
    return int(n_threads) if n_threads else (os.cpu_count() or 1)
