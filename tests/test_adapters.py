"""Adapters on the DiT (acestep_ggml.adapters) against their references on a tiny random DiT.

* PEFT LoRA / rsLoRA / rank and alpha patterns / DoRA: folders written by peft itself
  (``save_pretrained``) on a module tree with upstream's decoder names, merged by peft itself
  (``set_scale`` + ``merge_and_unload``) and copied into diffusers' transformer;
* diffusers naming: written by ``AceStepPipeline.save_lora_weights``, fused by diffusers
  (``fuse_lora(lora_scale=S)``);
* ComfyUI / kohya ``lora_down``/``lora_up``/``alpha``: ComfyUI's rule W + S·(alpha/rank)·up·down;
* LyCORIS LoKr: LyCORIS' own math written out below (lycoris-lora 4.1.3).

Each reference is diffusers' transformer with the merged weights; ours runs merged and at run time.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import re

import numpy as np
import pytest
import torch
from _dit_gguf import TINY, original_name, tiny_dit, write_dit_gguf
from conftest import fresh_seed
from safetensors.torch import save_file

import acestep_ggml
from acestep_ggml import AdapterError
from acestep_ggml.adapters import Applied, load_adapter

SEED = fresh_seed("adapters")
H = TINY["hidden_size"]


def _peft():
    import peft as p  # in the [test] extras: a missing peft is a failure, never a skip

    return p


def _metrics(ours, ref):
    a, b = np.asarray(ours, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    return a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), np.linalg.norm(a - b) / np.linalg.norm(b)


def _linears(model):
    """{upstream module path (decoder-relative, original names): diffusers module name} of every Linear."""
    return {original_name(n + ".weight")[len("decoder."):-len(".weight")]: n
            for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def _skeleton(model):
    """The decoder's Linears in a module tree with upstream's names (layers.N.self_attn.q_proj, ...),
    which is what upstream's trainer hands to get_peft_model."""
    root = torch.nn.Module()
    mods = dict(model.named_modules())
    for path, name in _linears(model).items():
        parent = root
        *head, last = path.split(".")
        for p in head:
            if p not in parent._modules:
                parent.add_module(p, torch.nn.Module())
            parent = parent._modules[p]
        parent.add_module(last, copy.deepcopy(mods[name]))
    return root


def _with_weights(model, weights: dict):
    """A copy of the diffusers model with {upstream path: weight} replacing its Linear weights."""
    out = copy.deepcopy(model)
    mods = dict(out.named_modules())
    names = _linears(model)
    with torch.no_grad():
        for path, w in weights.items():
            mods[names[path]].weight.copy_(torch.as_tensor(w))
    return out


def _base_weights(model) -> dict:
    mods = dict(model.named_modules())
    return {p: mods[n].weight.detach().numpy().astype(np.float64) for p, n in _linears(model).items()}


def peft_folder(model, folder, seed, scale, **config):
    """A PEFT folder written by peft on upstream's names, and the merged weights peft computes at
    ``scale`` (LoraLayer.set_scale, then merge_and_unload)."""
    peft = _peft()
    torch.manual_seed(seed)
    pm = peft.get_peft_model(_skeleton(model), peft.LoraConfig(init_lora_weights=False, **config))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_magnitude_vector" in n:  # DoRA: a magnitude that is not the initial norm
                p.mul_(1 + 0.3 * torch.randn_like(p))
    pm.save_pretrained(str(folder))
    for m in pm.modules():
        if isinstance(m, peft.tuners.lora.LoraLayer):
            m.set_scale("default", scale)
    merged = pm.merge_and_unload()
    return {p: m.weight.detach().numpy() for p, m in merged.named_modules() if isinstance(m, torch.nn.Linear)}


def _upstream_lora_utils():
    """acestep.training.lora_utils of the original package (ace-step15-fork).  The package's
    __init__ also imports its dataset builder, which needs torchaudio (not a dependency here), so
    the two modules are loaded under a bare package stand-in, removed again afterwards."""
    import importlib
    import sys
    import types
    from pathlib import Path

    import acestep

    name = "acestep.training"
    inserted = name not in sys.modules
    if inserted:
        stub = types.ModuleType(name)
        stub.__path__ = [str(Path(acestep.__file__).parent / "training")]
        sys.modules[name] = stub
    try:
        configs = importlib.import_module(name + ".configs")
        utils = importlib.import_module(name + ".lora_utils")
    finally:
        if inserted:
            for key in (name, name + ".configs", name + ".lora_utils"):
                sys.modules.pop(key, None)
    return configs.LoRAConfig, utils.inject_lora_into_dit, utils.save_lora_weights


