"""Checkpoint -> GGUF conversion: names, values, metadata, compatibility, failure safety, memory."""
from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

import fixtures
import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import Qwen3ForCausalLM

import acestep_ggml
from acestep_ggml.convert import convert, original_dit_name
from acestep_ggml.convert import converter as convert_mod

KINDS = {"acestep-v15-turbo": "acestep-dit", "vae": "acestep-vae", "Qwen3-Embedding-0.6B": "acestep-text-enc",
         "acestep-5Hz-lm-0.6B": "acestep-lm"}
SUFFIX = {"bf16": "BF16", "f32": "F32", "q8_0": "Q8_0"}


# ---------------------------------------------------------------------------
# The original names, written from the original modeling code's module tree
# (acestep/models/turbo/modeling_acestep_v15_turbo.py), independently of the converter.

def _attention(p):
    return [f"{p}.{x}_proj.weight" for x in "qkvo"] + [f"{p}.q_norm.weight", f"{p}.k_norm.weight"]


def _mlp(p):
    return [f"{p}.{x}_proj.weight" for x in ("gate", "up", "down")]


def _encoder_layers(p, n):
    out = []
    for i in range(n):
        q = f"{p}.layers.{i}"
        out += [f"{q}.input_layernorm.weight", f"{q}.post_attention_layernorm.weight"]
        out += _attention(f"{q}.self_attn") + _mlp(f"{q}.mlp")
    return out


def _wb(p):
    return [f"{p}.weight", f"{p}.bias"]


