"""A table of songs in this process: tables read alike from JSONL, CSV and Parquet, bad tables
refused before anything renders, each row as `generate` renders it, failures recorded, reruns
resume, Ctrl-C leaves no partial file.  The Ray half is tests/test_batch_ray.py."""
from __future__ import annotations

import csv
import dataclasses
import inspect
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _batch import assert_equals_single_run, cli, manifest, need, slow_rows, write_jsonl

import acestep_ggml as ace
from acestep_ggml import batch


@pytest.fixture(scope="module")
def models(synth_models) -> Path:
    return synth_models[2]["f32"]


@pytest.fixture(scope="module")
def source_wav(tmp_path_factory) -> Path:
    """A second of noise at the tiny VAE's rate, for a cover row."""
    path = tmp_path_factory.mktemp("audio") / "src.wav"
    rng = np.random.default_rng(0)
    sf.write(str(path), (0.3 * rng.standard_normal((200, 2))).astype(np.float32), 200)
    return path


def test_columns_are_the_keywords_of_generate():
    # a row is one song (no batch_size), and the sampling controls are columns of their own
    # (loras: adapters on the DiT, set for the whole pipeline rather than per row)
    keywords = set(inspect.signature(ace.Pipeline.generate).parameters) - {
        "self", "progress", "batch_size", "controls", "options", "loras"}
    controls = {f.name for f in dataclasses.fields(ace.request.Controls)}
    assert set(batch.COLUMNS) - set(batch.OUTPUT_COLUMNS) == keywords | controls


def test_jsonl_csv_and_parquet_tables_read_alike(tmp_path):
    pa, pq = need("pyarrow"), need("pyarrow.parquet")
    rows = [{"id": "one", "caption": "warm pads", "duration": 10, "bpm": 90, "timesignature": 4, "use_lm": False,
             "guidance": 1.5, "track_classes": ["drums", "bass"], "src_audio": "in/a.wav", "format": "flac"},
            {"id": "two", "caption": "lofi", "lyrics": "[Verse]\nla la", "seed": 7}]
    write_jsonl(tmp_path / "t.jsonl", rows)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(tmp_path / "t.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: ",".join(v) if isinstance(v, list) else ("false" if v is False else v) for k, v in r.items()})
    # Parquet as pandas writes a column with gaps: its integers as floats, a missing number as NaN.
    def column(k):
        values = [r.get(k) for r in rows]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values if v is not None):
            return [float("nan") if v is None else float(v) for v in values]
        return values

    pq.write_table(pa.table({k: column(k) for k in columns}), tmp_path / "t.parquet")
    read = [batch.read_table(tmp_path / f"t.{ext}") for ext in ("jsonl", "csv", "parquet")]
    assert read[0] == read[1] == read[2]
    assert read[0][0]["src_audio"] == str(tmp_path / "in" / "a.wav")  # relative to the table's folder
    assert read[0][1]["format"] == "wav" and read[0][0]["use_lm"] is False and read[0][0]["bpm"] == 90


@pytest.mark.parametrize("cells, message", [
    ({"id": "../up", "caption": "x"}, "no '/'"),
    ({"id": "a/b", "caption": "x"}, "no '/'"),
    ({"id": "a\\b", "caption": "x"}, "no '/'"),
    ({"id": ".hidden", "caption": "x"}, "leading '.'"),
    ({"id": "..", "caption": "x"}, "leading '.'"),
    ({"id": "", "caption": "x"}, "non-empty"),
    ({"caption": "x"}, "non-empty"),
    ({"id": "tab\tid", "caption": "x"}, "control"),
    ({"id": "a", "caption": " "}, "caption"),
    ({"id": "a", "caption": "x", "bpm": "fast"}, "bpm: expected an integer"),
    ({"id": "a", "caption": "x", "use_lm": "maybe"}, "use_lm"),
    ({"id": "a", "caption": "x", "guidance": "inf"}, "guidance"),
    ({"id": "a", "caption": "x", "format": "aiff"}, "format"),
    ({"id": "a", "caption": "x", "timesig": 4}, "unknown column(s) timesig"),
    ({"id": "a", "caption": "x", "loras": ["x.safetensors"]}, "unknown column(s) loras"),
])
def test_bad_rows_are_refused_naming_the_line(tmp_path, cells, message):
    table = write_jsonl(tmp_path / "t.jsonl", [{"id": "fine", "caption": "ok"}, cells])
    with pytest.raises(ace.InputError, match="line 2") as e:
        batch.read_table(table)
    assert message in str(e.value)


