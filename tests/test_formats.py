from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Callable

import pysubs2
import pytest

from app.media.formats import (
    FORMATS,
    SegmentError,
    render,
    segment_to_dict,
    to_json,
    to_srt,
    to_txt,
    to_vtt,
    transcript_to_dict,
    validate_segments,
)
from batching.types import Segment, Word
from tests.conftest import LiveServer, wait_done
from tests.media import speak
from tests.wer import normalize, wer

# --- strict parsers for our own output ---------------------------------------

_SRT_TIME = r"(\d{2,}):([0-5]\d):([0-5]\d),(\d{3})"
_VTT_TIME = r"(\d{2,}):([0-5]\d):([0-5]\d)\.(\d{3})"
_SRT_CUE = re.compile(rf"(\d+)\n{_SRT_TIME} --> {_SRT_TIME}\n([^\n]+(?:\n[^\n]+)*)")
_VTT_CUE = re.compile(rf"{_VTT_TIME} --> {_VTT_TIME}\n([^\n]+(?:\n[^\n]+)*)")


def _ms(h: str, m: str, s: str, ms: str) -> int:
    return ((int(h) * 60 + int(m)) * 60 + int(s)) * 1000 + int(ms)


def parse_srt(text: str) -> list[tuple[int, int, str]]:
    """(start_ms, end_ms, text) per cue; fails on anything a strict player would reject."""
    if not text:
        return []
    assert text.endswith("\n\n") and not text.endswith("\n\n\n")
    cues = []
    for n, block in enumerate(text[:-2].split("\n\n"), start=1):
        m = _SRT_CUE.fullmatch(block)
        assert m, f"bad SRT cue: {block!r}"
        assert int(m.group(1)) == n, "cue numbers must run 1, 2, 3, ..."
        start, end, body = _ms(*m.group(2, 3, 4, 5)), _ms(*m.group(6, 7, 8, 9)), m.group(10)
        assert end > start
        assert "-->" not in body
        assert all(line == line.strip() and line for line in body.split("\n"))
        cues.append((start, end, body))
    return cues


def parse_vtt(text: str) -> list[tuple[int, int, str]]:
    assert text.startswith("WEBVTT\n\n")
    body = text[len("WEBVTT\n\n") :]
    if not body:
        return []
    assert body.endswith("\n\n") and not body.endswith("\n\n\n")
    cues = []
    for block in body[:-2].split("\n\n"):
        m = _VTT_CUE.fullmatch(block)
        assert m, f"bad WebVTT cue: {block!r}"
        start, end, payload = _ms(*m.group(1, 2, 3, 4)), _ms(*m.group(5, 6, 7, 8)), m.group(9)
        assert end > start
        assert "-->" not in payload and "<" not in payload and ">" not in payload
        assert not re.search(r"&(?!amp;|lt;|gt;)", payload), "bare & in cue text"
        cues.append((start, end, payload))
    return cues


def seg(start: float, end: float, text: str, words: tuple[Word, ...] | None = None) -> Segment:
    return Segment(start=start, end=end, text=text, words=words)


# --- SRT / WebVTT ---------------------------------------------------------------


def test_srt_and_vtt_parse_back():
    segments = [seg(0.0, 2.5, " Hello there."), seg(2.5, 5.25, " General Kenobi!")]
    assert parse_srt(to_srt(segments)) == [(0, 2500, "Hello there."), (2500, 5250, "General Kenobi!")]
    assert parse_vtt(to_vtt(segments)) == [(0, 2500, "Hello there."), (2500, 5250, "General Kenobi!")]
    assert to_srt(segments).startswith("1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n2\n")


@pytest.mark.parametrize(
    ("seconds", "srt", "vtt"),
    [
        (59.9995, "00:01:00,000", "00:01:00.000"),  # must not become 00:00:59,1000
        (59.9994, "00:00:59,999", "00:00:59.999"),
        (3599.9999, "01:00:00,000", "01:00:00.000"),
        (0.0004, "00:00:00,000", "00:00:00.000"),
        (36_000.5, "10:00:00,500", "10:00:00.500"),
        (360_000.0, "100:00:00,000", "100:00:00.000"),
        (-1.0, "00:00:00,000", "00:00:00.000"),
        (math.nan, "00:00:00,000", "00:00:00.000"),
    ],
)
def test_timestamp_rounding_and_hours(seconds: float, srt: str, vtt: str):
    out_srt = to_srt([seg(seconds, seconds + 100, "x")])
    out_vtt = to_vtt([seg(seconds, seconds + 100, "x")])
    assert out_srt.split("\n")[1].startswith(srt + " --> ")
    assert out_vtt.split("\n")[2].startswith(vtt + " --> ")
    parse_srt(out_srt)
    parse_vtt(out_vtt)


