"""The CPU wheel as a user gets it (issue 13's acceptance).  It needs a built wheel: CI (.ci/run)
builds one, runs the test suite on it and hands it to scripts/ci_wheel.sh, which runs this file with
ACESTEP_GGML_WHEEL set; plain `pytest tests` does not collect it (no test_ prefix).

- auditwheel reports a manylinux platform tag;
- installed into a fresh venv and run from an empty folder (no source tree on the path), the wheel
  runs the tiny LM and synth, and its synth audio matches the acestep_ggml of this environment;
- under qemu-x86_64 -cpu Nehalem (SSE4.2, no AVX) and -cpu Haswell (AVX2, no AVX-512) it imports,
  picks that CPU's ggml variant and decodes a tiny VAE equal to the native run: no SIGILL.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

WHEEL = os.environ.get("ACESTEP_GGML_WHEEL", "")
# GPU plugin wheels built alongside (scripts/ci_wheel.sh WHEEL PLUGIN...), each checked in its own venv.
PLUGINS = os.environ.get("ACESTEP_GGML_PLUGIN_WHEELS", "").split()
CAPTION = "dreamy synth-pop, female vocals, 90s drum machine"


def cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def clean_env() -> dict:
    """The environment of a user's shell: nothing of this checkout on the path."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


@pytest.fixture(scope="module")
def wheel() -> Path:
    if not WHEEL or not Path(WHEEL).is_file():
        pytest.fail("set ACESTEP_GGML_WHEEL to a built CPU wheel (scripts/ci_wheel.sh does)")
    return Path(WHEEL).resolve()


def make_venv(root: Path, *wheels: Path) -> Path:
    venv.create(root, with_pip=True)
    python = root / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *map(str, wheels)],
                   check=True, env=clean_env())
    return python


@pytest.fixture(scope="module")
def venv_python(wheel, tmp_path_factory) -> Path:
    return make_venv(tmp_path_factory.mktemp("venv"), wheel)


def run(python, args: list, cwd: Path, env: dict | None = None, prefix: tuple = ()) -> subprocess.CompletedProcess:
    """`python args` in `cwd`, by default in a user's environment."""
    return subprocess.run([*prefix, str(python), *map(str, args)], cwd=cwd, env=clean_env() if env is None else env,
                          capture_output=True, text=True, check=False)


