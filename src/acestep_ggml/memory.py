"""A request's memory need, estimated from the files' hyperparameters, the duration and the batch,
and checked against the memory that is free before any work starts (docs/hardening.md, "Devices,
threads and memory"): a song that cannot fit is refused with ``MemoryRefused`` instead of being
killed by the OOM killer halfway.

The estimate is per stage, since stages run one after another and each frees its weights when it
is done (unless ``keep_loaded``): a stage needs its weights (the file's bytes) plus its compute
memory, from formulas over the shapes of the largest activations that ggml's allocator keeps alive
at once, calibrated against measured peaks (tests/test_memory.py holds the estimate to a stated
factor of them).  ``ACESTEP_GGML_MEMORY_LIMIT`` (parsed by the core) caps the free figure.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import _core
from .errors import MemoryRefused

MiB = 1 << 20
# Graph metadata, the scheduler's tables, thread stacks and Python's arrays of a stage: measured
# at 4 to 13 MiB of peak growth for the tiny test models.
OVERHEAD = 64 * MiB
# Live activations of one transformer layer, in rows of the model's width: the residual stream,
# the normed input, q/k/v and the attention output (4 + 2 of the width) and the MLP's gate, up
# and product (3 of the intermediate width); ggml's allocator reuses most of them in place, and the
# counts below (4 and 2) are those that matched the measured peaks (tests/test_memory.py).
LAYER_ROWS_HIDDEN, LAYER_ROWS_INTERMEDIATE = 4, 2
# Upper bound of the tokens the text encoder reads (instruction, caption and metadata).
TEXT_TOKENS = 1024
# The most prefill tokens counted for the LM's activations.
LM_CONTEXT_EXTRA = 4096


@dataclass
class Need:
    """Bytes a stage needs, and what it was estimated from."""

    stage: str
    weights: int
    compute: int

    @property
    def total(self) -> int:
        return self.weights + self.compute


def _size(path) -> int:
    return os.path.getsize(path) if path and Path(path).is_file() else 0


def _layer_bytes(tokens: int, hidden: int, intermediate: int, heads: int, matmul_attention: bool) -> int:
    rows = LAYER_ROWS_HIDDEN * hidden + LAYER_ROWS_INTERMEDIATE * intermediate
    attn = 2 * heads * tokens * tokens if matmul_attention else 0  # scores and probabilities
    return 4 * (tokens * rows + attn)


def matmul_attention() -> bool:
    """Attention forced to the matmul form (its scores take memory), read by the core's parser."""
    return _core.attention_mode() == "matmul"


def synth_needs(files: dict, paths: dict, duration: float, guidance: float, src_frames: int = 0,
                songs: int = 1) -> list[Need]:
    """The synth stage's needs, stage by stage, for ``songs`` songs of ``duration`` seconds rendered
    together: text encoder, condition encoder, DiT (two rows per song when ``guidance`` > 1:
    classifier-free guidance), VAE (decoding tile by tile; encoding ``src_frames`` latent frames of
    source audio); every song's audio is kept until the last is done."""
    dit, text, vae = files["dit"].hparams, files["text"].hparams, files["vae"].hparams
    frames = math.ceil(duration * vae.sampling_rate / vae.hop_length)
    mm = matmul_attention()
    text_compute = _layer_bytes(TEXT_TOKENS, text.hidden_size, text.intermediate_size, text.num_attention_heads, mm)
    # The DiT: patched frames, times the batch; its inputs, context and outputs are F32 rows of
    # the latent channels; the encoder states are few (text and lyrics).
    batch = (2 if guidance > 1.0 else 1) * songs
    patched = math.ceil(frames / max(1, dit.patch_size))
    dit_compute = batch * _layer_bytes(patched, dit.hidden_size, dit.intermediate_size, dit.num_attention_heads, mm)
    dit_compute += 4 * batch * frames * (dit.in_channels + 4 * dit.audio_acoustic_hidden_dim)
    # The VAE decodes tiles of at most DEFAULT_CHUNK frames (plus overlap): its activations are
    # the decoder's channels at each upsampling stage's rate, three alive at a time, over a tile.
    from .models import DEFAULT_CHUNK, DEFAULT_OVERLAP

    tile = min(frames, DEFAULT_CHUNK + 2 * DEFAULT_OVERLAP)
    per_frame, rate = 0, 1
    mults = list(vae.channel_multiples)
    for ratio, mult in zip(reversed(list(vae.downsampling_ratios)), reversed(mults)):
        rate *= ratio
        per_frame = max(per_frame, vae.decoder_channels * mult * rate)
    vae_compute = 3 * 4 * tile * per_frame
    # The whole song's audio, as F32 samples: the decoder's output, its peak-normalised copy and
    # the result handed back.
    audio = 3 * 4 * frames * vae.hop_length * vae.audio_channels * songs
    src_compute = 3 * 4 * min(src_frames, DEFAULT_CHUNK) * per_frame if src_frames else 0
    needs = [
        Need("text encoder", _size(paths["text"]), text_compute + OVERHEAD),
        Need("condition encoder", _size(paths["dit"]), text_compute + OVERHEAD),
        Need("DiT", _size(paths["dit"]), dit_compute + OVERHEAD),
        Need("VAE", _size(paths["vae"]), vae_compute + audio + src_compute + OVERHEAD),
    ]
    return needs