def test_zero_length_cue_gets_one_millisecond():
    assert parse_srt(to_srt([seg(1.0, 1.0, "blink")])) == [(1000, 1001, "blink")]
    assert parse_vtt(to_vtt([seg(2.0, 1.0, "blink")])) == [(2000, 2001, "blink")]


def test_empty_segments_are_skipped_and_numbering_stays_contiguous():
    segments = [seg(0, 1, "one"), seg(1, 2, ""), seg(2, 3, "  \n \n"), seg(3, 4, "two")]
    assert [c[2] for c in parse_srt(to_srt(segments))] == ["one", "two"]
    assert to_srt(segments).split("\n\n")[1].startswith("2\n")
    assert [c[2] for c in parse_vtt(to_vtt(segments))] == ["one", "two"]
    assert to_srt([seg(0, 1, " ")]) == ""
    assert to_vtt([]) == "WEBVTT\n\n"
    assert to_txt(segments) == "one\ntwo\n"


def test_blank_lines_inside_text_cannot_end_a_cue():
    segments = [seg(0, 1, "  first line \n\n\r\n  second line  "), seg(1, 2, "next")]
    assert parse_srt(to_srt(segments))[0][2] == "first line\nsecond line"
    assert parse_vtt(to_vtt(segments))[0][2] == "first line\nsecond line"


def test_arrow_in_text_is_made_harmless():
    segments = [seg(0, 1, "a --> b ---> c"), seg(1, 2, "00:00:01,000 --> 00:00:02,000")]
    srt = to_srt(segments)
    assert srt.count("-->") == 2  # only the two timing lines
    assert len(parse_srt(srt)) == 2
    vtt = to_vtt(segments)
    assert vtt.count("-->") == 2
    assert parse_vtt(vtt)[0][2] == "a --&gt; b ---&gt; c"


def test_vtt_escapes_markup():
    cues = parse_vtt(to_vtt([seg(0, 1, "Tom & Jerry <i>not italic</i> 3 > 2")]))
    assert cues[0][2] == "Tom &amp; Jerry &lt;i&gt;not italic&lt;/i&gt; 3 &gt; 2"


def test_unicode_is_kept_in_every_format():
    text = "Çığ düştü, şoför ğüşıöç İzmir'e gitti 🎬👍"
    segments = [seg(0, 1.5, text)]
    assert parse_srt(to_srt(segments))[0][2] == text
    assert parse_vtt(to_vtt(segments))[0][2] == text
    assert to_txt(segments) == text + "\n"
    out = to_json(segments, language="tr", duration_s=1.5)
    assert text in out  # not \u-escaped
    assert json.loads(out)["segments"][0]["text"] == text


# --- TXT / JSON ------------------------------------------------------------------


def test_txt_one_line_per_segment():
    segments = [seg(0, 1, " Hello,\nworld. "), seg(1, 2, "  Second   one. ")]
    assert to_txt(segments) == "Hello, world.\nSecond one.\n"
    assert to_txt([]) == ""


def test_segment_to_dict_shape_and_rounding():
    plain = segment_to_dict(seg(1.23456, 2.0004, " Hi "), 7)
    assert plain == {"id": 7, "start": 1.235, "end": 2.0, "text": "Hi"}
    words = (Word(1.23456, 1.5, " Hi", 0.987654),)
    with_words = segment_to_dict(seg(1.23456, 2.0, " Hi", words), 0)
    assert with_words["words"] == [{"start": 1.235, "end": 1.5, "word": " Hi", "probability": 0.9877}]


def test_transcript_json_shape():
    segments = [seg(0, 1, " Hello"), seg(1, 2, " world.")]
    doc = json.loads(to_json(segments, language="en", duration_s=2.00049))
    assert set(doc) == {"language", "duration_s", "text", "segments"}
    assert doc["language"] == "en"
    assert doc["duration_s"] == 2.0
    assert doc["text"] == "Hello world."
    assert [s["id"] for s in doc["segments"]] == [0, 1]
    assert transcript_to_dict([], language=None, duration_s=None) == {
        "language": None,
        "duration_s": None,
        "text": "",
        "segments": [],
    }


def test_transcript_text_without_spaces_for_japanese():
    segments = [seg(0, 1, "こんにちは。"), seg(1, 2, "元気です。")]
    assert transcript_to_dict(segments, language="ja", duration_s=2)["text"] == "こんにちは。元気です。"