def test_wheel_has_a_manylinux_tag(wheel):
    r = subprocess.run([sys.executable, "-m", "auditwheel", "show", str(wheel)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    tag = re.search(r'is consistent with the following platform tag: "(manylinux_\d+_\d+_\w+)"', text)
    assert tag, text
    print(f"\n{wheel.name}: {tag.group(1)}")
    assert re.search(r"manylinux_\d+_\d+_x86_64", wheel.name), "the wheel's file name must carry the tag"


def test_installed_wheel_imports_from_the_venv(venv_python, tmp_path):
    r = run(venv_python, ["-c", "import acestep_ggml, sys; print(acestep_ggml.__file__)"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).is_relative_to(venv_python.parent.parent)
    r = run(venv_python, ["-m", "acestep_ggml", "info"], tmp_path)
    assert r.returncode == 0, r.stderr
    print("\n" + r.stdout)
    assert re.search(r"cpu variant: \w+", r.stdout) and "cpu variant: native" not in r.stdout


def test_installed_wheel_runs_lm_and_synth(venv_python, synth_models, tmp_path):
    import soundfile as sf

    _, _, folders, _ = synth_models
    out = tmp_path / "song.flac"
    # All metadata given: the LM skips its chain of thought and writes 5 codes per second.
    r = run(venv_python, ["-m", "acestep_ggml", "generate", "--caption", CAPTION, "--lyrics", "[Verse]\nla la",
                                  "--duration", "10", "--bpm", "100", "--keyscale", "C major", "--timesignature", "4",
                                  "--models", folders["f32"], "--seed", "3", "--threads", "1", "-o", out, "--quiet"],
                    tmp_path)
    assert r.returncode == 0, r.stderr
    assert sf.info(str(out)).frames == 10 * 5 * 5 * 8  # 10 s * 5 codes/s * 5 latents/code * hop 8

    # The synth alone, in the venv and in this environment: same weights, seed and kernels' maths.
    # Different builds (portable clones against this checkout's build) order float sums differently.
    def synth(python, name: str, cwd: Path, env: dict | None = None) -> np.ndarray:
        wav = tmp_path / name
        r = run(python, ["-m", "acestep_ggml", "generate", "--caption", CAPTION, "--no-lm", "--duration", "4",
                         "--models", folders["f32"], "--seed", "5", "--threads", "1", "-o", wav, "--quiet"],
                cwd, env)
        assert r.returncode == 0, r.stderr
        return sf.read(str(wav), dtype="float32")[0]

    wheel_audio = synth(venv_python, "wheel.wav", tmp_path)
    here_audio = synth(sys.executable, "here.wav", Path.cwd(), dict(os.environ))  # as this test run finds it
    assert wheel_audio.shape == here_audio.shape
    c = cosine(wheel_audio, here_audio)
    print(f"\nsynth audio, wheel vs this environment: cosine {c:.7f}")
    assert c >= 0.9999  # F32 weights and activations; only the summation order differs


DECODE = """
import sys
import numpy as np
import acestep_ggml
from acestep_ggml import VAE, _core
vae = VAE(sys.argv[1], n_threads=2)
z = np.random.default_rng(7).standard_normal((40, vae.latent_channels)).astype(np.float32)
np.save(sys.argv[2], vae.decode(z, chunk=16, overlap=4))
print(_core.build_info()["cpu_variant"])
"""


@pytest.fixture(scope="module")
def native_decode(venv_python, synth_models, tmp_path_factory):
    _, _, folders, _ = synth_models
    vae = next(Path(folders["f32"]).glob("vae*.gguf"))
    work = tmp_path_factory.mktemp("decode")
    (work / "decode.py").write_text(DECODE)
    r = run(venv_python, ["decode.py", vae, "native.npy"], work)
    assert r.returncode == 0, r.stderr
    return vae, work, np.load(work / "native.npy")


@pytest.mark.parametrize("cpu, variant", [("Nehalem", "sse42"), ("Haswell", "haswell")])
def test_wheel_decodes_under_qemu_without_sigill(venv_python, native_decode, cpu, variant):
    qemu = shutil.which("qemu-x86_64")
    if not qemu:
        pytest.fail("qemu-x86_64 is missing: apt-get install qemu-user")
    vae, work, expected = native_decode
    r = run(venv_python, ["decode.py", vae, f"{cpu}.npy"], work, prefix=(qemu, "-cpu", cpu))
    assert r.returncode == 0, f"exit {r.returncode} under -cpu {cpu} (-4 is SIGILL): {r.stderr[-2000:]}"
    assert r.stdout.split()[-1] == variant, r.stdout
    got = np.load(work / f"{cpu}.npy")
    err = float(np.abs(got - expected).max() / np.abs(expected).max())
    print(f"\n-cpu {cpu}: variant {variant}, cosine {cosine(got, expected):.8f}, max error {err:.2e}")
    # F32 throughout; FMA against separate multiply and add rounds each step differently (1 ulp).
    assert cosine(got, expected) >= 0.99999 and err <= 1e-4


if PLUGINS:
    @pytest.mark.parametrize("plugin", PLUGINS)
    def test_plugin_wheel_is_found_and_runs_the_synth(wheel, plugin, synth_models, tmp_path):
        """The CPU wheel plus one plugin wheel: the plugin's backend is loaded at import, lists its
        device, and the synth on that device matches the CPU."""
        import soundfile as sf

        backend = re.match(r"acestep_ggml_(vulkan|cuda)", Path(plugin).name).group(1)
        python = make_venv(tmp_path / "venv", wheel, Path(plugin).resolve())
        env = {**clean_env(), "GGML_VK_VISIBLE_DEVICES": "0"}  # lavapipe is a CPU-type device ggml hides
        r = run(python, ["-m", "acestep_ggml", "info"], tmp_path, env)
        assert r.returncode == 0, r.stderr
        print("\n" + r.stdout)
        assert re.search(rf"backends: .*\b{backend}\b", r.stdout, re.IGNORECASE), r.stdout
        _, _, folders, _ = synth_models
        audio = {}
        for device in ("cpu", backend):
            wav = tmp_path / f"{device}.wav"
            r = run(python, ["-m", "acestep_ggml", "generate", "--caption", CAPTION, "--no-lm", "--duration", "2",
                             "--models", folders["f32"], "--seed", "5", "--device", device, "-o", wav, "--quiet"],
                    tmp_path, env)
            assert r.returncode == 0, r.stderr
            audio[device] = sf.read(str(wav), dtype="float32")[0]
        c = cosine(audio["cpu"], audio[backend])
        print(f"synth on {backend} vs cpu: cosine {c:.6f}")
        assert c >= 0.999  # GPU kernels accumulate in other orders and some in F16 (flash attention)