def upstream_lora_folder(model, out_dir, seed, scale):
    """A LoRA as upstream's trainer writes it: the original code's inject_lora_into_dit (its
    LoRAConfig defaults: r 8, alpha 16, q/k/v/o) on a model whose decoder has upstream's module
    names, trained weights standing in as random A and B, saved by its save_lora_weights
    (``<out>/adapter``); and peft's merge at ``scale``."""
    LoRAConfig, inject_lora_into_dit, save_lora_weights = _upstream_lora_utils()
    peft = _peft()
    holder = torch.nn.Module()
    holder.decoder = _skeleton(model)
    inject_lora_into_dit(holder, LoRAConfig())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in holder.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    folder = save_lora_weights(holder, str(out_dir))
    for m in holder.decoder.modules():
        if isinstance(m, peft.tuners.lora.LoraLayer):
            m.set_scale("default", scale)
    merged = holder.decoder.merge_and_unload()
    return folder, {p: m.weight.detach().numpy() for p, m in merged.named_modules() if isinstance(m, torch.nn.Linear)}


# -- LyCORIS LoKr, written out -----------------------------------------------------------------------
# lycoris-lora 4.1.3, lycoris/modules/lokr.py: scale = alpha / dim (207-220; alpha := dim when both
# factors are full), ΔW = scale·kron(w1, w2) with w = w_a @ w_b when decomposed (get_weight 359-379,
# functional/lokr.py make_kron 16-25); forward (_rebuild_forward 560-576): W + μ·ΔW, or with DoRA
# (functional/general.py _weight_decompose 117-139, wd_on_out): (W + ΔW)·[μ(m/(‖W + ΔW‖_row + ε) − 1) + 1].
F32_EPS = float(np.finfo(np.float32).eps)


def lokr_reference(w, w1, w2, alpha, dim, mu, dora_scale=None, eps=F32_EPS):
    w, w1, w2 = (torch.as_tensor(np.asarray(a, np.float64)) for a in (w, w1, w2))
    scale = alpha / dim if dim else 1.0
    delta = scale * torch.kron(w1, w2)
    if dora_scale is None:
        return (w + mu * delta).numpy()
    merged = w + delta
    norm = merged.norm(dim=1, keepdim=True)
    m = torch.as_tensor(np.asarray(dora_scale, np.float64)).reshape(-1, 1)
    return (merged * (mu * (m / (norm + eps) - 1) + 1)).numpy()


def _factor_pair(n):
    """LyCORIS factorization(n, -1) for small n: the divisor pair nearest √n, smaller first."""
    a = max(d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0)
    return a, n // a