def test_formats_table_and_render():
    assert FORMATS["json"][0] == "application/json"
    assert FORMATS["srt"][0] == "application/x-subrip; charset=utf-8"
    assert FORMATS["vtt"][0] == "text/vtt; charset=utf-8"
    assert FORMATS["txt"][0] == "text/plain; charset=utf-8"
    segments = [seg(0, 1, "hi")]
    for fmt in FORMATS:
        assert "hi" in render(fmt, segments, language="en", duration_s=1.0)
    with pytest.raises(ValueError, match="unknown format"):
        render("ass", segments)


# --- validate_segments -----------------------------------------------------------


def good(**overrides: object) -> dict:
    return {"start": 1.0, "end": 2.0, "text": "hello", **overrides}


def test_validate_accepts_list_and_object_and_our_own_json():
    segments = [
        seg(0.0, 1.5, "Merhaba dünya", (Word(0.0, 0.7, " Merhaba", 0.9), Word(0.7, 1.5, " dünya", 0.8))),
        seg(1.5, 3.0, "second"),
    ]
    doc = json.loads(to_json(segments, language="tr", duration_s=3.0))
    assert validate_segments(doc, duration_s=3.0) == segments
    assert validate_segments(doc["segments"], duration_s=None) == segments
    assert validate_segments([], duration_s=10) == []


def test_validate_normalises_line_endings_and_allows_small_overlap():
    out = validate_segments(
        [good(start=0.0, end=1.005, text="a\r\nb\rc"), good(start=0.995, end=2.0)], duration_s=2.4
    )
    assert out[0].text == "a\nb\nc"
    assert out[1].start == 0.995
    # words without probability count as certain
    words = validate_segments([good(words=[{"start": 1.0, "end": 1.5, "word": "x"}])], duration_s=None)
    assert words[0].words == (Word(1.0, 1.5, "x", 1.0),)


@pytest.mark.parametrize(
    ("raw", "index", "field", "fragment"),
    [
        ("nope", None, "segments", "send a list"),
        ({"segs": []}, None, "segs", 'unknown key "segs"'),
        ({"language": "en"}, None, "segments", '"segments" is missing'),
        ([good(), 5], 1, None, "must be an object"),
        ([good(), good(start=2, end=3, speaker="A")], 1, "speaker", 'unknown key "speaker"'),
        ([good(), {"end": 3, "text": ""}], 1, "start", '"start" is missing'),
        ([good(start="1.0")], 0, "start", "must be a number"),
        ([good(end=True)], 0, "end", "must be a number"),
        ([good(end=math.inf)], 0, "end", "finite"),
        ([good(start=-0.5)], 0, "start", "negative"),
        ([good(start=13.0, end=12.5)], 0, "end", "segment 1: end (12.5 s) is before start (13.0 s)"),
        ([good(start=2.0, end=2.0)], 0, "end", "equals start"),
        ([good(), good(start=9.0, end=10.6)], 1, "end", "past the end of the media (10.0 s)"),
        ([good(start=5, end=6), good(start=4, end=7)], 1, "start", "time order"),
        ([good(start=1, end=3), good(start=2.5, end=4)], 1, "start", "segment 2: start (2.5 s) overlaps segment 1,"),
        ([good(), good(start=3, end=4), good(start=5, end=6, text=None)], 2, "text", "must be a string"),
        ([good(start=0, end=1), {"start": 1, "end": 2}], 1, "text", '"text" is missing'),
        ([good(text="bad\x00nul")], 0, "text", "U+0000"),
        ([good(text="tab\there")], 0, "text", "U+0009"),
        ([good(text="c1\x85")], 0, "text", "U+0085"),
        ([good(text="x" * 21)], 0, "text", "the limit is 20"),
        ([good(words="a b")], 0, "words", "list or null"),
        ([good(words=[{"start": 1.0, "end": 1.5, "word": "a", "x": 1}])], 0, "x", 'unknown key "x"'),
        ([good(words=[{"start": 0.5, "end": 1.5, "word": "a"}])], 0, "words", "outside its segment"),
        ([good(words=[{"start": 1.5, "end": 1.2, "word": "a"}])], 0, "words", "segment 1, word 1: end (1.2 s) is before"),
        (
            [good(words=[{"start": 1.5, "end": 1.6, "word": "a"}, {"start": 1.2, "end": 1.3, "word": "b"}])],
            0,
            "words",
            "segment 1, word 2: starts",
        ),
        ([good(words=[{"start": 1.0, "end": 1.5}])], 0, "words", '"word" is missing'),
        ([good(words=[{"start": 1, "end": 1.5, "word": "a", "probability": 2}])], 0, "words", "between 0 and 1"),
    ],
)
def test_validate_rejects(raw: object, index: int | None, field: str | None, fragment: str):
    with pytest.raises(SegmentError) as info:
        validate_segments(raw, duration_s=10.0, max_text_chars=20)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.index == index
    assert err.field == field
    assert fragment in err.message
    assert str(err) == err.message
    if index is not None:
        assert err.message.startswith(f"segment {index + 1}")  # counted from 1, as the page numbers rows


