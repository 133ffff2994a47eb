"""Coverage-guided fuzzing (atheris, libFuzzer for Python) of what users hand the package besides
model files: the exchange-directory reader (exchange.py), audio loading (audio.py, the server's
uploads), and the server's request parsing (server/schemas.py validated as FastAPI does, then
server/specs.py).  A target may raise the package's error family (and OSError, which the CLI
reports as one line too; pydantic's ValidationError for a request body, which the server answers
with 422); any other exception, a crash or a hang is a finding.

    PYTHONPATH=src:tests python -m fuzz.inputs exchange --cases 2000 [--seed N]

runs one target under atheris in this process (libFuzzer ends it); a found input is written to
tests/fuzz/corpus/inputs-<target>-crash-<sha1>, which tests/test_fuzz_inputs.py replays.
Adapter files (src/acestep_ggml/adapters.py) have no target yet: that module did not exist when
these were written."""

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


TARGETS = {"exchange": target_exchange, "audio": target_audio, "server": target_server}


def replay(target: str, data: bytes) -> None:
    TARGETS[target](data)


def run_all(seed: int, cases: int) -> dict:
    """Every target in a subprocess of its own under atheris: {target: cases}; raises on a finding."""
    import subprocess

    from .common import child_env

    out = {}
    for name in TARGETS:
        r = subprocess.run(
            [sys.executable, "-m", "fuzz.inputs", name, "--cases", str(cases), "--seed", str(seed)],
            cwd=str(Path(__file__).resolve().parent.parent),
            env=child_env(),
        )
        if r.returncode != 0:
            raise SystemExit(f"inputs {name}: finding (exit {r.returncode}); see above and tests/fuzz/corpus/")
        out[name] = cases
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fuzz.inputs")
    p.add_argument("target", choices=sorted(TARGETS))
    p.add_argument("--cases", type=int, default=2000)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-len", type=int, default=4096)
    args = p.parse_args(argv)
    from .common import fuzz_seed

    seed = fuzz_seed(f"inputs {args.target}", args.seed)
    import atheris

    with atheris.instrument_imports(include=["acestep_ggml"]):
        import acestep_ggml.audio  # noqa: F401
        import acestep_ggml.exchange  # noqa: F401
        import acestep_ggml.server.engine  # noqa: F401
        import acestep_ggml.server.schemas  # noqa: F401
        import acestep_ggml.server.specs  # noqa: F401
    CORPUS.mkdir(exist_ok=True)
    target = TARGETS[args.target]
    atheris.Setup(
        [
            sys.argv[0],
            f"-runs={args.cases}",
            f"-seed={seed}",
            f"-max_len={args.max_len}",
            f"-artifact_prefix={CORPUS}/inputs-{args.target}-",
            "-len_control=0",
            "-print_final_stats=1",
        ],
        target,
    )
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
