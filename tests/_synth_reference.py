"""diffusers' AceStepPipeline on the tiny reference models, every stage captured by hooks: the
reference the synth-stage tests (test_synth, test_tasks) compare against."""
from __future__ import annotations

import contextlib
import functools
import tempfile
from pathlib import Path
from unittest import mock

import fixtures
import numpy as np
import torch
from diffusers import AceStepPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.models.autoencoders.autoencoder_oobleck import OobleckDiagonalGaussianDistribution
from transformers import AutoTokenizer

CAPTION = "dreamy synth-pop, female vocals, 90s drum machine"
LYRICS = "[Verse]\nneon lights over the bay\n[Chorus]\nwe run, we run 夜の街"
# Every stage the synth stage keeps (keep_stages=True) that diffusers has too.
STAGES = ["text_hidden", "lyric_embed", "enc_hidden", "context"] + [f"v_t{i}" for i in range(8)] + ["audio_raw",
                                                                                                    "audio"]


def cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


@functools.lru_cache(maxsize=1)
def embedding_tokenizer_dir():
    """The text encoder's tokenizer as Qwen3-Embedding ships it (appends <|endoftext|>)."""
    path = Path(tempfile.mkdtemp(prefix="qwen3_embedding_"))
    fixtures.write_embedding_tokenizer(path)
    return path


def reference_run(models: fixtures.TinyModels, noise: np.ndarray, duration: float | None, codes=None,
                  guidance=1.0, posterior_mean: bool = False, **task) -> dict[str, np.ndarray]:
    """diffusers' pipeline on the same weights and noise.  guidance > 1 runs its base/SFT path
    (batch of cond and null, APG); ``task``: its task arguments (task_type, src_audio, ...);
    ``posterior_mean``: VAE encodes give the posterior mean instead of a draw."""
    pipe = AceStepPipeline(
        vae=models.vae, text_encoder=models.text_encoder,
        tokenizer=AutoTokenizer.from_pretrained(embedding_tokenizer_dir()),
        transformer=models.transformer, condition_encoder=models.condition_encoder,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0),
        audio_tokenizer=models.audio_tokenizer, audio_token_detokenizer=models.audio_token_detokenizer)
    pipe.is_turbo = guidance <= 1.0  # the pipeline guides only non-turbo models
    stages, hooks = {}, []
    conditions, calls = [], []

    # Forward hooks must return None: anything else replaces the module's output.
    def grab(name, pick):
        def hook(module, args, kwargs, output):
            stages.setdefault(name, pick(args, kwargs, output).detach().float().numpy()[0])
        return hook

    def on_transformer(module, args, kwargs, output):
        stages.setdefault("context", kwargs["context_latents"].float().numpy()[0])
        calls.append(output[0].detach().float().numpy()[0])  # the conditional row when guided

    def on_decoder(module, args, output):
        stages.setdefault("audio_raw", output.detach().float().numpy()[0])

    hooks.append(models.text_encoder.register_forward_hook(
        grab("text_hidden", lambda a, k, o: o.last_hidden_state), with_kwargs=True))
    embeds = []
    hooks.append(models.text_encoder.embed_tokens.register_forward_hook(lambda m, a, o: embeds.append(o) and None))
    hooks.append(models.condition_encoder.register_forward_hook(
        lambda m, a, k, o: conditions.append(o[0].detach().float().numpy()[0]) and None, with_kwargs=True))
    hooks.append(models.transformer.register_forward_hook(on_transformer, with_kwargs=True))
    hooks.append(models.vae.decoder.register_forward_hook(on_decoder))
    mean = mock.patch.object(OobleckDiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mean)
    xl = fixtures.upstream_xl_timbre(models.condition_encoder) if fixtures.is_xl(models.dit_config) else None
    try:
        with torch.no_grad(), (mean if posterior_mean else contextlib.nullcontext()), (xl or contextlib.nullcontext()):
            out = pipe(prompt=CAPTION, lyrics=LYRICS, audio_duration=duration, vocal_language="en",
                       num_inference_steps=8, guidance_scale=guidance, shift=3.0,
                       latents=torch.from_numpy(noise)[None], output_type="np", bpm=120, keyscale="F# minor",
                       timesignature="4", audio_codes=codes, **task)
    finally:
        for h in hooks:
            h.remove()
    stages["lyric_embed"] = embeds[-1].detach().float().numpy()[0]  # the last lookup is the lyric prompt
    stages["enc_hidden"] = conditions[0]
    if len(conditions) > 1:  # a cover below strength 1 also encodes the text2music prompt
        stages["enc_hidden_non_cover"] = conditions[1]
    # Blending calls the DiT a second time per step, on the non-cover condition.
    per_step = len(calls) // 8
    for i in range(8):
        stages[f"v_t{i}"] = calls[i * per_step]
    stages["audio"] = out.audios[0]
    return stages
