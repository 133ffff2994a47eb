"""The DiT sampler's defaults per checkpoint, decided in one place (``sampler_defaults``).

========================  =====  =====  ========  ==============================================
checkpoint                steps  shift  guidance  why
========================  =====  =====  ========  ==============================================
turbo, xl-turbo           8      3.0    1.0       upstream UI (model_config.py get_ui_control_config),
                                                  acestep.cpp ops_resolve_params; CFG-distilled
turbo-shift1              8      1.0    1.0       "distilled only on shift=1" (upstream Tutorial.md)
turbo-shift3              8      3.0    1.0       "distilled only on shift=3"
turbo-continuous          8      3.0    1.0       "continuous shift 1-5": any shift in [1, 5]
sft, xl-sft               50     3.0    7.0       upstream UI: 50 steps for SFT, shift 3, CFG
base, xl-base, others     32     3.0    7.0       upstream UI: 32 steps otherwise
========================  =====  =====  ========  ==============================================

The family is the file's own ``is_turbo`` (the GGUF key ``acestep.is_turbo``, from the
checkpoint's config.json), as acestep.cpp decides it, so a merge such as "sftturbo50" follows
the config it was converted with; the variant within the family comes from the file name's
tokens, split at ``/ \\ . _ -`` as upstream's ``_has_token`` splits them.  Upstream's inference
sets no shift per checkpoint beyond this (its library default is 1.0, its UI 3.0 everywhere);
acestep.cpp and upstream's training registry use shift 1.0 for SFT and base, which ``--shift 1``
gives.  A shift that the file's own config.json names is the default instead of the table's.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Optional, Tuple

from .constants import BASE_GUIDANCE, BASE_STEPS, SHIFT, TURBO_STEPS

SFT_STEPS = 50


@dataclass(frozen=True)
class SamplerDefaults:
    """What the sampler uses when the caller leaves it open; ``shift_range``: the shifts the
    checkpoint was trained for (None: any positive shift)."""

    variant: str
    steps: int
    shift: float
    guidance: float
    shift_range: Optional[Tuple[float, float]] = None


def name_tokens(name: str) -> set[str]:
    return {t for t in re.split(r"[/\\._\-]", name.lower()) if t}


def sampler_defaults(name: str, is_turbo: bool, config_shift: Optional[float] = None) -> SamplerDefaults:
    """The defaults of the DiT file ``name`` whose config says ``is_turbo`` (see the table above);
    ``config_shift``: the shift the file's own config.json names (``hparams.shift``), which beats
    the table's (within a turbo's range, which still warns outside it)."""
    d = _by_name(name, is_turbo)
    return d if config_shift is None else dataclasses.replace(d, shift=float(config_shift))


def _by_name(name: str, is_turbo: bool) -> SamplerDefaults:
    tokens = name_tokens(name)
    if is_turbo:
        if "continuous" in tokens:
            return SamplerDefaults("turbo-continuous", TURBO_STEPS, SHIFT, 1.0, shift_range=(1.0, 5.0))
        if "shift1" in tokens:
            return SamplerDefaults("turbo-shift1", TURBO_STEPS, 1.0, 1.0, shift_range=(1.0, 1.0))
        if "shift3" in tokens:
            return SamplerDefaults("turbo-shift3", TURBO_STEPS, 3.0, 1.0, shift_range=(3.0, 3.0))
        return SamplerDefaults("turbo", TURBO_STEPS, SHIFT, 1.0, shift_range=(1.0, 3.0))
    if "sft" in tokens:
        return SamplerDefaults("sft", SFT_STEPS, SHIFT, BASE_GUIDANCE)
    return SamplerDefaults("base", BASE_STEPS, SHIFT, BASE_GUIDANCE)
