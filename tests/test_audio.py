"""Audio in and out: every format's round trip, resampling, file modes, bad input, and the
output path checked before any work."""
from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
import soxr
from conftest import fresh_seed

import acestep_ggml as A
from acestep_ggml import audio as audio_mod
from acestep_ggml import cli, pipeline

# Fresh inputs every run; ACESTEP_TEST_SEED replays one.  The seed is in every assertion message.
SEED = fresh_seed("audio test")


def tones(rng: np.random.Generator, n: int, rate: int = 48000, channels: int = 2) -> np.ndarray:
    """(channels, n) float32: six sines per channel at random pitches, phases and levels, peak
    under 0.6.  Music-like content for lossy codecs, which are built to drop what noise is made of."""
    t = np.arange(n) / rate
    f = rng.uniform(100, 4000, (channels, 6, 1))
    a = rng.uniform(0.02, 0.1, (channels, 6, 1))
    ph = rng.uniform(0, 2 * np.pi, (channels, 6, 1))
    return np.sum(a * np.sin(2 * np.pi * f * t + ph), axis=1).astype(np.float32)


def snr_db(ours, ref) -> float:
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ours - ref).astype(np.float64) ** 2)))


def corr(ours, ref) -> float:
    a, b = np.ravel(ours).astype(np.float64), np.ravel(ref).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---------------------------------------------------------------------------
# Round trips at 48 kHz

@pytest.mark.parametrize("name, subtype, tol", [
    # Integer formats round to the nearest step (plus soundfile's float scaling): 2 steps.
    ("a.wav", None, 2 / 2**15), ("a.wav", "PCM_24", 2 / 2**23), ("a.wav", "FLOAT", 1e-7), ("a.flac", None, 2 / 2**15),
    ("a.flac", "PCM_24", 2 / 2**23),
])
def test_lossless_round_trip_is_exact_to_the_format_step(tmp_path, name, subtype, tol):
    rng = np.random.default_rng(SEED)
    x = (0.3 * rng.standard_normal((2, 4800))).astype(np.float32)
    A.write_audio(tmp_path / name, x, 48000, subtype=subtype, normalize=False)
    y, sr = A.read_audio(tmp_path / name)
    assert sr == 48000 and y.shape == x.shape and y.dtype == np.float32
    stored = x if subtype == "FLOAT" else np.clip(x, -1, 1)  # integer formats clip at full scale
    assert np.max(np.abs(y - stored)) <= tol, f"seed {SEED}"
    assert os.listdir(tmp_path) == [name]


# Lossy codecs keep the waveform, not the samples: compared by correlation and by SNR once the
# level is matched (LAME lowers it by 0.45 dB at 128 kbit/s).  Measured on these tones, seeds
# 0-19: MP3 at 320 kbit/s 59-70 dB, at 128 kbit/s 42-50 dB, correlation 0.9994 or more; Vorbis at
# libsndfile's default quality, seeds 0-299: 24.9-36 dB, correlation 0.99838 or more (7 of the
# 300 under 0.999).  The bars leave room for other encoder builds.
@pytest.mark.parametrize("name, bitrate, min_snr, min_corr", [
    ("a.mp3", None, 45.0, 0.999), ("a.mp3", 128, 32.0, 0.999), ("a.ogg", None, 22.0, 0.997),
])
def test_lossy_round_trip_keeps_the_waveform(tmp_path, name, bitrate, min_snr, min_corr):
    x = tones(np.random.default_rng(SEED), 2 * 48000)
    A.write_audio(tmp_path / name, x, 48000, bitrate=bitrate, normalize=False)
    y, sr = A.read_audio(tmp_path / name)
    # libsndfile writes LAME's gapless header and Vorbis keeps its granule count: the length is exact.
    assert sr == 48000 and y.shape == x.shape and y.dtype == np.float32, f"seed {SEED}"
    gain = float(np.sum(x * y) / np.sum(y * y))
    s, c = snr_db(gain * y, x), corr(y, x)
    print(f"{name} bitrate {bitrate}: SNR {s:.1f} dB after {20 * np.log10(gain):+.2f} dB, correlation {c:.6f}")
    assert abs(20 * np.log10(gain)) < 1.0, f"seed {SEED}: level off by {20 * np.log10(gain):.2f} dB"
    assert s >= min_snr and c >= min_corr, f"seed {SEED}: SNR {s:.1f} dB, correlation {c:.6f}"
    assert os.listdir(tmp_path) == [name]


