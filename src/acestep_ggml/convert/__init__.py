"""Checkpoint -> GGUF conversion, without torch: ``checkpoint`` reads safetensors and torch.save
files, ``gguf_writer`` streams a GGUF file, ``converter`` maps the original ACE-Step 1.5 layout,
a diffusers pipeline or one component folder of either to the published GGUFs."""
from __future__ import annotations

from .converter import DTYPES, Component, convert, find_components, original_dit_name, plan, tensor_type

__all__ = ["DTYPES", "Component", "convert", "find_components", "original_dit_name", "plan", "tensor_type"]