def lokr_file(model, path, seed, targets, decompose=False, dora=False, dtype=torch.float32):
    """A LyCORIS LoKr file as upstream's save_lokr_weights writes it (lycoris_<path with . -> _>,
    alpha, dora_scale, lokr_config metadata), and its per-module factors."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda t: t.to(dtype).float()  # noqa: E731 (the values the file holds)
    mods = dict(model.named_modules())
    names = _linears(model)
    tensors, factors = {}, {}
    dim = 2
    for path_ in targets:
        w = mods[names[path_]].weight.detach()
        (a, c), (b, d) = _factor_pair(w.shape[0]), _factor_pair(w.shape[1])
        stem = "lycoris_" + path_.replace(".", "_")
        w1 = rnd(torch.randn(a, b, generator=g) * 0.5)
        if decompose:
            w2a, w2b = rnd(torch.randn(c, dim, generator=g) * 0.3), rnd(torch.randn(dim, d, generator=g) * 0.3)
            tensors[stem + ".lokr_w2_a"], tensors[stem + ".lokr_w2_b"] = w2a, w2b
            w2, alpha, rank = w2a @ w2b, 3.0, dim
        else:
            w2 = rnd(torch.randn(c, d, generator=g) * 0.1)
            tensors[stem + ".lokr_w2"] = w2
            alpha, rank = float(dim), None  # both full: the stored alpha is not used
        tensors[stem + ".lokr_w1"] = w1
        tensors[stem + ".alpha"] = torch.tensor(alpha)
        m = None
        if dora:
            m = rnd(w.norm(dim=1, keepdim=True) * (1 + 0.2 * torch.randn(w.shape[0], 1, generator=g)))
            tensors[stem + ".dora_scale"] = m
        factors[path_] = (w1.numpy(), w2.numpy(), alpha, rank, None if m is None else m.numpy())
    meta = {"algo": "lokr", "format": "lycoris",
            "lokr_config": json.dumps({"linear_dim": dim, "linear_alpha": 4, "factor": -1,
                                       "weight_decompose": dora, "rs_lora": False})}
    save_file({k: v.to(dtype).contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    return factors


# -- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return tiny_dit(SEED)


@pytest.fixture(scope="module")
def gguf_path(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("adapters") / "dit-f32.gguf"
    write_dit_gguf(model, str(path))
    return path


def _inputs(seed):
    rng = np.random.default_rng(seed)
    f = lambda *shape: rng.standard_normal(shape, dtype=np.float32)  # noqa: E731
    mask = (rng.random((2, 23, 64)) > 0.3).astype(np.float32)
    return f(2, 23, 64), rng.uniform(0.05, 1.0, 2).astype(np.float32), f(2, 7, H), f(2, 23, 64), mask


def _reference(model, inputs):
    x, t, enc, src, mask = inputs
    with torch.no_grad():
        tt = torch.from_numpy(t)
        ctx = torch.cat([torch.from_numpy(src), torch.from_numpy(mask)], dim=-1)
        return model(torch.from_numpy(x), tt, tt, torch.from_numpy(enc), ctx, return_dict=False)[0].numpy()


def _ours(gguf_path, adapters, mode, device="cpu", inputs=None):
    dit = acestep_ggml.DiT(gguf_path, device=device, n_threads=2)
    applied = Applied(dit._m, mode)
    targets = dict(applied.targets)
    applied.set([(load_adapter(p, targets), s) for p, s in adapters])
    return dit.forward(*inputs), dit, applied


def _check(ours, ref, base, what):
    cos, rel = _metrics(ours, ref)
    moved = _metrics(base, ref)[1]
    print(f"\n{what}: cos {cos:.8f} rel {rel:.2e} (the adapter moves the output by {moved:.3f})")
    # F32 weights and activations on both sides (as test_dit's F32 bar): only summation order
    # differs.  `moved`: how far the adapter moves the output, so that the test has teeth.
    assert cos >= 0.9999 and rel <= 1e-3, f"{what}: seed={SEED} cos={cos} rel={rel} (adapter moves it {moved})"
    assert moved > 20 * max(rel, 1e-5), f"{what}: the adapter barely changes the output ({moved})"


ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
PEFT_CASES = {
    "lora": dict(r=4, lora_alpha=6.5, target_modules=ATTN),
    "rslora_patterns": dict(r=4, lora_alpha=3.0, use_rslora=True,
                            target_modules=ATTN + ["gate_proj", "down_proj", "condition_embedder", "linear_1",
                                                   "time_proj"],
                            rank_pattern={"layers.1.self_attn.q_proj": 2, "mlp.down_proj": 6},
                            alpha_pattern={"cross_attn.v_proj": 1.5, "^time_embed_r.time_proj": 9.0}),
    "dora": dict(r=3, lora_alpha=5.0, use_dora=True, target_modules=ATTN + ["up_proj"]),
}


@pytest.mark.parametrize("case", sorted(PEFT_CASES))
@pytest.mark.parametrize("mode", ["merge", "runtime"])
def test_peft_folder_matches_peft_merge(model, gguf_path, tmp_path, case, mode):
    scale = 0.7
    merged = peft_folder(model, tmp_path / "adapter", SEED + 1, scale, **PEFT_CASES[case])
    inputs = _inputs(SEED + 2)
    ref = _reference(_with_weights(model, merged), inputs)
    ours, _, _ = _ours(gguf_path, [(tmp_path / "adapter", scale)], mode, inputs=inputs)
    _check(ours, ref, _reference(model, inputs), f"PEFT {case} {mode}")


@pytest.mark.parametrize("mode", ["merge", "runtime"])
@pytest.mark.parametrize("decompose,dora,dtype", [(False, False, torch.float32), (True, False, torch.float32),
                                                  (False, True, torch.float32), (True, True, torch.bfloat16)])
def test_lokr_matches_lycoris_math(model, gguf_path, tmp_path, mode, decompose, dora, dtype):
    targets = [f"layers.{i}.{a}.{p}" for i in range(TINY["num_hidden_layers"]) for a in ("self_attn", "cross_attn")
               for p in ATTN] + ["layers.0.mlp.gate_proj", "layers.2.mlp.down_proj", "condition_embedder",
                                 "time_embed.time_proj"]
    path = tmp_path / "lokr_weights.safetensors"
    factors = lokr_file(model, path, SEED + 3, targets, decompose=decompose, dora=dora, dtype=dtype)
    mu = 0.8
    base = _base_weights(model)
    # LyCORIS' ε is the machine epsilon of dora_scale's dtype (2^-7 for BF16).
    eps = 2.0 ** -7 if dtype == torch.bfloat16 else float(np.finfo(np.float32).eps)
    weights = {p: lokr_reference(base[p], w1, w2, alpha, rank, mu, m, eps)
               for p, (w1, w2, alpha, rank, m) in factors.items()}
    inputs = _inputs(SEED + 4)
    ref = _reference(_with_weights(model, weights), inputs)
    ours, _, _ = _ours(gguf_path, [(path, mu)], mode, inputs=inputs)
    _check(ours, ref, _reference(model, inputs), f"LoKr decompose={decompose} dora={dora} {mode}")


@pytest.mark.parametrize("mode", ["merge", "runtime"])
def test_comfyui_file_and_two_adapters_at_once(model, gguf_path, tmp_path, mode):
    """A ComfyUI file (diffusion_model.decoder. prefix, per-module alpha in BF16) stacked with a PEFT
    folder, each with its own scale: W + S1·(alpha/r)·up·down + (PEFT merge at S2 − W)."""
    g = torch.Generator().manual_seed(SEED + 5)
    base = _base_weights(model)
    tensors, weights = {}, {}
    s1 = 1.3
    for path_ in ["layers.0.self_attn.q_proj", "layers.3.cross_attn.o_proj", "layers.1.mlp.up_proj",
                  "time_embed.linear_2"]:
        out, inp = base[path_].shape
        down, up = torch.randn(3, inp, generator=g) * 0.2, torch.randn(out, 3, generator=g) * 0.2
        alpha = torch.tensor(2.5, dtype=torch.bfloat16)
        stem = "diffusion_model.decoder." + path_
        tensors |= {stem + ".lora_down.weight": down, stem + ".lora_up.weight": up, stem + ".alpha": alpha}
        # ComfyUI comfy/weight_adapter/lora.py LoRAAdapter.calculate_weight: strength·(alpha/rank)·up@down
        weights[path_] = base[path_] + s1 * float(alpha) / 3 * (up.double() @ down.double()).numpy()
    save_file(tensors, str(tmp_path / "comfy.safetensors"))
    s2 = 0.5
    merged = peft_folder(model, tmp_path / "peft", SEED + 6, s2, r=2, lora_alpha=4.0, target_modules=ATTN)
    for p, w in merged.items():
        weights[p] = weights.get(p, base[p]) + (w.astype(np.float64) - base[p])
    inputs = _inputs(SEED + 7)
    ref = _reference(_with_weights(model, weights), inputs)
    ours, _, _ = _ours(gguf_path, [(tmp_path / "comfy.safetensors", s1), (tmp_path / "peft", s2)], mode,
                       inputs=inputs)
    _check(ours, ref, _reference(model, inputs), f"ComfyUI + PEFT {mode}")


def test_diffusers_file_matches_diffusers_fuse(model, gguf_path, tmp_path):
    """A file saved by AceStepPipeline.save_lora_weights (names transformer.…to_q, config in the
    metadata), fused by diffusers itself at a scale."""
    peft = _peft()
    from diffusers import AceStepPipeline

    ref_model = copy.deepcopy(model)
    torch.manual_seed(SEED + 8)
    config = peft.LoraConfig(r=4, lora_alpha=2.0, init_lora_weights=False,
                             target_modules=["to_q", "to_k", "to_v", "to_out.0", "gate_proj"])
    ref_model.add_adapter(config)
    layers = peft.get_peft_model_state_dict(ref_model)
    AceStepPipeline.save_lora_weights(str(tmp_path), transformer_lora_layers=layers,
                                      transformer_lora_adapter_metadata=config.to_dict())
    scale = 0.6
    ref_model.fuse_lora(lora_scale=scale)
    inputs = _inputs(SEED + 9)
    ref = _reference(ref_model, inputs)
    (file,) = tmp_path.glob("*.safetensors")
    for mode in ("merge", "runtime"):
        ours, _, _ = _ours(gguf_path, [(file, scale)], mode, inputs=inputs)
        _check(ours, ref, _reference(model, inputs), f"diffusers {mode}")


def test_runtime_adapters_swap_without_reloading(model, gguf_path, tmp_path):
    """set(...) again on the same DiT: new adapters and scales, and back to none, agree with fresh loads."""
    peft_folder(model, tmp_path / "a", SEED + 10, 1.0, r=2, lora_alpha=2.0, target_modules=ATTN)
    peft_folder(model, tmp_path / "b", SEED + 11, 1.0, r=3, lora_alpha=1.0, use_dora=True, target_modules=["q_proj"])
    inputs = _inputs(SEED + 12)
    for mode in ("runtime", "merge"):
        dit = acestep_ggml.DiT(gguf_path, n_threads=2)
        applied = Applied(dit._m, mode)
        none = dit.forward(*inputs)
        sets = [[(tmp_path / "a", 0.5)], [(tmp_path / "a", 1.2), (tmp_path / "b", 0.8)], []]
        for adapters in sets:
            applied.set([(load_adapter(p, applied.targets), s) for p, s in adapters])
            again = dit.forward(*inputs)
            fresh = _ours(gguf_path, adapters, "merge", inputs=inputs)[0] if adapters else none
            cos, rel = _metrics(again, fresh)
            assert cos >= 0.99999 and rel <= 1e-4, f"{mode} {adapters}: seed={SEED} cos={cos} rel={rel}"
        assert _metrics(dit.forward(*inputs), none)[1] <= 1e-6  # none again: the file's weights exactly


def test_merged_into_q8_0_weights_agrees_with_runtime(model, tmp_path):
    """On a Q8_0 file the merge is quantized again to Q8_0; run time keeps the base as it is.
    Both stay near the F32 reference (Q8_0's own error, 8 bits per weight)."""
    path = tmp_path / "dit-q8_0.gguf"
    write_dit_gguf(model, str(path), weight_type="q8_0", quantize=acestep_ggml._core.quantize)
    merged = peft_folder(model, tmp_path / "a", SEED + 13, 1.0, r=4, lora_alpha=4.0, target_modules=ATTN)
    inputs = _inputs(SEED + 14)
    ref = _reference(_with_weights(model, merged), inputs)
    outs = {mode: _ours(path, [(tmp_path / "a", 1.0)], mode, inputs=inputs)[0] for mode in ("merge", "runtime")}
    for mode, out in outs.items():
        cos, rel = _metrics(out, ref)
        assert cos >= 0.999, f"Q8_0 {mode}: seed={SEED} cos={cos} rel={rel}"
    cos, rel = _metrics(outs["merge"], outs["runtime"])
    assert cos >= 0.999, f"Q8_0 merge vs runtime: seed={SEED} cos={cos} rel={rel}"


# -- bad adapters ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def targets(gguf_path):
    return {n: tuple(s) for n, s in acestep_ggml.DiT(gguf_path)._m.adaptable()}


def _lora_file(path, stem, a, b, **extra):
    save_file({stem + ".lora_down.weight": a, stem + ".lora_up.weight": b, **extra}, str(path))
    return path


def test_bad_adapters_name_the_key(tmp_path, targets, caplog):
    q = "diffusion_model.decoder.layers.0.self_attn.q_proj"
    cases = {
        "unknown adapter format": _save(tmp_path / "u.safetensors", {"foo.weight": torch.ones(2, 2)}),
        "lora_down.weight' has shape": _lora_file(tmp_path / "shape.safetensors", q, torch.ones(2, H + 1),
                                                   torch.ones(H, 2)),
        "contains NaN": _lora_file(tmp_path / "nan.safetensors", q, torch.full((2, H), float("nan")),
                                   torch.ones(H, 2)),
        "another base model": _lora_file(tmp_path / "v1.safetensors", "transformer_blocks.0.attn.to_q",
                                         torch.ones(2, H), torch.ones(H, 2)),
        "hada_w1_a": _save(tmp_path / "loha.safetensors", {"lycoris_layers_0_self_attn_q_proj.hada_w1_a":
                                                            torch.ones(2, 2)}),
        "does not fit": _save(tmp_path / "lokr.safetensors", {
            "lycoris_layers_0_self_attn_q_proj.lokr_w1": torch.ones(8, 8),
            "lycoris_layers_0_self_attn_q_proj.lokr_w2": torch.ones(9, 8)}),
    }
    for message, path in cases.items():
        with pytest.raises(AdapterError, match=message) as e:
            load_adapter(path, targets)
        assert str(path) in str(e.value)
    # Keys that match no module: a warning lists them; the rest applies.
    path = _lora_file(tmp_path / "partial.safetensors", q, torch.ones(2, H), torch.ones(H, 2),
                      **{"diffusion_model.decoder.nothing_here.lora_down.weight": torch.ones(2, H),
                         "diffusion_model.decoder.nothing_here.lora_up.weight": torch.ones(H, 2)})
    with caplog.at_level(logging.WARNING, logger="acestep_ggml.adapters"):
        adapter = load_adapter(path, targets)
    assert len(adapter.modules) == 1 and "nothing_here.lora_down.weight" in caplog.text


def _save(path, tensors):
    save_file(tensors, str(path))
    return path


def _peft_dir(path, config, r=2, **extra):
    """A PEFT folder on layers.0.self_attn.q_proj with ``config`` as adapter_config.json (any JSON)."""
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps(config))
    stem = "base_model.model.layers.0.self_attn.q_proj"
    _save(path / "adapter_model.safetensors", {stem + ".lora_A.weight": torch.ones(r, H),
                                               stem + ".lora_B.weight": torch.ones(H, r), **extra})
    return path