def test_validate_limits_segment_count():
    raw = [good(start=i, end=i + 1) for i in range(4)]
    with pytest.raises(SegmentError, match="4 segments is more than the limit of 3"):
        validate_segments(raw, duration_s=None, max_segments=3)


def test_validate_end_tolerance_and_unknown_duration():
    assert validate_segments([good(start=9.0, end=10.4)], duration_s=10.0)[0].end == 10.4
    assert validate_segments([good(start=100.0, end=5000.0)], duration_s=None)[0].end == 5000.0


# --- tests/wer.py (the WER helper used by the end-to-end tests) -------------------


def test_normalize():
    assert normalize("Mr. Quilter's manner, 3.5 times 1,000!") == ["mr", "quilters", "manner", "3.5", "times", "1,000"]
    assert normalize("NOR IS MISTER QUILTER'S") == ["nor", "is", "mister", "quilters"]
    assert normalize("well-known — “quoted”") == ["well", "known", "quoted"]
    assert normalize("Çığ ÜŞÖ") == ["çığ", "üşö"]
    assert normalize("  ...  ") == []


def test_wer():
    assert wer("the cat sat", "The cat sat.") == 0.0
    assert wer("the cat sat", "the cat") == pytest.approx(1 / 3)  # deletion
    assert wer("the cat sat", "the bat sat") == pytest.approx(1 / 3)  # substitution
    assert wer("the cat sat", "the cat sat down") == pytest.approx(1 / 3)  # insertion
    assert wer("a b c d", "b c d e") == pytest.approx(2 / 4)
    assert wer("one", "two three four") == 3.0
    assert wer("", "") == 0.0
    assert wer("", "extra words") == 2.0


# --- markup typed into an edit ------------------------------------------------------

WJ = "\u2060"
MARKUP = '{\\an8}<font color="red">Stop</font> {\\i1}now{\\i0} & <b>go</b> {aside} 3 < 4 a\\Nb'
AS_TYPED = '<font color="red">Stop</font> now & <b>go</b> {aside} 3 < 4 a\\Nb'  # override blocks dropped


def test_srt_shows_tags_as_typed_and_drops_override_blocks():
    srt = to_srt([seg(0, 1, MARKUP)])
    assert "an8" not in srt and "i1" not in srt
    assert parse_srt(srt)[0][2].replace(WJ, "") == AS_TYPED
    # Read as a player reads SRT: HTML-like tags would become styling ({\b1}, {\c...}).
    event = pysubs2.SSAFile.from_string(srt, format_="srt")[0]
    assert "{\\" not in event.text and event.text.replace(WJ, "") == AS_TYPED


def test_vtt_escapes_and_drops_override_blocks():
    cue = parse_vtt(to_vtt([seg(0, 1, MARKUP)]))[0][2]
    assert cue == '&lt;font color="red"&gt;Stop&lt;/font&gt; now &amp; &lt;b&gt;go&lt;/b&gt; {aside} 3 &lt; 4 a\\Nb'


def test_txt_is_plain_text_without_override_blocks():
    assert to_txt([seg(0, 1, MARKUP)]) == AS_TYPED + "\n"
    assert to_txt([seg(0, 1, "{\\an8}"), seg(1, 2, "kept")]) == "kept\n"  # a cue of codes only is empty


def test_json_keeps_the_text_as_stored():
    out = json.loads(to_json([seg(0, 1, MARKUP)]))
    assert out["segments"][0]["text"] == MARKUP and out["text"] == AS_TYPED


def test_edited_markup_on_a_live_server(make_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    # Before: SRT and TXT passed {\an8} and <font> from an edit straight through.
    live = make_server()
    wav = speak("markup in an edit", tmp_path / "edit.wav")
    with live.client() as client:
        job_id = client.post("/v1/jobs", files={"file": ("edit.wav", wav.read_bytes())}).json()["id"]
        assert wait_done(client, job_id)["status"] == "done"
        r = client.put(f"/v1/jobs/{job_id}/transcript", json={"segments": [{"start": 0.0, "end": 1.0, "text": MARKUP}]})
        assert r.status_code == 200, r.text

        def get(fmt: str) -> str:
            return client.get(f"/v1/jobs/{job_id}/transcript", params={"format": fmt}).text

        srt, vtt, txt = get("srt"), get("vtt"), get("txt")
        assert "{\\" not in srt + vtt + txt
        assert "<\u2060font" in srt and "&lt;font" in vtt and txt == AS_TYPED + "\n"
        assert json.loads(get("json"))["segments"][0]["text"] == MARKUP
