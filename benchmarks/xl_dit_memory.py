"""Peak memory of the real-size XL DiT (acestep-v15-xl-*: 2560 wide, 32 layers, heads 32/8, MLP 9728,
over a 2048-wide condition encoder) with random weights: one forward (one sampler step; every step
reuses the same buffers) at BF16 and Q8_0 for a 30 s and a 240 s song.

With ``--layers 2`` (fewer than 32) the run fits small machines: the peak is measured with that
many real-size layers, and the missing layers' weights are added (``peak_gib_32_layers``).

The checkpoint is written tensor by tensor in the original layout (decoder only), then converted
with our converter, so no step holds the 4B parameters in PyTorch.  Each forward runs in its own
subprocess, so that its peak RSS is its own.  Run it under the shared big-memory lock:

    flock /tmp/acestep-bigmem.lock env PYTHONPATH=src python benchmarks/xl_dit_memory.py --dir /tmp/xl
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

# Upstream's XL config (docs/design/models-and-lm-modes.md §1.1).
XL = dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=32, num_attention_heads=32,
          num_key_value_heads=8, head_dim=128, sliding_window=128, encoder_hidden_size=2048,
          encoder_intermediate_size=6144, encoder_num_attention_heads=16, encoder_num_key_value_heads=8,
          text_hidden_dim=1024)
ENC_TOKENS = 200  # condition tokens (lyrics + timbre + caption), as bench_dit.py


def phase_write(args) -> dict:
    import fixtures
    import torch
    from diffusers import AceStepTransformer1DModel
    from safetensors.torch import save_file

    from acestep_ggml.convert import convert, original_dit_name

    cfg = fixtures.dit_config(**dict(XL, num_hidden_layers=args.layers))
    with torch.device("meta"):
        model = AceStepTransformer1DModel(
            num_hidden_layers=cfg["num_hidden_layers"], in_channels=192, audio_acoustic_hidden_dim=64, patch_size=2,
            layer_types=cfg["layer_types"], is_turbo=True, model_version="turbo",
            **{k: cfg[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                                   "head_dim", "rope_theta", "rms_norm_eps", "sliding_window",
                                   "encoder_hidden_size")})
    src = Path(args.dir) / "checkpoint" / "acestep-v15-xl-turbo"
    src.mkdir(parents=True, exist_ok=True)
    (src / "config.json").write_text(json.dumps(cfg))
    torch.save(torch.randn(1, 64, 15000), src / "silence_latent.pt")
    gen = torch.Generator().manual_seed(0)
    shard, size, n, index = {}, 0, 0, {}

    def flush():
        nonlocal shard, size, n
        if shard:
            name = f"model-{n:05d}.safetensors"
            save_file(shard, str(src / name), metadata={"format": "pt"})
            index.update({k: name for k in shard})
            shard, size, n = {}, 0, n + 1

    params = 0
    for name, p in model.state_dict().items():
        scale = 1.0 / max(1, p.shape[-1]) ** 0.5 if p.ndim >= 2 else 0.1
        shard[original_dit_name("transformer", name)] = (torch.randn(p.shape, generator=gen) * scale).bfloat16()
        size += p.numel() * 2
        params += p.numel()
        if size > 2**30:
            flush()
    flush()
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    files = {}
    for ty in args.types.split(","):
        out = Path(args.dir) / ty
        (path,) = convert(src, out, dtype=ty, quiet=True)
        files[ty] = str(path)
    return {"params": params, "files": files}


def phase_forward(args) -> dict:
    from _common import peak_gib

    import acestep_ggml

    path = next((Path(args.dir) / args.dtype).glob("*.gguf"))
    t0 = time.perf_counter()
    dit = acestep_ggml.DiT(path, n_threads=args.threads)
    load_s = time.perf_counter() - t0
    frames = int(args.seconds * 25)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((frames, 64), dtype=np.float32)
    enc = rng.standard_normal((ENC_TOKENS, XL["encoder_hidden_size"]), dtype=np.float32)
    times = []
    for _ in range(args.repeats + 1):  # the first also reads the mapped weights in and builds the graph
        t0 = time.perf_counter()
        v = dit.forward(x, 1.0, enc, x)
        times.append(time.perf_counter() - t0)
    step_s = min(times[1:]) if len(times) > 1 else times[0]
    assert np.isfinite(v).all()
    peak, weights = peak_gib(), dit._m.weight_bytes / 2**30
    # Layers not built: their weights on top (activation buffers are reused from layer to layer,
    # the cross-attention K/V per layer are 200 tokens x 1024 x 2 floats: 1.6 MB).
    f = acestep_ggml.GGUFFile(str(path))
    layer = sum(nbytes for name, nbytes in _tensor_bytes(path) if name.startswith("decoder.layers.0."))
    missing = (XL["num_hidden_layers"] - f.hparams.num_hidden_layers) * layer / 2**30
    return {"type": args.dtype, "seconds": args.seconds, "frames": frames, "layers": f.hparams.num_hidden_layers,
            "load_s": load_s, "first_step_s": times[0], "step_s": step_s, "weight_gib": weights, "peak_gib": peak,
            "peak_gib_32_layers": peak + missing, "weight_gib_32_layers": weights + missing}


def _tensor_bytes(path):
    import gguf

    r = gguf.GGUFReader(str(path))
    return [(t.name, int(t.n_bytes)) for t in r.tensors]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", required=True, help="where the checkpoint and GGUFs go (about 13 GB)")
    p.add_argument("--types", default="bf16,q8_0")
    p.add_argument("--seconds", default="30,240", help="song lengths")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=1, help="timed forwards after the first (0: the first only)")
    p.add_argument("--layers", type=int, default=XL["num_hidden_layers"],
                   help="DiT layers to build (fewer: the peak is extrapolated to 32 by the missing layers' weights)")
    p.add_argument("--skip-write", action="store_true", help="reuse the files of an earlier run in --dir")
    p.add_argument("--phase", default="", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase == "forward":
        args.seconds = float(args.seconds)
        print(json.dumps(phase_forward(args)))
        return
    if not args.skip_write:
        print(json.dumps(phase_write(args)), flush=True)
    for s in args.seconds.split(","):
        for ty in args.types.split(","):
            cmd = [sys.executable, __file__, "--phase", "forward", "--dir", args.dir, "--dtype", ty, "--seconds", s,
                   "--layers", str(args.layers), "--repeats", str(args.repeats)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
