"""Tiny random AutoencoderOobleck references and their acestep-vae GGUF files, for tests and benchmarks."""
from __future__ import annotations

import json

import gguf
import torch
from diffusers import AutoencoderOobleck

# Real ACE-Step 1.5 ratios and multiples with narrow layers, so that a parity test
# runs in seconds yet exercises every stride, padding and channel change.
REAL_SHAPE = dict(encoder_hidden_size=128, downsampling_ratios=[2, 4, 4, 6, 10],
                  channel_multiples=[1, 2, 4, 8, 16], decoder_channels=32, decoder_input_channels=64,
                  audio_channels=2, sampling_rate=48000)
TINY = dict(encoder_hidden_size=16, downsampling_ratios=[2, 4], channel_multiples=[1, 2],
            decoder_channels=8, decoder_input_channels=8, audio_channels=2, sampling_rate=48000)
FULL = dict(REAL_SHAPE, decoder_channels=128)


def make_reference(config: dict, seed: int) -> AutoencoderOobleck:
    """A randomly initialised VAE whose activations stay O(1) through the deep stack.

    torch's default init plus untouched snakes (alpha = beta = 1) lets the decoder's
    residual stack grow its output by orders of magnitude; drawing the weight-norm
    gains so that each convolution is roughly variance-preserving on its own, scaling
    every residual branch down, and spreading the snake parameters around 1 keeps
    every layer in range while still exercising each tensor.
    """
    torch.manual_seed(seed)
    model = AutoencoderOobleck(**config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("alpha", "beta")):
                p.copy_(0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
            elif name.endswith("weight_v"):
                p.copy_(torch.randn_like(p))
        for name, module in model.named_modules():
            if not hasattr(module, "weight_g"):
                continue
            v = module.weight_v
            fan_in = v[0].numel() if isinstance(module, torch.nn.Conv1d) else v.shape[0] * v.shape[2] // module.stride[0]
            gain = 0.3 if ".res_unit" in name and name.endswith("conv2") else 1.0
            # weight_norm normalises over all axes but dim 0: pick g so that ||w row|| ~ gain * sqrt(rows/fan_in)
            rows = v[0].numel()
            module.weight_g.copy_(gain * (0.8 + 0.4 * torch.rand_like(module.weight_g)) * (rows / fan_in) ** 0.5)
    return model


def write_gguf(model: AutoencoderOobleck, path, dtype: str = "f32") -> None:
    """Write the model as an acestep-vae GGUF: diffusers names, weight_g / weight_v kept."""
    w = gguf.GGUFWriter(str(path), "acestep-vae")
    cfg = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    w.add_string("acestep.config_json", json.dumps(cfg, separators=(",", ":")))
    for name, t in model.state_dict().items():
        a = t.detach().float().contiguous().numpy()
        if dtype == "bf16":
            bits = torch.from_numpy(a).to(torch.bfloat16).view(torch.uint16).numpy()
            w.add_tensor(name, bits, raw_shape=a.shape, raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def f32_file(tmp_path_factory, config: dict, seed: int, folder: str):
    """A reference VAE of `config` and its F32 GGUF in a fresh temporary folder: (model, path)."""
    ref = make_reference(config, seed)
    path = tmp_path_factory.mktemp(folder) / "f32.gguf"
    write_gguf(ref, path, "f32")
    return ref, path
