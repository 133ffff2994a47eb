"""Memory refused up front (acestep_ggml/memory.py): a request whose estimated need exceeds the
free memory is refused before any work with MemoryRefused naming need and available, through the
API, the LM and the CLI; ACESTEP_GGML_MEMORY_LIMIT caps the free figure; and the estimate stays
within a stated factor of the peak memory a run really takes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import fixtures
import pytest
from _vae_gguf import make_reference as make_vae_reference
from conftest import SYNTH_VAE, fresh_seed

import acestep_ggml as ace
from acestep_ggml import _core, memory
from acestep_ggml.convert import convert
from acestep_ggml.lm import LM

SONG = dict(
    caption="warm analog pads, slow", lyrics="[Verse]\nla la la", bpm=120, keyscale="C major", timesignature=4, language="en"
)


@pytest.mark.parametrize("value, parsed", [("", -1), ("0", 0), ("123456", 123456), ("32M", 32 << 20), ("8G", 8 << 30)])
def test_memory_limit_is_parsed_by_the_core(value, parsed, monkeypatch):
    monkeypatch.setenv("ACESTEP_GGML_MEMORY_LIMIT", value)
    assert _core.memory_limit() == parsed


@pytest.mark.parametrize("value", ["lots", "-5", "8GB", "1.5G", "99999999999999G"])
def test_a_bad_memory_limit_is_an_input_error(value, monkeypatch):
    monkeypatch.setenv("ACESTEP_GGML_MEMORY_LIMIT", value)
    with pytest.raises(ace.InputError, match="ACESTEP_GGML_MEMORY_LIMIT"):
        _core.memory_limit()


def test_a_long_song_is_refused_before_any_work(synth_models, monkeypatch):
    folder = synth_models[2]["f32"]
    synth = ace.Synthesizer(folder)
    need = max(n.total for n in memory.synth_needs(synth.files, synth.paths, 240, 7.0))
    short = max(n.total for n in memory.synth_needs(synth.files, synth.paths, 2, 1.0))
    assert short < need  # the guided DiT at 6000 frames outgrows every stage of a 2 s song
    limit = (short + need) // 2
    monkeypatch.setenv("ACESTEP_GGML_MEMORY_LIMIT", str(limit))
    stages = []
    with pytest.raises(ace.MemoryRefused, match=r"a 240 s song needs about [\d,]+ MiB .* has [\d,]+ MiB free") as e:
        synth(ace.Request(duration=240, **SONG), guidance=7.0, seed=1, progress=lambda stage, done, total: stages.append(stage))
    assert isinstance(e.value, ace.DeviceError)  # of the family: the CLI and the server report it as one line
    assert e.value.need == need and e.value.available == limit
    assert stages == [] and synth._loaded == {}, "work was done before the refusal"
    # Under the same limit a short song fits.
    assert synth(ace.Request(duration=2, **SONG), seed=1, steps=2).audio.size > 0


def test_the_cli_refuses_a_long_song_with_one_line_and_no_file(synth_models, tmp_path):
    out = tmp_path / "song.wav"
    env = {**os.environ, "ACESTEP_GGML_MEMORY_LIMIT": "1M", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "acestep_ggml",
            "generate",
            "--caption",
            "warm pads",
            "--no-lm",
            "--duration",
            "240",
            "--models",
            str(synth_models[2]["f32"]),
            "--quiet",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "needs about" in errors[0] and "1 MiB free" in errors[0], r.stderr
    assert not out.exists()


def test_the_lm_cache_is_refused_before_it_is_made(synth_models, monkeypatch):
    lm = LM.from_models(synth_models[2]["f32"], n_threads=1)
    monkeypatch.setenv("ACESTEP_GGML_MEMORY_LIMIT", "1M")
    with pytest.raises(ace.MemoryRefused, match=r"the LM's KV cache of 2 x 4096 tokens needs about"):
        lm.reset(2, 4096)
    monkeypatch.delenv("ACESTEP_GGML_MEMORY_LIMIT")
    lm.reset(2, 4096)


# What a run takes, from a fresh process: the peak resident memory (VmHWM, reset once the files
# are open and the tokenizer is read) less the resident memory at that point.
MEASURE = textwrap.dedent("""
    import sys
    import acestep_ggml as ace

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    synth = ace.Synthesizer(sys.argv[1], n_threads=2)
    synth.tokenizer
    open("/proc/self/clear_refs", "w").write("5")
    base = status("VmRSS:")
    synth(ace.Request(caption="a song", lyrics="la la", duration=int(sys.argv[2])), seed=1, guidance=7.0)
    print(status("VmHWM:") - base)
""")


def test_the_estimate_is_within_a_factor_of_the_measured_peak(lm_tokenizer_dir, tmp_path_factory):
    # A moderate DiT (240 MiB of F32 weights), whose weights and compute memory dominate what a
    # 60 s guided song takes; the tiny models' needs (a few MiB) vanish in the allocator's noise.
    seed = fresh_seed("moderate model")
    models = fixtures.build_models(
        seed,
        vae=SYNTH_VAE,
        dit=dict(
            hidden_size=512,
            intermediate_size=1536,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=64,
            num_hidden_layers=8,
        ),
    )
    models.vae.load_state_dict(make_vae_reference(SYNTH_VAE, seed).state_dict())
    root = fixtures.save_original(models, tmp_path_factory.mktemp("moderate") / "checkpoints", lm_tokenizer_dir)
    folder = tmp_path_factory.mktemp("moderate-f32")
    convert(root, folder, dtype="f32", quiet=True)
    synth = ace.Synthesizer(folder)
    estimate = max(n.total for n in memory.synth_needs(synth.files, synth.paths, 60, 7.0))
    src = str(Path(ace.__file__).parent.parent)
    r = subprocess.run(
        [sys.executable, "-c", MEASURE, str(folder), "60"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": src},
        timeout=900,
    )
    assert r.returncode == 0, r.stderr
    measured = int(r.stdout.split()[-1])
    print(f"\nestimate {estimate / 2**20:.0f} MiB, measured peak growth {measured / 2**20:.0f} MiB")
    # Measured at 1.56x (240 s) and 1.72x (120 s): the DiT file's encoder weights and a fixed
    # 64 MiB for what is not modelled are counted in full.  Never below the peak (an estimate
    # under it would let the OOM killer in), at most 3x (above that, songs that fit would be refused).
    # Measured at 2.0x for 60 s.
    assert measured <= estimate <= 3 * measured, (estimate, measured)