def test_duplicate_ids_are_refused_even_by_case(tmp_path):
    table = write_jsonl(tmp_path / "t.jsonl", [{"id": "Song", "caption": "a"}, {"id": "song", "caption": "b"}])
    with pytest.raises(ace.InputError, match="already used at .*line 1"):
        batch.read_table(table)


def test_a_bad_table_renders_nothing(tmp_path, models):
    table = write_jsonl(tmp_path / "t.jsonl", [{"id": "a", "caption": "x", "use_lm": False, "duration": 1},
                                               {"id": "b/c", "caption": "y"}])
    with pytest.raises(ace.InputError, match="line 2"):
        batch.render_table(table, models, tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def first_and_second_run(models, source_wav, tmp_path_factory):
    """A table with an LM row, a row without the LM, a cover of a file and a row that fails,
    rendered twice into the same folder."""
    folder = tmp_path_factory.mktemp("batch")
    (folder / "in").mkdir()
    os.link(source_wav, folder / "in" / "src.wav")
    rows = [
        {"id": "lm", "caption": "warm pads", "duration": 10, "bpm": 90, "keyscale": "A minor", "timesignature": 4,
         "language": "en", "seed": 11},
        {"id": "nolm", "caption": "lofi piano", "lyrics": "[Verse]\nla la", "duration": 20, "use_lm": False,
         "seed": 12, "steps": 4, "format": "flac"},
        {"id": "cover", "caption": "a cover", "task": "cover", "src_audio": "in/src.wav", "seed": 13},
        {"id": "broken", "caption": "no such source", "task": "cover", "src_audio": "in/missing.wav", "seed": 14},
        {"id": "noseed", "caption": "drums", "duration": 5, "use_lm": False},
    ]
    table = write_jsonl(folder / "songs.jsonl", rows)
    out = folder / "out"
    first = batch.render_table(table, models, out, n_threads=1, quiet=True)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    second = batch.render_table(table, models, out, n_threads=1, quiet=True)
    return batch.read_table(table), out, first, second, stamps


def test_each_row_is_a_file_named_by_its_id_equal_to_a_single_run(first_and_second_run, models):
    rows, out, first, _, _ = first_and_second_run
    assert sorted(p.name for p in out.iterdir()) == ["cover.wav", "lm.wav", "manifest.jsonl", "nolm.flac",
                                                     "noseed.wav"]
    seeds = {r["id"]: r["seed"] for r in first.records}
    for row in rows:
        if row["id"] != "broken":
            assert sf.info(str(out / batch.output_name(row))).samplerate == 200
            assert_equals_single_run(models, out, row, seeds[row["id"]])


def test_a_failing_row_is_recorded_and_the_rest_go_on(first_and_second_run):
    _, out, first, _, _ = first_and_second_run
    lines = manifest(out)
    assert [r["id"] for r in lines[:5]] == ["lm", "nolm", "cover", "broken", "noseed"]
    broken = next(r for r in lines if r["id"] == "broken")
    assert broken["status"] == "failed" and broken["output"] is None and broken["seed"] == 14
    assert broken["error"].startswith("InputError: src_audio:") and "missing.wav" in broken["error"]
    assert first.rendered == 4 and [r["id"] for r in first.failed] == ["broken"]
    for r in lines[:5]:
        if r["id"] != "broken":
            assert r["status"] == "ok" and r["error"] is None and r["output"].startswith(r["id"] + ".")
            assert r["seconds"] > 0 and isinstance(r["seed"], int)


def test_a_second_run_redoes_nothing_but_the_failed_row(first_and_second_run):
    _, out, first, second, stamps = first_and_second_run
    assert second.skipped == 4 and [r["id"] for r in second.records] == ["broken"]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != batch.MANIFEST} == \
        {k: v for k, v in stamps.items() if k != batch.MANIFEST}
    assert len(manifest(out)) == 6  # the first run's five lines and the retried row's


def test_a_cut_file_is_rendered_again(tmp_path, models):
    table = write_jsonl(tmp_path / "t.jsonl", [{"id": "a", "caption": "x", "use_lm": False, "duration": 2,
                                                "seed": 1}])
    out = tmp_path / "out"
    batch.render_table(table, models, out, n_threads=1, quiet=True)
    whole = (out / "a.wav").read_bytes()
    (out / "a.wav").write_bytes(whole[:30])  # less than a WAV header
    again = batch.render_table(table, models, out, n_threads=1, quiet=True)
    assert again.skipped == 0 and again.rendered == 1 and (out / "a.wav").read_bytes() == whole


