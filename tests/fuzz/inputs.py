"""Coverage-guided fuzzing (atheris, libFuzzer for Python) of what users hand the package besides
model files: the exchange-directory reader (exchange.py), audio loading (audio.py, the server's
uploads), the server's request parsing (server/schemas.py validated as FastAPI does, then
server/specs.py), and adapter files (adapters.py: loaded against a tiny DiT, applied merged and at
run time, and run).  A target may raise the package's error family (and OSError, which the CLI
reports as one line too; pydantic's ValidationError for a request body, which the server answers
with 422); any other exception, a crash or a hang is a finding.

    PYTHONPATH=src:tests python -m fuzz.inputs exchange --cases 2000 [--seed N]
    PYTHONPATH=src:tests python -m fuzz.inputs adapter --cases 2000 [--models DIR]

runs one target under atheris in this process (libFuzzer ends it); a found input is written to
tests/fuzz/corpus/inputs-<target>-crash-<sha1>, which tests/test_fuzz_inputs.py replays.  An
input's meaning depends on this file's generators: change them and the corpus replays other cases
(the unit tests beside each fix keep it fixed)."""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"


class Bytes:
    """Draws values from the fuzzer's bytes (what atheris' FuzzedDataProvider does, driver-free)."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def int(self, n: int) -> int:
        """0 .. n-1."""
        if self.pos >= len(self.data) or n <= 1:
            return 0
        b = self.data[self.pos : self.pos + 2]
        self.pos += 2
        return int.from_bytes(b, "little") % n

    def pick(self, seq):
        return seq[self.int(len(seq))]

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def rest(self) -> bytes:
        return self.take(len(self.data))


# Strings that parsers meet at their edges.
TEXT = [
    "",
    " ",
    "N/A",
    "n/a",
    "0",
    "-0",
    "1",
    "-1",
    "12",
    " 90 ",
    "1e309",
    "-1e309",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "0x10",
    "1_000",
    "3.5",
    "2147483648",
    "9" * 40,
    "63999",
    "64000",
    "1,2,3",
    "1,,2",
    ",",
    "1, 2 ,3",
    "\x00",
    "\ufeff12",
    "١٢",
    "true",
    "false",
    "yes",
    "euler",
    "stork4",
    "cover",
    "repaint",
    "A minor",
    "F# minor",
    "4",
    "7",
    "vocals",
    "drums,bass",
    "en",
    "zz",
    "../x",
    "/dev/null",
    "a\nb",
    "\ud800",
    "\xff",
]


def _text(b: Bytes) -> bytes:
    if b.int(3) == 0:
        return b.take(b.int(64))
    s = b.pick(TEXT)
    return s.encode("utf-8", "surrogatepass")


# -- the exchange directory --------------------------------------------------------------------

EXCHANGE_FILES = [
    "caption",
    "lyrics",
    "codes",
    "bpm",
    "duration",
    "keyscale",
    "timesig",
    "language",
    "task",
    "src_audio",
    "ref_audio",
    "repainting_start",
    "repainting_end",
    "track_name",
    "track_classes",
    "audio_cover_strength",
    "solver",
    "stork_substeps",
    "use_adg",
    "cfg_interval_start",
    "cfg_interval_end",
    "velocity_norm_threshold",
    "velocity_ema_factor",
    "dcw_mode",
    "dcw_scaler",
    "dcw_high_scaler",
    "repaint_mode",
    "repaint_strength",
    "retake_seed",
    "retake_variance",
]


def target_exchange(data: bytes) -> None:
    from acestep_ggml.errors import AcestepError
    from acestep_ggml.exchange import read_controls, read_request

    b = Bytes(data)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for _ in range(b.int(8) + 1):
            name = b.pick(EXCHANGE_FILES)
            how = b.int(10)
            if how == 0 and not (d / name).exists():
                (d / name).mkdir()  # a folder where a file should be
            elif not (d / name).is_dir():
                (d / name).write_bytes(_text(b))
        for read in (read_request, read_controls):
            try:
                read(d)
            except (AcestepError, OSError):
                pass


# -- audio -------------------------------------------------------------------------------------

_WAVS: dict = {}


def _seed_audio(fmt: str, subtype: str) -> bytes:
    """A valid short file to mutate, made once per format."""
    if (fmt, subtype) not in _WAVS:
        import numpy as np
        import soundfile as sf

        buf = io.BytesIO()
        t = np.linspace(0, 1, 400, dtype=np.float32)
        sf.write(buf, np.stack([np.sin(40 * t), np.cos(30 * t)], 1), 8000, format=fmt, subtype=subtype)
        _WAVS[(fmt, subtype)] = buf.getvalue()
    return _WAVS[(fmt, subtype)]


def target_audio(data: bytes) -> None:
    from acestep_ggml.audio import load_audio, read_audio
    from acestep_ggml.errors import AcestepError
    from acestep_ggml.server.engine import decode_upload, latents_from_bytes

    b = Bytes(data)
    fmt, subtype, ext = b.pick(
        [("WAV", "PCM_16", ".wav"), ("WAV", "FLOAT", ".wav"), ("FLAC", "PCM_16", ".flac"), ("OGG", "VORBIS", ".ogg")]
    )
    if b.int(2):  # a valid file with some bytes changed (its header most often)
        raw = bytearray(_seed_audio(fmt, subtype))
        for _ in range(b.int(6) + 1):
            at = b.int(64) if b.int(2) else b.int(len(raw))
            raw[at : at + 1] = b.take(b.int(4) + 1)
        raw = bytes(raw[: len(raw) - b.int(len(raw))] if b.int(4) == 0 else raw)
    else:
        raw = b.rest()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("a" + b.pick([ext, ext, ".mp3", ".aiff", ""]))
        path.write_bytes(raw)
        for call in (
            lambda: read_audio(path),
            lambda: load_audio(path, 48000),
            lambda: decode_upload(raw, "audio", 48000),
            lambda: latents_from_bytes(raw, "latents"),
        ):
            try:
                call()
            except (AcestepError, OSError):
                pass


# -- the server's requests ---------------------------------------------------------------------

VALUES = [
    None,
    "",
    "x",
    " ",
    0,
    1,
    -1,
    2,
    3,
    7,
    90,
    2**31,
    2**63,
    -(2**63),
    1e309,
    -1e309,
    0.5,
    -0.5,
    1e-300,
    True,
    False,
    [],
    {},
    [1, 2],
    "1,2,3",
    "0.9,0.5,0",
    "nan",
    "1e309",
    "text2music",
    "cover",
    "repaint",
    "lego",
    "extract",
    "complete",
    "cover-nofsq",
    "[Instrumental]",
    "4",
    "A minor",
    "vocals",
    "wav",
    "mp3",
    "flac",
    "ogg",
    "64000",
    "\x00",
    "a" * 5000,
]


def _request(b: Bytes, fields: list[str]) -> dict:
    d = {}
    for _ in range(b.int(12)):
        d[b.pick(fields)] = b.pick(VALUES) if b.int(4) else _text(b).decode("utf-8", "replace")
    return d


def target_server(data: bytes) -> None:
    from pydantic import ValidationError

    from acestep_ggml.errors import AcestepError
    from acestep_ggml.server import specs
    from acestep_ggml.server.schemas import AceRequest, UpstreamTask

    b = Bytes(data)
    if b.int(4) == 0:  # a raw body, as FastAPI parses it
        try:
            body = json.loads(b.rest())
        except (ValueError, RecursionError):
            return
    else:
        body = _request(b, list(AceRequest.model_fields) + list(UpstreamTask.model_fields))
    for model in (AceRequest, UpstreamTask):
        try:
            req = model.model_validate(body) if isinstance(body, dict) else model.model_validate_json(json.dumps(body))
        except ValidationError:
            continue
        if model is AceRequest:
            try:
                specs.ace_request(req)
            except AcestepError:
                pass


# -- adapter files -----------------------------------------------------------------------------
# The choices below take the plain path when the fuzzer's bytes run out (Bytes.int gives 0 then):
# a rare fault is `_rare(b, n)`, so that short inputs still make adapters that load and run.

# The tiny DiT the adapters are loaded against: from `--models` (the folder of the other fuzzers'
# tiny models), opened once per process.
MODELS = Path.home() / ".cache/acestep-ggml/fuzz-models"
_DIT: dict = {}
# Module paths that this DiT lacks, that are not Linears (the patch convolutions), or half names.
WRONG_MODULES = [
    "layers.99.self_attn.q_proj",
    "layers.0.self_attn",
    "layers.0.attn.to_q",
    "transformer_blocks.0.attn.to_q",
    "proj_in.1",
    "proj_out.1",
    "proj_in_conv",
    "norm_out",
    "layers.0.self_attn.q_proj.lora_A",
    "",
    "..",
    "layers.-1.mlp.up_proj",
]
# safetensors dtypes and their element sizes: the float ones adapters use first, then others.
DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I32": 4, "I64": 8, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
NUMBERS = [8, 0, 1, -1, 2, 4, 16, 0.5, -3.5, 1e-30, 1e30, 1e308, float("nan"), float("inf"), -float("inf"), 2**40]
JUNK = [None, "", "8", "abc", "NaN", [], [4], {}, {"r": 2}, True, False, -(2**63)]
# Pattern keys: module names, regexes, broken regexes (a count past 2**32 and groups nested 3000 deep make
# re raise OverflowError and RecursionError), and regexes whose match backtracks for minutes.
PATTERN_KEYS = ["layers.0.self_attn.q_proj", "q_proj", "mlp.down_proj", "^time_embed.linear_1", "(q|k)_proj", ".*"]
PATTERN_KEYS += ["(", "[", "*", "", "\\", "(.*)*z", "(.*.*)*x", "(\\w|.)*y", "q{4294967296}", "(" * 3000 + ")" * 3000]
RANKS = [4, 1, 2, 3, 8, 0, 64, 300]
MAX_ELEMENTS = 1 << 18  # one tensor: at most 1 MiB of F32 (2 of F64); rarely more than one that big


def _rare(b: Bytes, n: int) -> bool:
    """True one time in n (never once the bytes have run out)."""
    return b.int(n) == n - 1


def _junk_number(b: Bytes):
    return b.pick(NUMBERS) if b.int(4) else b.pick(JUNK)


def _shape(b: Bytes, shape: tuple) -> tuple:
    """`shape`, or one that users' files get wrong instead: a size off by one, zero, one or far too
    big; transposed; a dimension too many or too few."""
    if not _rare(b, 25):
        return shape
    how = b.int(5)
    if how == 0 and len(shape) == 2:
        return shape[::-1]
    if how == 1:
        return shape + (1,)
    if how == 2:
        return shape[1:]
    dims = list(shape) or [1]
    at = b.int(len(dims))
    dims[at] = b.pick([0, dims[at] + 1, max(dims[at] - 1, 0), 1, 37 * dims[at] + 7])
    return tuple(dims)


def _encode(b: Bytes, shape: tuple, dtype: str, rng) -> bytes:
    """Random values of `shape` as `dtype`'s bytes, sometimes all zero or with a NaN or infinity."""
    import numpy as np

    n = int(np.prod(shape, dtype=np.int64))
    a = rng.standard_normal(n) * (b.pick([0.1, 1.0, 0.3]) if not _rare(b, 6) else b.pick([0.0, 1e4, 1e-20, 1e38]))
    if n and _rare(b, 40):
        a[b.int(n)] = b.pick([float("nan"), float("inf"), -float("inf"), 1e300])
    with np.errstate(all="ignore"):
        if dtype in ("F32", "F16", "F64"):
            return a.astype({"F32": "<f4", "F16": "<f2", "F64": "<f8"}[dtype]).tobytes()
        if dtype == "BF16":
            return (a.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
        if dtype in ("I32", "I64"):
            return np.nan_to_num(a, posinf=0, neginf=0).astype(f"<i{DTYPES[dtype]}").tobytes()
    return rng.integers(0, 2 if dtype == "BOOL" else 256, n, dtype=np.uint8).tobytes()


def _safetensors(tensors: dict, metadata) -> bytes:
    """A safetensors file of {name: (dtype, shape, data)}: written by the safetensors library where
    it can (dtypes numpy has, a str -> str metadata map), else by hand (BF16, F8, junk metadata)."""
    import numpy as np

    np_types = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I32": "<i4", "I64": "<i8", "U8": "u1"}
    meta_ok = metadata is None or all(isinstance(v, str) for v in metadata.values())
    if meta_ok and all(dt in np_types for dt, _, _ in tensors.values()):
        from safetensors.numpy import save

        return save({k: np.frombuffer(raw, np_types[dt]).reshape(shape) for k, (dt, shape, raw) in tensors.items()}, metadata)
    header: dict = {} if metadata is None else {"__metadata__": metadata}
    offset = 0
    for k, (dt, shape, raw) in tensors.items():
        header[k] = {"dtype": dt, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return len(h).to_bytes(8, "little") + h + b"".join(raw for _, _, raw in tensors.values())


def _adapter_tensors(b: Bytes, fmt: str, rank: int, targets: dict, rng) -> dict:
    """The tensors of an adapter in `fmt` (named as its trainer names them) on 1 to 6 modules."""
    paths = sorted(t[len("decoder.") : -len(".weight")] for t in targets)
    tensors: dict = {}
    dtype = b.pick(["F32", "F16", "BF16", "F32", "F64"]) if not _rare(b, 10) else b.pick(list(DTYPES))

    def put(key: str, shape: tuple) -> None:
        dt = dtype if not _rare(b, 40) else b.pick(list(DTYPES))
        shape = _shape(b, tuple(shape))
        n = 1
        for d in shape:
            n *= d
        if n > MAX_ELEMENTS:  # fewer rows: "huge" stays a few MB
            shape = (MAX_ELEMENTS // (n // shape[0]),) + shape[1:]
        tensors[key] = (dt, shape, _encode(b, shape, dt, rng))

    for _ in range(b.int(6) + 1):
        path = b.pick(WRONG_MODULES) if _rare(b, 8) else b.pick(paths)
        out, inp = targets.get(f"decoder.{path}.weight", (64, 64))
        r = rank if not _rare(b, 4) else b.pick(RANKS)
        if fmt in ("peft", "diffusers"):
            if fmt == "diffusers":
                stem = "transformer." + path
                for a, c in ((".q_proj", ".to_q"), (".k_proj", ".to_k"), (".v_proj", ".to_v"), (".o_proj", ".to_out.0")):
                    stem = stem[: -len(a)] + c if stem.endswith(a) else stem
            else:
                stem = b.pick(["base_model.model.", "", "base_model.model.decoder.", "model.", "diffusion_model."]) + path
            tag = b.pick(["", ".default"])
            put(f"{stem}.lora_A{tag}.weight", (r, inp))
            put(f"{stem}.lora_B{tag}.weight", (out, r))
            if _rare(b, 3):  # DoRA's magnitude
                put(f"{stem}.lora_magnitude_vector" + b.pick(["", ".weight", ".default"]), (out,))
        elif fmt == "comfy":
            prefix = b.pick(["diffusion_model.", "diffusion_model.decoder.", "lycoris_", "lora_unet_", "lora_unet_decoder_", ""])
            stem = prefix + (path.replace(".", "_") if prefix.startswith("l") else path)
            put(f"{stem}.lora_down.weight", (r, inp))
            put(f"{stem}.lora_up.weight", (out, r))
            if not _rare(b, 4):
                put(f"{stem}.alpha", () if not _rare(b, 4) else b.pick([(1,), (2,), (0,)]))
        else:  # LyCORIS LoKr, full factors or split ones
            stem = b.pick(["lycoris_", "lora_unet_", ""]) + path.replace(".", "_")
            a_ = b.pick([d for d in range(1, out + 1) if out % d == 0])
            b_ = b.pick([d for d in range(1, inp + 1) if inp % d == 0])
            for name, (rows, cols) in (("w1", (a_, b_)), ("w2", (out // a_, inp // b_))):
                if fmt == "lokr-split" and (name == "w2" or _rare(b, 3)):
                    dim = b.pick([2, 1, 4, 0, 3])
                    put(f"{stem}.lokr_{name}_a", (rows, dim))
                    if not _rare(b, 15):
                        put(f"{stem}.lokr_{name}_b", (dim, cols))
                elif not _rare(b, 15):
                    put(f"{stem}.lokr_{name}", (rows, cols))
            if not _rare(b, 4):
                put(f"{stem}.alpha", () if not _rare(b, 4) else b.pick([(1,), (2,), (0,)]))
            if _rare(b, 3):
                put(f"{stem}.dora_scale", b.pick([(out, 1), (out,), (1, out)]))
        if _rare(b, 20):  # what we refuse: a LoRA bias, DoRA in the ComfyUI layout, Tucker, LoHa
            put(stem + b.pick([".lora_B.bias", ".lora_up.bias", ".dora_scale", ".lokr_t2", ".hada_w1_a"]), (out,))
    return tensors


def _json_junk(b: Bytes) -> bytes:
    return b.pick([b"", b"{", b"null", b"[1, 2]", b'"r"', b"NaN", b"\xff\xfe{}", b'{"r": 4,}', b"{}{}", b'{"r": 4}\x00'])


def _config(b: Bytes, rank: int):
    """adapter_config.json's values (or a list, number or string instead of the object)."""
    config: dict = {"peft_type": "LORA" if not _rare(b, 10) else b.pick(["LOHA", "lora", None, 3])}
    for key, value in (("r", rank), ("lora_alpha", 2 * rank), ("use_rslora", False), ("use_dora", False)):
        if not _rare(b, 8):
            config[key] = value if not _rare(b, 5) else _junk_number(b)
    for key in ("rank_pattern", "alpha_pattern"):
        if _rare(b, 3):
            n = b.int(3) + 1
            config[key] = {b.pick(PATTERN_KEYS): _junk_number(b) for _ in range(n)} if not _rare(b, 4) else b.pick(JUNK)
    return config if not _rare(b, 12) else b.pick([[config], 7, "x", None])


def _metadata(b: Bytes, fmt: str, rank: int):
    """The file's __metadata__: diffusers' lora_adapter_metadata, LyCORIS' lokr_config, or junk."""
    meta: dict = {"format": "pt"}
    if fmt == "diffusers" and not _rare(b, 4):
        config = _config(b, rank)
        if isinstance(config, dict):
            config = {f"transformer.{k}": v for k, v in config.items()}
        meta["lora_adapter_metadata"] = json.dumps(config) if not _rare(b, 8) else _json_junk(b).decode("utf-8", "replace")
    if fmt.startswith("lokr") and not _rare(b, 4):
        cfg = {"linear_dim": b.pick([4, 0, -4, "8", None, 1e30, 2]), "rs_lora": b.pick([False, True, "yes"])}
        cfg = cfg if not _rare(b, 8) else b.pick([[cfg], 3, "x", None])
        meta["lokr_config"] = json.dumps(cfg) if not _rare(b, 8) else _json_junk(b).decode("utf-8", "replace")
    if _rare(b, 20):  # not a str -> str map: the safetensors reader refuses it
        meta["bad"] = b.pick([1, None, ["x"], {"y": "z"}])
    return meta if not _rare(b, 4) else None


def _mutate(b: Bytes, raw: bytes) -> bytes:
    """A file with some bytes changed: its header length, its header, anywhere; or cut short."""
    out = bytearray(raw)
    for _ in range(b.int(4) + 1):
        how = b.int(3)
        if how == 0:
            out[0:8] = b.pick([0, 1, 7, 2**63, 2**64 - 1, len(raw), len(raw) - 8]).to_bytes(8, "little")
        else:
            end = min(len(out), 8 + int.from_bytes(bytes(out[:8]), "little")) if how == 1 else len(out)
            at = b.int(max(end, 1))
            out[at : at + 1] = b.take(b.int(4) + 1)
    return bytes(out[: len(out) - b.int(len(out))] if _rare(b, 5) else out)


def _write_adapter(b: Bytes, root: Path, targets: dict) -> Path:
    """An adapter under `root`, made as users' files go wrong: the path to hand to load_adapter."""
    import numpy as np

    rng = np.random.default_rng(b.int(1 << 16))
    fmt = b.pick(["peft", "comfy", "diffusers", "lokr", "lokr-split", "peft", "comfy", "raw"])
    rank = b.pick(RANKS)
    if fmt == "raw":
        data = b.rest()
    else:
        data = _safetensors(_adapter_tensors(b, fmt, rank, targets, rng), _metadata(b, fmt, rank))
        if _rare(b, 10):
            data = _mutate(b, data)
    layout = b.int(8)
    if fmt in ("peft", "raw") and layout < 4:  # a PEFT folder, maybe with parts missing
        folder = root / "adapter"
        folder.mkdir()
        config = _config(b, rank)
        how = b.int(16)
        if how == 1:
            (folder / "adapter_config.json").mkdir()
        elif how == 2:
            (folder / "adapter_config.json").write_bytes(_json_junk(b))
        elif how != 3:
            (folder / "adapter_config.json").write_text(json.dumps(config))
        if how == 4:
            (folder / "adapter_model.bin").write_bytes(b"\x80\x04")
        elif how == 5:
            (folder / "adapter_model.safetensors").mkdir()
        else:
            (folder / "adapter_model.safetensors").write_bytes(data)
        return folder / "adapter_model.safetensors" if _rare(b, 6) else folder
    if layout == 4:  # a folder of one file, or of 0 or 2
        folder = root / "folder"
        folder.mkdir()
        for i in range(b.pick([1, 0, 2])):
            (folder / f"lora{i}.safetensors").write_bytes(data)
        return folder
    if layout == 5 and _rare(b, 4):
        return root / "missing.safetensors"
    path = root / b.pick(["lora.safetensors", "lokr_weights.safetensors", "lora.bin", "lora"])
    path.write_bytes(data)
    return path


def _tiny_dit():
    """(DiT, {target: (out, in)}, forward inputs of 4 frames) of the tiny DiT in MODELS, opened once."""
    if not _DIT:
        import logging

        import numpy as np

        import acestep_ggml

        # Its warnings about keys that match no module are expected here: stderr is for findings.
        logging.getLogger("acestep_ggml").addHandler(logging.NullHandler())
        logging.getLogger("acestep_ggml").propagate = False
        paths = [p for p in sorted(Path(MODELS).glob("*.gguf")) if acestep_ggml.GGUFFile(str(p)).architecture == "acestep-dit"]
        if not paths:
            raise SystemExit(f"no acestep-dit GGUF in {MODELS}: python -m fuzz.inputs adapter --models DIR makes one")
        dit = acestep_ggml.DiT(paths[0], n_threads=1)
        rng = np.random.default_rng(0)
        f = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
        inputs = (f(4, 64), 0.5, f(3, dit.config["encoder_hidden_size"]), f(4, 64))
        _DIT.update(dit=dit, targets={n: tuple(s) for n, s in dit._m.adaptable()}, inputs=inputs)
    return _DIT["dit"], _DIT["targets"], _DIT["inputs"]


def target_adapter(data: bytes) -> None:
    from acestep_ggml.adapters import Applied, check_loras, load_adapter
    from acestep_ggml.errors import AcestepError

    dit, targets, inputs = _tiny_dit()
    b = Bytes(data)
    scale = b.pick([1.0, 0.5, -1.0, 0.0, 1e-30, 3e38, 1e300, float("nan"), float("inf"), "0.8", "x", None])
    with tempfile.TemporaryDirectory() as tmp:
        path = _write_adapter(b, Path(tmp), targets)
        try:
            ((path, scale),) = check_loras([(path, scale)])  # as Synthesizer.set_loras takes them
            adapter = load_adapter(path, targets)
            adapter.describe()
        except (AcestepError, OSError):
            return
    adapters = [(adapter, scale)] + ([(adapter, b.pick([0.5, -2.0, 1e30]))] if _rare(b, 4) else [])
    for mode in ("merge", "runtime"):
        applied = Applied(dit._m, mode)
        try:
            applied.set(adapters)
            dit.forward(*inputs)
        except (AcestepError, OSError):
            pass
        finally:
            applied.set([])  # the file's weights again, for the next case


TARGETS = {"exchange": target_exchange, "audio": target_audio, "server": target_server, "adapter": target_adapter}


def replay(target: str, data: bytes) -> None:
    TARGETS[target](data)


def run_all(seed: int, cases: int, models: Path | None = None) -> dict:
    """Every target in a subprocess of its own under atheris: {target: cases}; raises on a finding."""
    import subprocess

    from .common import child_env

    out = {}
    for name in TARGETS:
        r = subprocess.run(
            [sys.executable, "-m", "fuzz.inputs", name, "--cases", str(cases), "--seed", str(seed)]
            + (["--models", str(models)] if models else []),
            cwd=str(Path(__file__).resolve().parent.parent),
            env=child_env(),
        )
        if r.returncode != 0:
            raise SystemExit(f"inputs {name}: finding (exit {r.returncode}); see above and tests/fuzz/corpus/")
        out[name] = cases
    return out


def _models(folder: Path) -> None:
    """Points the adapter target at `folder`, made first (torch, in a process of its own, so that
    the fuzzed process never imports it) when it holds no tiny models yet."""
    global MODELS
    MODELS = folder
    if len(list(folder.glob("*.gguf"))) < 4:
        import subprocess

        from .common import TESTS, child_env

        code = "import sys, pathlib, fuzz.common as c; c.build_tiny_models(pathlib.Path(sys.argv[1]))"
        subprocess.run([sys.executable, "-c", code, str(folder)], cwd=str(TESTS), env=child_env(), check=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fuzz.inputs")
    p.add_argument("target", choices=sorted(TARGETS))
    p.add_argument("--cases", type=int, default=2000)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-len", type=int, default=4096)
    p.add_argument("--timeout", type=int, default=60, help="seconds one input may take before it is a hang")
    p.add_argument("--models", type=Path, default=MODELS, help="adapter: the folder of tiny GGUFs (made there when empty)")
    args = p.parse_args(argv)
    from .common import fuzz_seed

    seed = fuzz_seed(f"inputs {args.target}", args.seed)
    import atheris

    with atheris.instrument_imports(include=["acestep_ggml"]):
        import acestep_ggml.adapters  # noqa: F401
        import acestep_ggml.audio  # noqa: F401
        import acestep_ggml.exchange  # noqa: F401
        import acestep_ggml.server.engine  # noqa: F401
        import acestep_ggml.server.schemas  # noqa: F401
        import acestep_ggml.server.specs  # noqa: F401
    if args.target == "adapter":  # after the instrumented imports: child_env imports acestep_ggml
        _models(args.models)
    CORPUS.mkdir(exist_ok=True)
    target = TARGETS[args.target]
    # libFuzzer's memory limit (2 GiB) is on the peak RSS, which Linux carries over from a parent
    # through fork and exec: a pytest worker that holds models once made every target here "run
    # out of memory" at its first check.  The limit counts from that inherited peak.
    import resource

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1 << 20 if sys.platform == "darwin" else 1 << 10)
    atheris.Setup(
        [
            sys.argv[0],
            f"-runs={args.cases}",
            f"-seed={seed}",
            f"-max_len={args.max_len}",
            f"-artifact_prefix={CORPUS}/inputs-{args.target}-",
            "-len_control=0",
            f"-timeout={args.timeout}",
            f"-rss_limit_mb={2048 + peak_mb}",  # a case takes milliseconds; more on a machine that pauses niced jobs
            "-print_final_stats=1",
        ],
        target,
    )
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