def expected_original_dit_names(cfg) -> set[str]:
    names = []
    for te in ("decoder.time_embed", "decoder.time_embed_r"):
        names += _wb(f"{te}.linear_1") + _wb(f"{te}.linear_2") + _wb(f"{te}.time_proj")
    names += _wb("decoder.proj_in.1") + _wb("decoder.condition_embedder") + _wb("decoder.proj_out.1")
    names += ["decoder.norm_out.weight", "decoder.scale_shift_table"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"decoder.layers.{i}"
        names += [f"{p}.{n}.weight" for n in ("self_attn_norm", "cross_attn_norm", "mlp_norm")]
        names += _attention(f"{p}.self_attn") + _attention(f"{p}.cross_attn") + _mlp(f"{p}.mlp")
        names.append(f"{p}.scale_shift_table")
    names.append("encoder.text_projector.weight")
    names += _wb("encoder.lyric_encoder.embed_tokens") + ["encoder.lyric_encoder.norm.weight"]
    names += _encoder_layers("encoder.lyric_encoder", cfg["num_lyric_encoder_hidden_layers"])
    names += _wb("encoder.timbre_encoder.embed_tokens") + ["encoder.timbre_encoder.norm.weight",
                                                           "encoder.timbre_encoder.special_token"]
    names += _encoder_layers("encoder.timbre_encoder", cfg["num_timbre_encoder_hidden_layers"])
    names += _wb("tokenizer.audio_acoustic_proj") + _wb("tokenizer.quantizer.project_in")
    names += _wb("tokenizer.quantizer.project_out")
    names += _wb("tokenizer.attention_pooler.embed_tokens") + ["tokenizer.attention_pooler.norm.weight",
                                                               "tokenizer.attention_pooler.special_token"]
    names += _encoder_layers("tokenizer.attention_pooler", cfg["num_attention_pooler_hidden_layers"])
    names += _wb("detokenizer.embed_tokens") + _wb("detokenizer.proj_out")
    names += ["detokenizer.norm.weight", "detokenizer.special_tokens"]
    names += _encoder_layers("detokenizer", cfg["num_attention_pooler_hidden_layers"])
    names.append("null_condition_emb")
    assert len(names) == len(set(names))
    return set(names)


def test_diffusers_names_map_one_to_one_onto_original_names(tiny_models):
    mapped = {}
    for part, module in tiny_models.dit_parts().items():
        for name in module.state_dict():
            if name != "silence_latent":
                mapped[(part, name)] = original_dit_name(part, name)
    assert len(set(mapped.values())) == len(mapped), "two diffusers tensors map to one original name"
    assert set(mapped.values()) == expected_original_dit_names(tiny_models.dit_config)


# ---------------------------------------------------------------------------
# Round trips

@pytest.fixture(scope="module")
def converted(tiny_original_dir, tiny_diffusers_dir, tmp_path_factory):
    """{(layout, dtype): {file stem: path}} for both layouts and three dtypes."""
    out = {}
    for layout, src in (("original", tiny_original_dir), ("diffusers", tiny_diffusers_dir)):
        for dtype in SUFFIX:
            paths = convert(src, tmp_path_factory.mktemp(f"{layout}_{dtype}"), dtype=dtype, quiet=True)
            out[layout, dtype] = {p.name[: -len(f"-{SUFFIX[dtype]}.gguf")]: p for p in paths}
    return out


def reference_tensors(models, stem) -> dict[str, torch.Tensor]:
    """What each GGUF must hold, by original name, as float32."""
    if stem == "acestep-v15-turbo":
        ref = models.original_dit_state_dict()
        ref["silence_latent"] = models.silence_latent[0].T
        return ref
    if stem == "vae":
        return models.vae.state_dict()
    if stem == "Qwen3-Embedding-0.6B":
        return models.text_encoder.state_dict()
    # Tied embeddings: the checkpoint (like the real 0.6B LM) has no lm_head.weight.
    return {k: v for k, v in models.lm.state_dict().items() if k != "lm_head.weight"}


def q8_0_bound(x: np.ndarray) -> np.ndarray:
    """Per-value error bound of Q8_0: half a quantization step (step = block max / 127)
    plus the step's own rounding to F16 (relative 2^-11, times |q| <= 127)."""
    blocks = np.abs(x.reshape(-1, 32)).max(axis=1, keepdims=True) / 127.0
    bound = blocks * (0.5 + 127 * 2.0 ** -11) + 1e-7
    return np.broadcast_to(bound, (blocks.shape[0], 32)).reshape(x.shape)


@pytest.mark.parametrize("layout", ["original", "diffusers"])
@pytest.mark.parametrize("dtype", ["bf16", "f32", "q8_0"])
def test_every_tensor_round_trips(converted, tiny_models, layout, dtype):
    files = converted[layout, dtype]
    expected_stems = set(KINDS) if layout == "original" else set(KINDS) - {"acestep-5Hz-lm-0.6B"}
    assert set(files) == expected_stems
    for stem, path in files.items():
        f = acestep_ggml.GGUFFile(str(path))
        assert f.architecture == KINDS[stem]
        ref = reference_tensors(tiny_models, stem)
        types = {name: t for name, _, t in f.tensors()}
        assert set(types) == set(ref), f"{path.name}: tensor set differs"
        for name, value in ref.items():
            got = f.tensor(name)
            # GGUFFile reports ggml's shape, whose leading unit dims ([1, 2, H]) are implicit.
            assert [d for d in got.shape if d != 1] == [d for d in value.shape if d != 1], \
                f"{name}: shape {got.shape} != {tuple(value.shape)}"
            value = value.reshape(got.shape)
            x = value.detach().float().numpy()
            if name == "silence_latent" or dtype == "f32":
                assert types[name] == "f32"
                np.testing.assert_array_equal(got, x, err_msg=f"{path.name}:{name} (seed {tiny_models.seed})")
            elif types[name] == "q8_0":
                assert dtype == "q8_0" and stem != "vae" and x.ndim == 2 and x.shape[1] % 32 == 0
                err = np.abs(got - x)
                assert (err <= q8_0_bound(x)).all(), \
                    f"{path.name}:{name}: Q8_0 error {err.max()} beyond bound (seed {tiny_models.seed})"
            else:
                assert types[name] == "bf16"
                want = value.detach().to(torch.bfloat16).float().numpy()
                np.testing.assert_array_equal(got, want, err_msg=f"{path.name}:{name} (seed {tiny_models.seed})")


def test_q8_0_covers_the_matmul_weights(converted):
    for stem, path in converted["original", "q8_0"].items():
        types = {name: (shape, t) for name, shape, t in acestep_ggml.GGUFFile(str(path)).tensors()}
        for name, (shape, t) in types.items():
            eligible = stem != "vae" and len(shape) == 2 and name.endswith(".weight") and shape[1] % 32 == 0
            assert (t == "q8_0") == eligible, f"{path.name}:{name} {shape} stored as {t}"


def test_both_layouts_give_the_same_files(converted):
    for dtype in SUFFIX:
        for stem, path in converted["diffusers", dtype].items():
            a = acestep_ggml.GGUFFile(str(converted["original", dtype][stem]))
            b = acestep_ggml.GGUFFile(str(path))
            assert sorted(a.tensors()) == sorted(b.tensors()), f"{stem} {dtype}: tensor lists differ"
            for name, _, _ in a.tensors():
                assert np.array_equal(a.tensor_raw(name), b.tensor_raw(name)), f"{stem} {dtype}: {name} differs"


def test_component_folders_convert_alone(converted, tiny_original_dir, tiny_diffusers_dir, tmp_path):
    full = converted["original", "bf16"]
    for src, stem in ((tiny_original_dir / "vae", "vae"),
                      (tiny_original_dir / "Qwen3-Embedding-0.6B", "Qwen3-Embedding-0.6B"),
                      (tiny_diffusers_dir / "vae", "vae"),
                      (tiny_diffusers_dir / "text_encoder", "Qwen3-Embedding-0.6B")):
        (path,) = convert(src, tmp_path / src.parent.name / src.name, quiet=True)
        assert path.name == f"{stem}-BF16.gguf"
        a, b = acestep_ggml.GGUFFile(str(full[stem])), acestep_ggml.GGUFFile(str(path))
        assert sorted(a.tensors()) == sorted(b.tensors())
        for name, _, _ in a.tensors():
            assert np.array_equal(a.tensor_raw(name), b.tensor_raw(name)), f"{src}: {name}"
        if stem != "vae":
            assert a.get("tokenizer.ggml.tokens") == b.get("tokenizer.ggml.tokens")


def test_diffusers_dit_part_alone_is_refused_with_a_hint(tiny_diffusers_dir, tmp_path):
    with pytest.raises(acestep_ggml.InputError, match="pass the pipeline directory") as e:
        convert(tiny_diffusers_dir / "transformer", tmp_path, quiet=True)
    assert str(tiny_diffusers_dir) in str(e.value)


def test_tokenizer_from_vocab_and_merges_alone(converted, tiny_original_dir, tmp_path):
    folder = tmp_path / "Qwen3-Embedding-0.6B"
    shutil.copytree(tiny_original_dir / "Qwen3-Embedding-0.6B", folder)
    (folder / "tokenizer.json").unlink()
    (path,) = convert(folder, tmp_path / "out", quiet=True)
    a, b = acestep_ggml.GGUFFile(str(converted["original", "bf16"]["Qwen3-Embedding-0.6B"])), acestep_ggml.GGUFFile(str(path))
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                "tokenizer.ggml.eos_token_id"):
        assert a.get(key) == b.get(key), key
    assert "tokenizer.huggingface.json" not in b.metadata()