@pytest.mark.parametrize("bitrate", [64, 192, 320])
def test_mp3_bitrate_is_the_one_asked(tmp_path, bitrate):
    seconds = 4
    A.write_audio(tmp_path / "b.mp3", tones(np.random.default_rng(SEED), seconds * 48000), 48000, bitrate=bitrate)
    kbps = (tmp_path / "b.mp3").stat().st_size * 8 / seconds / 1000
    # Constant bitrate; the LAME header frame and the encoder's padding frames add about 3%.
    assert bitrate <= kbps <= bitrate * 1.05, f"asked {bitrate} kbit/s, file has {kbps:.1f}"


def test_mono_is_written_and_read_as_stereo(tmp_path):
    x = tones(np.random.default_rng(SEED), 4800, channels=1)
    A.write_audio(tmp_path / "m.flac", x, 48000, normalize=False)
    assert sf.info(str(tmp_path / "m.flac")).channels == 1
    y, _ = A.read_audio(tmp_path / "m.flac")
    assert y.shape == (2, 4800) and np.array_equal(y[0], y[1])
    np.testing.assert_allclose(y[0], x[0], atol=2 / 2**15)


@pytest.mark.parametrize("ext", [".wav", ".flac", ".ogg", ".mp3"])
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_file_mode_follows_the_umask(tmp_path, ext, umask):
    old = os.umask(umask)
    try:
        target = tmp_path / f"s{ext}"
        target.write_bytes(b"an older song")  # an existing file is replaced by a new one
        os.chmod(target, 0o600)
        A.write_audio(target, np.zeros((2, 4800), np.float32), 48000)
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    mode = target.stat().st_mode & 0o777
    assert mode == 0o666 & ~umask == (tmp_path / "plain").stat().st_mode & 0o777, oct(mode)


def test_peak_normalisation_follows_reference():
    loud = np.array([[2.0, -4.0], [1.0, 0.5]], np.float32)
    quiet = loud / 40
    target = 10 ** (-1 / 20)
    for x in (loud, quiet):  # the reference rescales both ways to -1 dBFS
        assert np.isclose(np.abs(audio_mod.normalize_peak(x)).max(), target)
    np.testing.assert_allclose(audio_mod.normalize_peak(loud), loud / 4 * target, rtol=1e-6)
    assert not np.any(audio_mod.normalize_peak(np.zeros((2, 4), np.float32)))


def test_write_normalises_by_default(tmp_path):
    x = np.array([[0.1, -0.2, 0.05]] * 2, np.float32)
    A.write_audio(tmp_path / "n.wav", x, 48000, subtype="FLOAT")
    y, _ = A.read_audio(tmp_path / "n.wav")
    assert np.isclose(np.abs(y).max(), 10 ** (-1 / 20), rtol=1e-6)


# ---------------------------------------------------------------------------
# Audio in: any file, any rate, any array

def test_44k1_mono_file_is_resampled_to_48k_stereo(tmp_path):
    rng = np.random.default_rng(SEED)
    freq = float(rng.uniform(200, 2000))
    n = 44100 * 2
    x = (0.5 * np.sin(2 * np.pi * freq * np.arange(n) / 44100)).astype(np.float32)
    sf.write(tmp_path / "m.wav", x, 44100, subtype="FLOAT")
    y = A.load_audio(tmp_path / "m.wav")
    assert y.shape == (2, 96000) and y.dtype == np.float32 and np.array_equal(y[0], y[1])
    # soxr itself, on the same samples, is the reference: the same call gives the same result.
    np.testing.assert_allclose(y[0], soxr.resample(x, 44100, 48000, quality="VHQ"), atol=1e-6)
    # And it is the same tone at the new rate: away from the filter's edges, the analytic sine.
    expected = 0.5 * np.sin(2 * np.pi * freq * np.arange(96000) / 48000)
    inner = slice(4800, -4800)
    assert corr(y[0, inner], expected[inner]) >= 0.9999, f"seed {SEED}, {freq:.1f} Hz"
    assert np.max(np.abs(y[0, inner] - expected[inner])) < 1e-3, f"seed {SEED}, {freq:.1f} Hz"