def lm_cache_need(hparams, n_seq: int, n_ctx: int, kv_bytes: int = 2) -> Need:
    """The 5 Hz LM's memory for a context of ``n_ctx`` tokens in each of ``n_seq`` sequences, its
    weights already loaded: the KV cache (F16: 2 bytes a value), the logits of a step and the
    prefill's activations."""
    h = hparams
    kv = 2 * kv_bytes * h.num_hidden_layers * n_seq * n_ctx * h.num_key_value_heads * h.head_dim
    logits = 4 * 2 * n_seq * h.vocab_size
    prefill = _layer_bytes(
        min(n_ctx, LM_CONTEXT_EXTRA), h.hidden_size, h.intermediate_size, h.num_attention_heads, matmul_attention()
    )
    return Need("LM", 0, kv + logits + prefill + OVERHEAD)


def host_available() -> Optional[int]:
    """Bytes the host can still give: Linux's MemAvailable, lowered to the room left under this
    process's cgroup memory limit when one is set (v2 memory.max, else v1); None if unknown."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # "max", or v1's huge "no limit"
            found.append(max(0, int(limit) - usage))
        break
    return min(found) if found else None


def device_free(device: str) -> Optional[tuple[str, int]]:
    """(name, free bytes) of a non-CPU device as ggml reports it (ggml_backend_dev_memory)."""
    if device.startswith("cpu"):
        return None
    from . import backends

    gpus = [d for d in backends() if d["type"] != "cpu"]
    index = int(device.split(":", 1)[1]) if ":" in device and device.split(":", 1)[1].isdigit() else 0
    if index < len(gpus) and gpus[index]["memory_free"]:
        return gpus[index]["name"], int(gpus[index]["memory_free"])
    return None


def check(needs: list[Need], device: str, keep_loaded: bool = False, what: str = "this request") -> None:
    """Raises MemoryRefused when ``needs`` (stages run one after another) exceed the free memory:
    the device's for a GPU, the host's on the CPU, each capped by ACESTEP_GGML_MEMORY_LIMIT."""
    if not needs:
        return
    if keep_loaded:  # every model stays: all weights at once, plus the largest stage's compute
        peak = Need("all stages", sum(n.weights for n in needs), max(n.compute for n in needs))
    else:
        peak = max(needs, key=lambda n: n.total)
    limit = _core.memory_limit()
    gpu = device_free(device)
    where, free = gpu if gpu else ("the host", host_available())
    if limit >= 0:
        free = limit if free is None else min(free, limit)
        where += " (ACESTEP_GGML_MEMORY_LIMIT)" if free == limit else ""
    if free is None or peak.total <= free:
        return
    raise MemoryRefused(
        f"{what} needs about {peak.total / MiB:,.0f} MiB ({peak.stage}: {peak.weights / MiB:,.0f} MiB "
        f"of weights, {peak.compute / MiB:,.0f} MiB of compute memory) but {where} has "
        f"{free / MiB:,.0f} MiB free; refused before any work (a shorter song, a smaller model "
        f"or more free memory would fit)",
        need=peak.total,
        available=free,
    )