def test_untied_lm_keeps_lm_head(tiny_original_dir, tmp_path):
    torch.manual_seed(0)
    lm = Qwen3ForCausalLM(fixtures.qwen3_config(1000, tie_word_embeddings=False)).eval()
    folder = tmp_path / "acestep-5Hz-lm-untied"
    lm.save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        shutil.copy2(tiny_original_dir / "acestep-5Hz-lm-0.6B" / f, folder / f)
    (path,) = convert(folder, tmp_path / "out", dtype="f32", quiet=True)
    f = acestep_ggml.GGUFFile(str(path))
    assert f.get("acestep.tie_word_embeddings") is False
    np.testing.assert_array_equal(f.tensor("lm_head.weight"), lm.lm_head.weight.detach().numpy())
    assert {n for n, _, _ in f.tensors()} == set(lm.state_dict())


# ---------------------------------------------------------------------------
# Metadata

def test_dit_metadata(converted, tiny_models, tiny_original_dir):
    cfg = tiny_models.dit_config
    source = json.loads((tiny_original_dir / "acestep-v15-turbo" / "config.json").read_text())
    for layout in ("original", "diffusers"):
        f = acestep_ggml.GGUFFile(str(converted[layout, "bf16"]["acestep-v15-turbo"]))
        md = f.metadata()
        assert md["general.name"] == "acestep-v15-turbo"
        assert md["acestep-dit.embedding_length"] == cfg["hidden_size"]
        assert md["acestep-dit.block_count"] == cfg["num_hidden_layers"]
        assert md["acestep-dit.attention.head_count_kv"] == cfg["num_key_value_heads"]
        assert md["acestep-dit.rope.freq_base"] == pytest.approx(1e6)
        assert md["acestep.patch_size"] == 2 and md["acestep.in_channels"] == 192
        assert md["acestep.num_attention_pooler_hidden_layers"] == cfg["num_attention_pooler_hidden_layers"]
        assert md["acestep.is_turbo"] is True
        assert md["acestep.fsq_input_levels"] == [8, 8, 8, 5, 5, 5]
        config = json.loads(md["acestep.config_json"])
        if layout == "original":
            assert config == source
        else:  # rebuilt from the sub-configs: every original key it can know agrees
            for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_audio_decoder_hidden_layers",
                        "num_attention_heads", "num_key_value_heads", "head_dim", "in_channels", "patch_size",
                        "layer_types", "sliding_window", "text_hidden_dim", "timbre_hidden_dim",
                        "num_lyric_encoder_hidden_layers", "num_timbre_encoder_hidden_layers",
                        "num_attention_pooler_hidden_layers", "fsq_dim", "fsq_input_levels", "pool_window_size",
                        "is_turbo", "model_version", "model_type", "use_sliding_window", "rms_norm_eps"):
                assert config[key] == source[key], key