@pytest.mark.parametrize("ext, fmt", [(".flac", "FLAC"), (".ogg", "OGG"), (".mp3", "MP3")])
def test_any_format_and_rate_loads(tmp_path, ext, fmt):
    rate = 22050
    x = tones(np.random.default_rng(SEED), rate, rate=rate)
    sf.write(tmp_path / f"s{ext}", x.T, rate, format=fmt)
    y = A.load_audio(tmp_path / f"s{ext}", 48000)
    assert y.shape[0] == 2 and abs(y.shape[1] - round(x.shape[1] * 48000 / rate)) <= 1
    ref = soxr.resample(A.read_audio(tmp_path / f"s{ext}")[0].T, rate, 48000, quality="VHQ").T
    np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize("shape", [(4800,), (1, 4800), (2, 4800)])
def test_arrays_load_with_their_rate(shape):
    rng = np.random.default_rng(SEED)
    x = (0.3 * rng.standard_normal(shape)).astype(np.float64)
    same = A.load_audio(x)
    assert same.shape == (2, 4800) and same.dtype == np.float32
    np.testing.assert_allclose(same, np.broadcast_to(x.reshape(-1, 4800), (2, 4800)), rtol=1e-6)
    up = A.load_audio(x, 48000, source_rate=24000)
    assert up.shape == (2, 9600)
    ref = soxr.resample(np.broadcast_to(x.reshape(-1, 4800), (2, 4800)).T.astype(np.float32), 24000, 48000,
                        quality="VHQ").T
    np.testing.assert_allclose(up, ref, atol=1e-6)


@pytest.fixture
def bad_files(tmp_path):
    sf.write(tmp_path / "quad.wav", np.zeros((100, 4), np.float32), 48000)
    sf.write(tmp_path / "empty.wav", np.zeros((0, 2), np.float32), 48000)
    sf.write(tmp_path / "nan.wav", np.full((100, 2), np.nan, np.float32), 48000, subtype="FLOAT")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt " + os.urandom(64))
    (tmp_path / "text.mp3").write_text("not an mp3 at all\n" * 20)
    (tmp_path / "folder.wav").mkdir()
    return tmp_path


@pytest.mark.parametrize("name, words", [
    ("missing.wav", "does not exist"),
    ("folder.wav", "is a folder"),
    ("corrupt.wav", "cannot read audio file"),
    ("text.mp3", "cannot read audio file"),
    ("quad.wav", "4 channels; only mono and stereo"),
    ("empty.wav", "empty"),
    ("nan.wav", "NaN"),
])
def test_bad_audio_file_is_named_with_its_problem(bad_files, name, words):
    path = bad_files / name
    for call in (lambda: A.load_audio(path), lambda: A.read_audio(path)):
        with pytest.raises(A.InputError, match=words) as e:
            call()
        assert str(path) in str(e.value)


@pytest.mark.parametrize("source, kwargs, words", [
    (np.zeros((2, 100), np.int16), {}, "dtype int16"),
    (np.zeros((2, 100), np.complex64), {}, "dtype complex64"),
    (np.zeros((1, 2, 100), np.float32), {}, r"shape \(N,\) or \(channels, N\)"),
    (np.zeros((100, 2), np.float32), {}, "100 channels"),  # channels last: said how to fix
    (np.zeros((3, 100), np.float32), {}, "3 channels"),
    (np.zeros((2, 0), np.float32), {}, "empty"),
    (np.zeros(0, np.float32), {}, "empty"),
    (np.full((2, 100), np.inf, np.float32), {}, "infinity"),
    (np.zeros((2, 100), np.float32), {"source_rate": 0}, "source_rate must be positive"),
    (np.zeros((2, 100), np.float32), {"sample_rate": -1}, "sample_rate must be positive"),
    ("x.wav", {"source_rate": 44100}, "source_rate applies to arrays"),
])
def test_bad_audio_array_says_what_is_wrong(source, kwargs, words):
    with pytest.raises(A.InputError, match=words):
        A.load_audio(source, **kwargs)


# ---------------------------------------------------------------------------
# Audio out: bad input and the output path, checked before any work