def test_malformed_adapters_found_by_the_fuzzer(tmp_path, targets):
    """What `python -m fuzz.inputs adapter` found (tests/fuzz/corpus/inputs-adapter-*): each was a
    traceback outside the error family (AttributeError, ZeroDivisionError, re.error, ValueError,
    TypeError, OverflowError) or a hang; each is an AdapterError naming the file and the key now."""
    q = "diffusion_model.decoder.layers.0.self_attn.q_proj"
    lokr = "lycoris_layers_0_self_attn_q_proj"
    good = {"peft_type": "LORA", "r": 2, "lora_alpha": 4}
    cases = {
        # numpy has no float8: safetensors' numpy reader raised AttributeError
        "dtype F8_E4M3, not a float type": _lora_file(tmp_path / "f8.safetensors", q, torch.ones(2, H).to(
            torch.float8_e4m3fn), torch.ones(H, 2)),
        "adapter_config.json is a JSON list, not an object": _peft_dir(tmp_path / "list", [good]),
        "rank_pattern is a str": _peft_dir(tmp_path / "pattern", {**good, "rank_pattern": "x"}),
        "rank_pattern key '(' is not a regular expression": _peft_dir(tmp_path / "regex", {**good, "rank_pattern": {
            "(": 2}}),
        # re's OverflowError and RecursionError (found in review, not by the fuzzer)
        "rank_pattern key 'q{4294967296}' is not a regular expression": _peft_dir(tmp_path / "big", {
            **good, "rank_pattern": {"q{4294967296}": 2}}),
        "alpha_pattern key '((((((": _peft_dir(tmp_path / "deep", {
            **good, "alpha_pattern": {"(" * 5000 + ")" * 5000: 2.0}}),
        # a match that backtracks for minutes: a hang
        "alpha_pattern key '(.*.*)*x' repeats a repetition": _peft_dir(tmp_path / "redos", {
            **good, "alpha_pattern": {"(.*.*)*x": 1.0, "q_proj": 2.0}}),
        "q_proj = nan is not a positive whole number": _peft_dir(tmp_path / "nan", {**good, "r": float("nan")}),
        "q_proj = None is not a positive whole number": _peft_dir(tmp_path / "none", {**good, "r": None}),
        "q_proj = '8' is not a positive whole number": _peft_dir(tmp_path / "str", {**good, "r": "8"}),
        "q_proj = 'abc' is not a finite number": _peft_dir(tmp_path / "alpha", {**good, "lora_alpha": "abc"}),
        # ZeroDivisionError: alpha / r with r = 0, with and without a config
        "rank 0, an empty LoRA": _lora_file(tmp_path / "r0.safetensors", q, torch.ones(0, H), torch.ones(H, 0),
                                            **{q + ".alpha": torch.tensor(1.0)}),
        "lora_adapter_metadata is a JSON int": _save_meta(tmp_path / "diffusers.safetensors", {
            "transformer.layers.0.self_attn.to_q.lora_A.weight": torch.ones(2, H),
            "transformer.layers.0.self_attn.to_q.lora_B.weight": torch.ones(H, 2)}, lora_adapter_metadata="7"),
        "lokr_config is a JSON str": _save_meta(tmp_path / "lokr_meta.safetensors", {
            lokr + ".lokr_w1": torch.ones(8, 8), lokr + ".lokr_w2": torch.ones(8, 8)}, lokr_config='"x"'),
        # math.sqrt of a negative dimension: ValueError
        "linear_dim = -4 is not a positive number": _save_meta(tmp_path / "lokr_dim.safetensors", {
            lokr + ".lokr_w1": torch.ones(8, 8), lokr + ".lokr_w2": torch.ones(8, 8)},
            lokr_config=json.dumps({"linear_dim": -4, "rs_lora": True})),
        # a split factor of rank 0: ZeroDivisionError in alpha / dim
        "rank 0, an empty factor": _save(tmp_path / "lokr0.safetensors", {
            lokr + ".lokr_w1": torch.ones(8, 8), lokr + ".lokr_w2_a": torch.ones(8, 0), lokr + ".lokr_w2_b":
            torch.ones(0, 8), lokr + ".alpha": torch.tensor(1.0)}),
    }
    assert targets["decoder.layers.0.self_attn.q_proj.weight"] == (H, H)
    for message, path in cases.items():
        with pytest.raises(AdapterError, match=re.escape(message)) as e:
            load_adapter(path, targets)
        assert str(path) in str(e.value), e.value