def test_other_metadata_and_tokenizers(converted, tiny_original_dir, lm_tokenizer_dir):
    files = converted["original", "bf16"]
    vae = acestep_ggml.GGUFFile(str(files["vae"]))
    assert json.loads(vae.get("acestep.config_json")) == json.loads((tiny_original_dir / "vae" / "config.json").read_text())

    te = acestep_ggml.GGUFFile(str(files["Qwen3-Embedding-0.6B"]))
    lm = acestep_ggml.GGUFFile(str(files["acestep-5Hz-lm-0.6B"]))
    for f, n in ((te, 151669), (lm, 151669 + 64000)):
        tokens = f.get("tokenizer.ggml.tokens")
        types = f.get("tokenizer.ggml.token_type")
        assert f.get("tokenizer.ggml.model") == "gpt2"
        assert len(tokens) == len(types) == n
        assert tokens[151643] == "<|endoftext|>" and types[151643] == 3
        assert tokens[151645] == "<|im_end|>" and types[151645] == 3
        assert tokens[0] == "!" and types[0] == 1
        assert len(f.get("tokenizer.ggml.merges")) == 151387
        assert f.get("acestep-" + f.architecture.split("-", 1)[1] + ".embedding_length") == 32
    lm_tokens = lm.get("tokenizer.ggml.tokens")
    assert lm_tokens[151669] == "<|audio_code_0|>" and lm_tokens[-1] == "<|audio_code_63999|>"
    assert lm.get("tokenizer.ggml.token_type")[151669] == 4
    assert lm.get("acestep.tie_word_embeddings") is True
    assert lm.get("acestep-lm.vocab_size") == 215669

    # The embedded tokenizer.json rebuilds the exact tokenizer.
    text = "# Lyric\n[verse] hello world<|endoftext|><|audio_code_42|>"
    rebuilt = Tokenizer.from_str(lm.get("tokenizer.huggingface.json"))
    original = Tokenizer.from_file(str(lm_tokenizer_dir / "tokenizer.json"))
    assert rebuilt.encode(text).ids == original.encode(text).ids
    assert rebuilt.encode(text).ids[-1] == 151669 + 42


def test_gguf_py_reads_our_files(converted):
    # gguf-py parses string arrays one field at a time (~20 s per 150k-token vocabulary),
    # so the tokenizer-carrying files are read once, in BF16.
    files = [(stem, path) for dtype in SUFFIX for stem, path in converted["original", dtype].items()
             if stem in ("acestep-v15-turbo", "vae") or (dtype == "bf16" and stem == "Qwen3-Embedding-0.6B")]
    for stem, path in files:
        r = gguf.GGUFReader(str(path))
        field = r.fields["general.architecture"]
        assert bytes(field.parts[field.data[0]]).decode() == KINDS[stem]
        ours = acestep_ggml.GGUFFile(str(path))
        assert [t.name for t in r.tensors] == [name for name, _, _ in ours.tensors()]
        for t in r.tensors[:20]:
            assert np.array_equal(np.asarray(t.data).view(np.uint8).ravel(), ours.tensor_raw(t.name)), t.name


