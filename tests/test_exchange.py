"""The exchange directory: defaults, round trip, and a clear error for each malformed file."""
from __future__ import annotations

import pytest

import acestep_ggml
from acestep_ggml.exchange import ExchangeError, Request, parse_codes, read_request, write_request


def _dir(tmp_path, **files):
    for k, v in files.items():
        (tmp_path / k).write_text(v, encoding="utf-8")
    return tmp_path


def test_request_is_one_class_under_three_names():
    assert Request is acestep_ggml.Request is acestep_ggml.request.Request


def test_missing_optional_files_take_the_spec_defaults(tmp_path):
    req = read_request(_dir(tmp_path, caption="lofi piano, rainy night\nwarm tape"))
    assert req.caption == "lofi piano, rainy night\nwarm tape"
    assert req.lyrics == ""
    assert req.codes is None
    assert req.bpm is None and req.keyscale is None and req.timesignature is None
    assert req.duration is None and req.resolved_duration() == 120.0
    assert req.language is None  # the LM chooses; the DiT reads "unknown"


def test_na_and_empty_files_mean_default(tmp_path):
    req = read_request(_dir(tmp_path, caption="x", bpm="N/A\n", keyscale="", timesig=" n/a ", language=""))
    assert req.bpm is None and req.keyscale is None and req.timesignature is None and req.language is None


def test_all_fields_read(tmp_path):
    req = read_request(_dir(tmp_path, caption="rock", lyrics="[Verse]\nhello 世界 🎸\n", codes="1, 2,63999\n",
                            bpm="120", duration="30", keyscale="F# minor", timesig="3", language="ja"))
    assert req.lyrics == "[Verse]\nhello 世界 🎸"
    assert req.codes == [1, 2, 63999]
    assert (req.bpm, req.duration, req.keyscale, req.timesignature, req.language) == (120, 30, "F# minor", 3, "ja")
    assert req.resolved_duration() == pytest.approx(3 / 5)  # codes decide the length: 5 per second


def test_write_then_read_round_trips(tmp_path):
    req = Request(caption="c\nd", lyrics="la la", codes=[0, 5, 63999], bpm=90, duration=12, keyscale="C major",
                  timesignature=4, language="fr")
    write_request(tmp_path, req)
    assert read_request(tmp_path) == req
    write_request(tmp_path, Request(caption="again"))
    back = read_request(tmp_path)
    assert back.codes is None, "stale codes from the earlier request must not survive"
    assert back.duration == 120
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("files, message", [
    ({}, "caption: missing or empty"),
    ({"caption": "  \n"}, "caption: missing or empty"),
    ({"caption": "x", "bpm": "fast"}, "bpm: expected an integer, got 'fast'"),
    ({"caption": "x", "bpm": "120.5"}, "bpm: expected an integer"),
    ({"caption": "x", "duration": "0"}, "duration: 0 is outside 1..600"),
    ({"caption": "x", "duration": "-5"}, "duration: -5 is outside"),
    ({"caption": "x", "duration": "9999"}, "duration: 9999 is outside"),
    ({"caption": "x", "codes": "1,2,64000"}, "codes: entry 2 = 64000 is outside 0..63999"),
    ({"caption": "x", "codes": "1,-1"}, "codes: entry 1 = -1 is outside"),
    ({"caption": "x", "codes": "1,two,3"}, "codes: entry 1 is not an integer: 'two'"),
    ({"caption": "x", "timesig": "4/4"}, "timesig: expected an integer"),
])
def test_malformed_files_raise_naming_the_file(tmp_path, files, message):
    with pytest.raises(ExchangeError, match=message.replace("(", r"\(").replace(".", r"\.")):
        read_request(_dir(tmp_path, **files))


def test_missing_directory_and_binary_file(tmp_path):
    with pytest.raises(ExchangeError, match="does not exist"):
        read_request(tmp_path / "nope")
    (tmp_path / "caption").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ExchangeError, match="caption: not UTF-8"):
        read_request(tmp_path)


def test_parse_codes_accepts_newlines_and_spaces():
    assert parse_codes("1,2\n3 , 4,\n") == [1, 2, 3, 4]