def test_scale_beyond_float32_names_the_file(tmp_path, targets):
    """A user scale times the file's alpha / r beyond float32: an AdapterError naming the file and
    module before anything is applied (was an InputError from the core naming only the weight)."""
    from acestep_ggml.adapters import plan

    q = "diffusion_model.decoder.layers.0.self_attn.q_proj"
    path = _lora_file(tmp_path / "big.safetensors", q, torch.ones(1, H), torch.ones(H, 1),
                      **{q + ".alpha": torch.tensor(1e30)})
    adapter = load_adapter(path, targets)
    with pytest.raises(AdapterError, match=re.escape(f"{path}: module '{q}': its scale")):
        plan([(adapter, 1e30)], None)
    assert plan([(adapter, 1e-30)], None).modules  # a small one is fine


def test_merge_that_overflows_leaves_no_half_merged_dit(gguf_path, tmp_path, targets):
    """A merge whose second weight overflows float32: an AdapterError naming the file, and the
    first weight, merged already, is the file's again (no half-merged DiT)."""
    stems = ["diffusion_model.decoder.layers.0.self_attn.q_proj", "diffusion_model.decoder.layers.1.self_attn.q_proj"]
    path = _save(tmp_path / "overflow.safetensors", {
        stems[0] + ".lora_down.weight": torch.ones(1, H) * 0.1, stems[0] + ".lora_up.weight": torch.ones(H, 1),
        stems[1] + ".lora_down.weight": torch.ones(1, H) * 1e30, stems[1] + ".lora_up.weight": torch.ones(H, 1) * 1e30})
    dit = acestep_ggml.DiT(gguf_path, n_threads=2)
    applied = Applied(dit._m, "merge")
    adapter = load_adapter(path, targets)
    assert [m.target for m in adapter.modules] == [f"decoder.{s.split('decoder.')[1]}.weight" for s in stems]
    before = dit._m.get_weight(adapter.modules[0].target)
    with pytest.raises(AdapterError, match=re.escape(str(path))):
        applied.set([(adapter, 1.0)])
    assert np.array_equal(dit._m.get_weight(adapter.modules[0].target), before) and not applied.merged


