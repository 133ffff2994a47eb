"""Hyperparameter mutation: one width, layer count, head count, window, rate, epsilon or tokenizer
value of one well-formed tiny model file changed in place (NaN, inf, 0, negative, huge,
off-by-one, ...), then a real `synth` (DiT, text encoder, VAE) or `lm` (LM) run in a subprocess.
A clean ``error: ...`` with exit 2, or success, is fine; a signal, a hang or a traceback is a
finding."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

from .common import CAPTION, KINDS, exchange_dir, files_by_kind, run_cli
from .gguf_edit import V, layout, read_value, set_value

# The metadata the fuzzer leaves alone: names, the architecture (a wrong one is a plain
# "expected acestep-dit" error, tests/test_model_files.py), the tokenizer's token lists (the
# byte fuzzer covers them).
_SKIP = {"general.architecture", "general.name", "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"}
_CONFIG = "acestep.config_json"
_HF_TOKENIZER = "tokenizer.huggingface.json"


def _ints(v: int, signed: bool) -> list:
    out = [0, 1, 2, 3, v - 1, v + 1, 2 * v, max(1, v // 2), 7, 1000003, 2**31 - 1, 2**31, 2**32 - 1, 1 << 24, 1 << 20]
    if signed:
        out += [-1, -v, -(2**31), 1 << 40]
    return out


def _floats(v: float) -> list:
    return [math.nan, math.inf, -math.inf, 0.0, -0.0, -v, -1.0, 1e30, 1e-45, 1e-38, 3.4e38, 1.0, 10 * v, 1e-12, 0.5]


def sites(files: dict[str, Path]) -> list[tuple[str, str, str]]:
    """Every value the fuzzer may change: (architecture, "gguf" or "config", key).  The metadata
    keys of the file; config.json's keys that the core's key table reads and no GGUF key of the
    file overrides (acestep_ggml._core.hparam_keys), and config.json's layer_types."""
    from acestep_ggml import _core

    out = []
    for arch, path in files.items():
        lay = layout(path)
        for key, (_, _, types) in lay.fields.items():
            if key in _SKIP or key == _CONFIG or (types[0] == V.ARRAY and types[-1] == V.STRING):
                continue
            out.append((arch, "gguf", key))
        cfg = json.loads(lay.values.get(_CONFIG, "{}"))
        read = {c for g, _, c, _, _ in _core.hparam_keys(arch) if c and (g is None or g not in lay.fields)}
        out += [(arch, "config", key) for key in sorted(read | {"layer_types"}) if key in cfg]
    return out


def make_case(rng: random.Random, files: dict[str, Path], all_sites: list) -> dict:
    """One mutation: a site and its new value (JSON-able; NaN and inf as JSON's NaN/Infinity)."""
    # Each kind as often as the others, then a site of that kind.
    arch = rng.choice(sorted(files))
    arch_sites = [s for s in all_sites if s[0] == arch]
    _, where, key = rng.choice(arch_sites)
    path = files[arch]
    if where == "gguf":
        old = read_value(path, key)
        types = layout(path).fields[key][2]
        t = types[0]
        if key == _HF_TOKENIZER:
            value = _mutate_json_text(rng, old)
        elif t == V.STRING:
            value = rng.choice(["", "llama", "gpt2", "qwen2", "x" * 300, "\u00ff\u00fe"])
        elif t == V.ARRAY:
            value = _mutate_list(rng, list(old), signed=True)
        elif t == V.BOOL:
            value = rng.choice([0, 1, 2, 255])
        elif t in (V.FLOAT32, V.FLOAT64):
            value = rng.choice(_floats(float(old)))
        else:
            value = rng.choice(_ints(int(old), signed=t in (V.INT32, V.INT64, V.INT8, V.INT16)))
    else:
        old = json.loads(read_value(path, _CONFIG))[key]
        if isinstance(old, bool):
            value = rng.choice([not old, 0, 2, "yes", None])
        elif isinstance(old, list):
            value = _mutate_list(rng, list(old), signed=True)
        elif isinstance(old, float):
            value = rng.choice(_floats(old) + [None, "1e-6", 1])
        else:
            value = rng.choice(_ints(int(old), signed=True) + [1.5, math.nan, 1e30, None, str(old)])
    return {
        "kind": arch,
        "file": path.name,
        "where": where,
        "key": key,
        "value": value,
        "command": KINDS[arch],
        "lm_metadata": rng.random() < 0.7,
    }


