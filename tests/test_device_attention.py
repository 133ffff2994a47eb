"""Attention is chosen per device and shape (nn/attention.cpp): flash attention where the device's
kernel covers the head size, types and mask, else the matmul form.  Models with head sizes that
Vulkan's flash kernel lacks (it needs multiples of 8) run wholly on the device under the strict
switch and match diffusers; on the CPU every shape runs flash attention, as before."""

from __future__ import annotations

import fixtures
import numpy as np
import pytest
from _synth_reference import CAPTION, LYRICS, STAGES, cosine, reference_run
from _vae_gguf import make_reference as make_vae_reference
from conftest import SYNTH_VAE, fresh_seed

import acestep_ggml as A
from acestep_ggml.convert import convert
from acestep_ggml.exchange import Request
from acestep_ggml.pipeline import Synthesizer


# The held-out tiny config has head sizes 12 and 16: each is given once to the text
# encoder and once to the DiT's models (condition encoder, decoder, detokenizer), so that one
# process builds both attention forms on a device whose kernel lacks 12.
@pytest.mark.parametrize("text_head, dit_head", [(12, 16), (16, 12)], ids=["text12-dit16", "text16-dit12"])
def test_synth_with_odd_head_sizes_stays_on_device_and_matches_diffusers(
    text_head, dit_head, lm_tokenizer_dir, tmp_path_factory, device, strict_device
):
    seed = fresh_seed("odd-head model")
    # Widths stay multiples of 32 where Q8_0 would need them; only the head size changes.
    models = fixtures.build_models(seed, dit=dict(head_dim=dit_head), qwen3=dict(head_dim=text_head), vae=SYNTH_VAE)
    models.vae.load_state_dict(make_vae_reference(SYNTH_VAE, seed).state_dict())
    root = fixtures.save_original(models, tmp_path_factory.mktemp("odd-head") / "checkpoints", lm_tokenizer_dir)
    folder = tmp_path_factory.mktemp("odd-head-f32")
    convert(root, folder, dtype="f32", quiet=True)
    duration = 2
    noise = np.random.default_rng(seed).standard_normal((duration * 25, 64), dtype=np.float32)
    req = Request(caption=CAPTION, lyrics=LYRICS, bpm=120, keyscale="F# minor", timesignature=4, language="en", duration=duration)
    # Under ACESTEP_GGML_STRICT_DEVICE=1 (the strict_device fixture) a node off the device raises.
    ours = Synthesizer(folder, device=device)(req, init_noise=noise, keep_stages=True, seed=0).stages
    ref = reference_run(models, noise, duration)
    table = {k: cosine(ours[k], ref[k]) for k in STAGES}
    print("\nstage cosines:", {k: round(v, 8) for k, v in table.items()})
    # F32 weights on both sides, as in test_synth's F32 test: every stage far above 0.999.
    bad = {k: v for k, v in table.items() if v < 0.999}
    assert not bad, f"model seed {seed}: stages below 0.999: {bad}"


def test_attention_switch_rejects_an_unknown_form(synth_models, monkeypatch):
    monkeypatch.setenv("ACESTEP_GGML_ATTN", "fast")
    _, _, folders, _ = synth_models
    req = Request(caption=CAPTION, lyrics=LYRICS, duration=1)
    with pytest.raises(A.InputError, match="ACESTEP_GGML_ATTN must be 'flash' or 'matmul', got 'fast'"):
        Synthesizer(folders["f32"])(req, seed=0)