def _save_meta(path, tensors, **metadata):
    save_file(tensors, str(path), metadata=metadata)
    return path


# -- the acceptance: `synth --lora DIR --lora-scale S` against diffusers -------------------
def test_synth_cli_lora_matches_diffusers_with_the_lora_merged(synth_models, tmp_path, device):
    """A held-out random LoRA in upstream's PEFT layout (written by upstream's own trainer code on
    upstream's module names, its default r 8, alpha 16, q/k/v/o of both attentions), applied by the
    `synth` CLI at a held-out scale, against diffusers' AceStepPipeline whose transformer holds
    peft's merge at that scale; both modes; and the LoRA audibly changes the song."""
    import dataclasses
    import subprocess
    import sys

    import soundfile as sf
    from _synth_reference import CAPTION, LYRICS, cosine, reference_run

    from acestep_ggml.exchange import Request, write_request

    models, _, folders, seed = synth_models
    rng = np.random.default_rng(seed + 20)
    scale = float(rng.uniform(0.5, 1.5))
    folder, merged = upstream_lora_folder(models.transformer, tmp_path / "trained", seed + 21, scale)
    from safetensors import safe_open

    keys = list(safe_open(f"{folder}/adapter_model.safetensors", "np").keys())
    assert all(re.fullmatch(r"base_model\.model\.layers\.\d+\.(self|cross)_attn\.[qkvo]_proj\.lora_[AB]\.weight", k)
               for k in keys), keys[:4]
    ref_models = dataclasses.replace(models, transformer=_with_weights(models.transformer, merged))
    req = Request(caption=CAPTION, lyrics=LYRICS, bpm=120, keyscale="F# minor", timesignature=4, language="en",
                  duration=2)
    noise = np.random.default_rng(seed).standard_normal((50, 64), dtype=np.float32)
    ref = reference_run(ref_models, noise, 2.0)["audio"]
    write_request(tmp_path / "ex", req)
    np.save(tmp_path / "noise.npy", noise)

    def synth(*flags):
        out = tmp_path / f"song{len(list(tmp_path.glob('song*')))}.wav"
        r = subprocess.run([sys.executable, "-m", "acestep_ggml", "synth", "--input-dir", str(tmp_path / "ex"),
                            "--models", str(folders["f32"]), "--output", str(out), "--seed", "0",
                            "--init-noise", str(tmp_path / "noise.npy"), "--device", device, *flags],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return sf.read(str(out), dtype="float32")[0].T, r.stderr

    plain, _ = synth("--quiet")
    for mode in ("merge", "runtime"):
        ours, log = synth("--lora", folder, "--lora-scale", f"{scale!r}", "--lora-mode", mode)
        n = 8 * models.transformer.config.num_hidden_layers  # q, k, v, o of both attentions
        assert "PEFT LoRA" in log and f"{n} modules" in log and "rank 8" in log, log
        c, c_plain = cosine(ours, ref), cosine(plain, ref)
        print(f"\n{mode}: scale {scale:.4f}, audio cosine {c:.8f} (without the LoRA {c_plain:.8f})")
        # F32 weights on both sides; the CLI writes 16-bit PCM (its default), whose rounding is
        # far below the bar.  The acceptance is 0.999; F32 parity holds 0.9999.
        assert c >= 0.9999, f"{mode}: model seed {seed}: audio cosine {c}"
        assert 1 - c_plain > 10 * (1 - c), f"{mode}: the LoRA barely changes the song ({c_plain} vs {c})"


def test_synthesizer_set_loras_swaps_without_reloading_the_dit(synth_models, tmp_path):
    """The server's API: set_loras on a Synthesizer that keeps its DiT; runtime mode changes the
    adapters only, and [] gives back the plain song exactly."""
    from _synth_reference import CAPTION, cosine

    from acestep_ggml.exchange import Request
    from acestep_ggml.pipeline import Synthesizer

    models, _, folders, seed = synth_models
    peft_folder(models.transformer, tmp_path / "a", seed + 30, 1.0, r=4, lora_alpha=8.0, target_modules=ATTN)
    req = Request(caption=CAPTION, duration=2)
    noise = np.random.default_rng(seed).standard_normal((50, 64), dtype=np.float32)
    for mode in ("runtime", "merge"):
        synth = Synthesizer(folders["f32"], keep_loaded=True, lora_mode=mode)
        plain = synth(req, init_noise=noise, seed=0).audio
        dit = synth._loaded["dit"]
        report = synth.set_loras([(tmp_path / "a", 0.9)])
        assert len(report) == 1 and "rank 4" in report[0] and mode in report[0]
        styled = synth(req, init_noise=noise, seed=0).audio
        fresh = Synthesizer(folders["f32"], loras=[(tmp_path / "a", 0.9)], lora_mode="merge")(
            req, init_noise=noise, seed=0).audio
        synth.set_loras([])
        again = synth(req, init_noise=noise, seed=0).audio
        assert synth._loaded["dit"] is dit, "the DiT was reloaded"
        assert cosine(styled, fresh) >= 0.99999, (mode, cosine(styled, fresh))
        assert cosine(styled, plain) < 0.9999, (mode, cosine(styled, plain))
        assert np.abs(again - plain).max() <= 1e-6, mode


def test_cli_lora_errors_are_one_line(synth_models, tmp_path):
    import subprocess
    import sys

    _, _, folders, _ = synth_models
    bad = _save(tmp_path / "bad.safetensors", {"foo.weight": torch.ones(2, 2)})
    (tmp_path / "ex").mkdir()
    (tmp_path / "ex" / "caption").write_text("x")
    for flags, message in [(["--lora", str(bad)], "unknown adapter format"),
                           (["--lora", str(bad), "--lora-scale", "1", "--lora-scale", "2"], "2 --lora-scale values"),
                           (["--lora", str(tmp_path / "missing")], "no such adapter")]:
        for cmd in (["synth", "--input-dir", str(tmp_path / "ex")], ["generate", "--caption", "x", "--no-lm"]):
            r = subprocess.run([sys.executable, "-m", "acestep_ggml", *cmd, "--models", str(folders["f32"]),
                                "--output", str(tmp_path / "o.wav"), "--quiet", *flags], capture_output=True, text=True)
            assert r.returncode == 2 and r.stderr.startswith("error: ") and message in r.stderr, (cmd, r.stderr)
            assert "Traceback" not in r.stderr