def test_an_output_option_that_does_not_fit_the_format_is_refused_naming_the_row(tmp_path, models):
    table = write_jsonl(tmp_path / "t.jsonl", [{"id": "loud", "caption": "x", "bitrate": 128}])
    with pytest.raises(ace.InputError, match="id 'loud': .*bitrate applies to .mp3"):
        batch.render_table(table, models, tmp_path / "out", quiet=True)


def test_options_that_need_ray_are_refused_without_it(tmp_path, models):
    table = write_jsonl(tmp_path / "t.jsonl", [{"id": "a", "caption": "x"}])
    for kwargs in ({"address": "auto"}, {"workers": 2}):
        with pytest.raises(ace.InputError, match="on Ray"):
            batch.render_table(table, models, tmp_path / "out", quiet=True, **kwargs)
    with pytest.raises(ace.InputError, match="CPUs or GPUs"):
        batch.render_table(table, models, tmp_path / "out", ray=True, cpus_per_worker=0, quiet=True)


def test_cli_batch_without_ray_installed_says_how_to_install_it(tmp_path, models):
    table = write_jsonl(tmp_path / "t.jsonl", [{"id": "a", "caption": "x", "use_lm": False, "duration": 1}])
    # A `ray` that cannot be imported, whether Ray is installed here or not.
    (tmp_path / "noray" / "ray").mkdir(parents=True)
    (tmp_path / "noray" / "ray" / "__init__.py").write_text("raise ImportError('no ray here')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "noray"), os.environ.get("PYTHONPATH", "")]))
    p = cli(str(table), "--models", str(models), "--output-dir", str(tmp_path / "out"), "--ray", env=env)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2, err
    assert err.strip() == f"error: rendering on Ray needs Ray: {batch.RAY_INSTALL}"
    assert not (tmp_path / "out" / "a.wav").exists()


def test_without_ray_the_api_raises_an_import_error_that_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails
    with pytest.raises(ImportError, match=r'pip install "acestep-ggml\[ray\]"') as e:
        batch._import_ray()
    assert isinstance(e.value, ace.InputError)


def test_cli_batch_exit_status_says_whether_a_row_failed(tmp_path, models):
    out = tmp_path / "out"
    good = tmp_path / "good.csv"
    good.write_text("id,caption,duration,use_lm,seed\nx,warm pads,2,false,3\n", encoding="utf-8")
    p = cli(str(good), "--models", str(models), "--output-dir", str(out), "--threads", "1")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert "1 rendered, 0 failed, 0 already there" in err and (out / "x.wav").is_file()
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "y", "caption": "x", "duration": 0, "use_lm": False}])
    p = cli(str(bad), "--models", str(models), "--output-dir", str(out), "--quiet")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 1 and "0 rendered, 1 failed" in err


def test_ctrl_c_loses_only_the_row_in_flight_and_leaves_no_partial_file(tmp_path, models):
    """SIGINT while the rows render: the finished rows' files are whole, the rest are absent,
    nothing else is left in the folder; the next run renders only the rest."""
    rows = slow_rows(4)
    table = write_jsonl(tmp_path / "t.jsonl", rows)
    out = tmp_path / "out"
    p = cli(str(table), "--models", str(models), "--output-dir", str(out), "--threads", "1", "--quiet")
    deadline = time.monotonic() + 300
    while not (out / batch.MANIFEST).is_file() or not (out / batch.MANIFEST).read_text():
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    done = [r["id"] for r in manifest(out)]
    assert 1 <= len(done) < 4
    assert sorted(p.name for p in out.iterdir()) == sorted([batch.MANIFEST] + [f"{i}.wav" for i in done])
    again = batch.render_table(table, models, out, n_threads=1, quiet=True)
    assert again.skipped == len(done) and again.rendered == 4 - len(done) and not again.failed


def test_rows_render_on_the_chosen_device(tmp_path, models, device):
    """`--device` reaches every model of the worker (with `-m device --device X`: that device)."""
    table = write_jsonl(tmp_path / "t.jsonl", [{"id": "a", "caption": "x", "use_lm": False, "duration": 4,
                                                "seed": 5}])
    out = tmp_path / "out"
    result = batch.render_table(table, models, out, device=device, n_threads=1, quiet=True)
    assert result.rendered == 1, result.failed
    assert_equals_single_run(models, out, batch.read_table(table)[0], 5, device)