# ---------------------------------------------------------------------------
# Failure safety and memory

def test_interrupted_conversion_leaves_no_gguf(tiny_original_dir, tmp_path, monkeypatch):
    real = convert_mod._encode
    calls = {"n": 0}

    def failing(values, type_name):
        calls["n"] += 1
        if calls["n"] == 25:
            raise OSError("disk full (simulated)")
        return real(values, type_name)

    monkeypatch.setattr(convert_mod, "_encode", failing)
    with pytest.raises(OSError, match="simulated"):
        convert(tiny_original_dir / "acestep-v15-turbo", tmp_path, quiet=True)
    assert list(tmp_path.iterdir()) == []


def _vae_folder(folder: Path, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderOobleck"}))
    save_file(tensors, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


def test_sources_of_each_float_type_convert_exactly(tmp_path):
    seed = int(torch.randint(0, 2**31, ()).item())
    g = torch.Generator().manual_seed(seed)
    src = {dt: torch.randn(40, 96, generator=g).to(dt) for dt in (torch.float32, torch.float16, torch.bfloat16)}
    folder = _vae_folder(tmp_path / "vae", {str(dt).split(".")[1]: t for dt, t in src.items()})
    for dtype, cast in (("bf16", torch.bfloat16), ("f16", torch.float16), ("f32", torch.float32)):
        (path,) = convert(folder, tmp_path / dtype, dtype=dtype, quiet=True)
        f = acestep_ggml.GGUFFile(str(path))
        for dt, t in src.items():
            want = t.to(cast).float().numpy()
            np.testing.assert_array_equal(f.tensor(str(dt).split(".")[1]), want, err_msg=f"{dt} -> {dtype}, seed {seed}")


def test_conversion_memory_stays_far_below_the_checkpoint(tmp_path):
    # Four 16 MiB float32 tensors: a converter holding whole tensors would peak at
    # >= 16 MiB (plus its BF16 copy); one holding the checkpoint at 64 MiB.
    tensors = {f"t{i}": torch.randn(1024, 4096) for i in range(4)}
    folder = _vae_folder(tmp_path / "vae", tensors)
    del tensors
    checkpoint = (folder / "diffusion_pytorch_model.safetensors").stat().st_size
    tracemalloc.start()
    try:
        convert(folder, tmp_path / "out", dtype="bf16", quiet=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < checkpoint / 8, f"peak {peak / 2**20:.1f} MiB for a {checkpoint / 2**20:.0f} MiB checkpoint"


def test_xl_converts_from_both_layouts(synth_xl_models, tmp_path):
    """The XL shape (DiT wider than its condition encoder): both layouts give one acestep-v15-xl-*
    file with the original names (the timbre CLS token included), the encoder_* keys that tell
    XL (as acestep.cpp's convert.py writes them), and the same tensors."""
    models, root, _, _ = synth_xl_models
    diffusers_dir = fixtures.save_diffusers(models, tmp_path / "diffusers")
    files = {}
    for layout, src in (("original", root), ("diffusers", diffusers_dir)):
        out = [p for p in convert(src, tmp_path / layout, dtype="f32", quiet=True) if "v15" in p.name]
        assert [p.name for p in out] == ["acestep-v15-xl-turbo-F32.gguf"], layout
        files[layout] = acestep_ggml.GGUFFile(str(out[0]))
    a, b = files["original"], files["diffusers"]
    cfg = models.dit_config
    assert {n for n, _, _ in a.tensors()} == expected_original_dit_names(cfg) | {"silence_latent"}
    assert sorted(a.tensors()) == sorted(b.tensors())
    for name, _, _ in a.tensors():
        assert np.array_equal(a.tensor_raw(name), b.tensor_raw(name)), name
    for f in (a, b):
        for key in fixtures.ENCODER_KEYS:
            assert f.get(f"acestep.{key}") == cfg[key], key
        h = f.hparams
        assert h.timbre_cls and h.hidden_size == cfg["hidden_size"] and h.encoder_hidden_size == cfg["encoder_hidden_size"]
    shapes = {n: s for n, s, _ in a.tensors()}
    # PyTorch order [out, in]: the bridge maps the encoder's width to the DiT's.
    assert list(shapes["decoder.condition_embedder.weight"]) == [cfg["hidden_size"], cfg["encoder_hidden_size"]]