def _mutate_list(rng: random.Random, old: list, signed: bool):
    op = rng.choice(["element", "element", "element", "drop", "append", "empty"])
    if op == "drop" and old:
        return old[:-1]
    if op == "append":
        return old + [old[-1] if old else 1]
    if op == "empty" or not old:
        return []
    i = rng.randrange(len(old))
    if isinstance(old[i], str):
        old[i] = rng.choice(["", "x", "full_attention", "sliding_attention", "chunked_attention"])
    else:
        old[i] = rng.choice(_ints(int(old[i]), signed) + [0, -1])
    return old


def _mutate_json_text(rng: random.Random, text: str) -> dict:
    """Big JSON values are stored in a case as an operation on them, not as their text."""
    op = rng.choice(["truncate", "empty", "null", "vocab", "added"])
    if op == "truncate":
        return {"op": "truncate", "at": rng.randrange(len(text))}
    if op == "empty":
        return {"op": "set", "text": "{}"}
    if op == "null":
        return {"op": "set", "text": "null"}
    if op == "vocab":
        return {"op": "replace", "old": '"model": {', "new": '"model": {"type": "Unigram", '}
    return {"op": "replace", "old": '"id": 151643', "new": '"id": ' + str(rng.choice([2**31, 2**32 + 5, -7, 999999999]))}


def apply(case: dict, src: Path, dst: Path) -> None:
    """dst = the mutated copy of src."""
    key, value = case["key"], case["value"]
    if case["where"] == "config":
        cfg = json.loads(read_value(src, _CONFIG))
        cfg[key] = value
        set_value(src, dst, _CONFIG, json.dumps(cfg, allow_nan=True))
    elif isinstance(value, dict) and "op" in value:
        text = read_value(src, key)
        if value["op"] == "truncate":
            text = text[: value["at"]]
        elif value["op"] == "set":
            text = value["text"]
        else:
            text = text.replace(value["old"], value["new"], 1)
        set_value(src, dst, key, text)
    else:
        set_value(src, dst, key, value)


def run_case(case: dict, models: Path, work: Path, timeout: float, env: dict | None = None):
    """The mutated file beside links to the others, then the case's command on that folder."""
    files = files_by_kind(models)
    d = work / "models"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    for arch, p in files.items():
        if arch != case["kind"]:
            (d / p.name).symlink_to(p)
    apply(case, files[case["kind"]], d / files[case["kind"]].name)
    return run_command(case["command"], d, work, timeout, env, case.get("lm_metadata", True))


def run_command(command: str, models: Path, work: Path, timeout: float, env: dict | None = None, lm_metadata: bool = True):
    """`synth` of a 10 s song, or `lm` (given the metadata, or writing them itself), on `models`."""
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    common = ["--models", models, "--quiet", "--threads", "2"]
    if command == "synth":
        args = ["synth", "--input-dir", exchange_dir(work), "-o", work / "a.wav", "--seed", "1", *common]
    else:
        # 10 s of codes either way; without the other metadata the LM writes them first (its CoT).
        args = ["lm", "--caption", CAPTION, "--output-dir", out, "--seed", "1", "--duration", "10", *common]
        if lm_metadata:
            args += ["--bpm", "90", "--keyscale", "A minor", "--timesignature", "4", "--language", "en"]
    return run_cli(args, timeout, env)


def cases(seed: int, n: int, files: dict[str, Path]):
    """n cases from one seed; case i depends on the seed and i alone."""
    all_sites = sites(files)
    for i in range(n):
        yield i, make_case(random.Random(f"{seed}:{i}"), files, all_sites)