@pytest.mark.parametrize("bad, kwargs, words", [
    (np.zeros((2, 10), np.int16), {}, "dtype int16"),
    (np.zeros((3, 10), np.float32), {}, "1 or 2 channels"),
    (np.zeros((2, 0), np.float32), {}, "empty"),
    (np.full((2, 10), np.nan, np.float32), {}, "NaN"),
    (np.zeros((2, 10), np.float32), {"subtype": "PCM_7"}, "subtype"),
])
def test_write_rejects_bad_input(tmp_path, bad, kwargs, words):
    with pytest.raises(A.InputError, match=words):
        A.write_audio(tmp_path / "x.wav", bad, 48000, **kwargs)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name, kwargs, words", [
    ("x.mp4", {}, r"\.wav, \.flac, \.ogg or \.mp3"),
    ("x", {}, "cannot tell the audio format"),
    ("x.flac", {"subtype": "FLOAT"}, "FLAC stores integers only"),
    ("x.wav", {"bitrate": 192}, "bitrate applies to .mp3 files only"),
    ("x.mp3", {"bitrate": 100}, "MP3 bitrate must be one of"),
    ("x.mp3", {"subtype": "PCM_16"}, "subtype applies to .wav and .flac only"),
    ("no/such/folder/x.wav", {}, "does not exist"),
    ("dir.wav", {}, "is a folder"),
])
def test_output_path_and_options_are_checked(tmp_path, name, kwargs, words):
    (tmp_path / "dir.wav").mkdir()
    with pytest.raises(A.InputError, match=words):
        A.check_output_path(tmp_path / name, **kwargs)
    with pytest.raises(A.InputError, match=words):
        A.write_audio(tmp_path / name, np.zeros((2, 10), np.float32), 48000, **kwargs)
    assert os.listdir(tmp_path) == ["dir.wav"]


def test_output_folder_must_be_writable(tmp_path, monkeypatch):
    # Root writes anywhere, so the refusal is simulated where the check asks the system.
    monkeypatch.setattr(audio_mod.os, "access", lambda path, mode: False)
    with pytest.raises(A.InputError, match="is not writable"):
        A.check_output_path(tmp_path / "x.wav")


def test_mp3_needs_32k_or_more(tmp_path):
    with pytest.raises(A.InputError, match="32000 Hz"):
        A.write_audio(tmp_path / "x.mp3", np.zeros((2, 100), np.float32), 16000)
    assert os.listdir(tmp_path) == []


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "out.wav"
    A.write_audio(target, np.full((2, 10), 0.5, np.float32), 48000)
    before = target.read_bytes()

    def broken_write(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"RIFF partial")
        raise OSError("disk full")

    monkeypatch.setattr(sf, "write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        A.write_audio(target, np.zeros((2, 10), np.float32), 48000)
    assert os.listdir(tmp_path) == ["out.wav"] and target.read_bytes() == before


@pytest.fixture
def no_work(monkeypatch):
    """Every way to models or compute fails the test: the hub, the model folder, the stages."""
    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the output path was checked")

    from acestep_ggml import exchange, hub

    for module, name in [(hub, "resolve"), (hub, "snapshot"), (hub, "find_models"), (pipeline, "resolve"),
                         (pipeline, "find_models"), (pipeline, "Pipeline"), (pipeline, "Synthesizer"),
                         (exchange, "read_request")]:
        monkeypatch.setattr(module, name, forbidden)


@pytest.mark.parametrize("command", [
    ["generate", "--caption", "x"],
    ["generate", "--caption", "x", "--models", "Org/repo"],
    ["synth", "--input-dir", "job", "--models", "models"],
])
@pytest.mark.parametrize("output, extra, words", [
    ("song.xyz", [], "cannot tell the audio format"),
    ("song.wav", ["--bitrate", "192"], "bitrate applies to .mp3"),
    ("missing/song.mp3", [], "does not exist"),
])
def test_cli_checks_the_output_before_any_work(no_work, tmp_path, capsys, command, output, extra, words):
    assert cli.main([*command, "-o", str(tmp_path / output), *extra]) == 2
    assert words in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_api_checks_the_output_before_any_work(no_work, tmp_path):
    with pytest.raises(A.InputError, match="cannot tell the audio format"):
        pipeline.synth_from_dir(tmp_path / "job", tmp_path / "models", tmp_path / "song.xyz")
    with pytest.raises(A.InputError, match="MP3 bitrate"):
        pipeline.synth_from_dir(tmp_path / "job", tmp_path / "models", tmp_path / "song.mp3", bitrate=1000)
