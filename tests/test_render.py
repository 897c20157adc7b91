"""Exports: option validation, subtitle text, and real burn/soft renders checked with ffprobe."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path

import pysubs2
import pytest

from app.media.render import (
    ExportOptionError,
    ExportOptions,
    ExportStyle,
    build_ass,
    build_text_subs,
    escape_filter_path,
    iso639_2,
    output_name,
    render_export,
)
from app.media.cuerules import DEFAULT_RULES, PRESETS, CueRules
from app.media.ffmpeg import FfmpegError, FfmpegPool, FfmpegTimeout
from app.media.probe import MediaInfo
from batching.types import Segment
from tests.test_probe import CLIP_SECONDS, make_media, pytestmark  # noqa: F401

SEGMENTS = (
    Segment(0.4, 1.6, " Hello world, this is a test of burned subtitles & friends"),
    Segment(1.8, 2.2, "   "),  # blank cues are dropped
    Segment(2.4, 2.9, "Güle güle"),
)

# Line rules that cut and wrap but keep the segments' times, so frames between cues stay clear.
UNTIMED = CueRules(min_cue_duration_s=0, min_gap_s=0, max_cps=0)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_media(tmp_path_factory.mktemp("media"))


@pytest.fixture
def pool() -> FfmpegPool:
    return FfmpegPool(max_processes=2, timeout_s=60, threads=2)


def ffprobe(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(path)],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    return json.loads(out)


def cues(path: Path) -> str:
    return subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path), "-map", "0:s:0", "-f", "srt", "-"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip


def gray_frame(path: Path, t: float) -> bytes:
    return subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-ss", str(t), "-i", str(path), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "gray", "-"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip


def mean_abs_diff(a: bytes, b: bytes) -> float:
    assert len(a) == len(b)
    return sum(abs(x - y) for x, y in zip(a, b)) / len(a)


# -- options ----------------------------------------------------------------------


def test_options_defaults() -> None:
    opts = ExportOptions.from_dict({"mode": "burn"})
    assert (opts.mode, opts.container, opts.crf, opts.preset, opts.style) == ("burn", "mp4", 23, "veryfast", ExportStyle())


def test_style_from_dict() -> None:
    style = ExportStyle.from_dict({"font": "DejaVu Serif", "size": 60, "primary_colour": "#FFFF00", "outline_colour": "#00000080", "outline_width": 2.5, "position": "top", "margin": 20, "max_chars_per_line": 30})  # fmt: skip
    assert style == ExportStyle("DejaVu Serif", 60, "#FFFF00", "#00000080", 2.5, "top", 20, 30)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "mode"),
        ({"mode": "embed"}, "mode"),
        ({"mode": "soft", "container": "avi"}, "container"),
        ({"mode": "soft", "colour": "red"}, "colour"),
        ({"mode": "burn", "crf": 52}, "crf"),
        ({"mode": "burn", "crf": True}, "crf"),
        ({"mode": "burn", "preset": "ludicrous"}, "preset"),
        ({"mode": "burn", "style": "big"}, "style"),
        ({"mode": "burn", "style": {"size": "48"}}, "style.size"),
        ({"mode": "burn", "style": {"size": 4}}, "style.size"),
        ({"mode": "burn", "style": {"primary_colour": "white"}}, "style.primary_colour"),
        ({"mode": "burn", "style": {"outline_colour": "#12345"}}, "style.outline_colour"),
        ({"mode": "burn", "style": {"outline_width": float("nan")}}, "style.outline_width"),
        ({"mode": "burn", "style": {"position": "middle"}}, "style.position"),
        ({"mode": "burn", "style": {"font": "Arial,Bold"}}, "style.font"),
        ({"mode": "burn", "style": {"font": "{\\b1}"}}, "style.font"),
        ({"mode": "burn", "style": {"shadow": 2}}, "style.shadow"),
        ({"mode": "soft", "subtitles": {"max_cps": -1}}, "subtitles.max_cps"),
        ({"mode": "soft", "subtitles": {"preset": "cinema"}}, "subtitles.preset"),
        ({"mode": "soft", "subtitles": {"colour": 1}}, "subtitles.colour"),
        ({"mode": "soft", "subtitles": []}, "subtitles"),
    ],
)
def test_bad_options_name_the_field(body: dict, field: str) -> None:
    with pytest.raises(ExportOptionError) as err:
        ExportOptions.from_dict(body)
    assert err.value.field == field and field in err.value.message
    assert (err.value.status, err.value.code) == (422, "invalid_export_option")


def test_language_tags() -> None:
    assert [iso639_2(c) for c in ("en", "de", "tr", "zh", "jw", "haw", "yue", "fra", None, "xx-YY")] == [
        "eng", "deu", "tur", "zho", "jav", "haw", "yue", "fra", "und", "und",
    ]  # fmt: skip


def test_output_name() -> None:
    assert output_name("talk.mp4", "burn", "mp4") == "talk_subtitled.mp4"
    assert output_name("Toplantı kaydı.MOV", "soft", "mkv") == "Toplantı kaydı_subs.mkv"
    assert output_name("../../etc/passwd", "soft", "webm") == "passwd_subs.webm"
    assert output_name('C:\\Users\\x\\a"b<c>|*?.mp4', "burn", "mkv") == "a_b_c_subtitled.mkv"
    assert output_name("\x00\n.", "burn", "mp4") == "media_subtitled.mp4"
    assert output_name(".hidden", "burn", "mp4") == "hidden_subtitled.mp4"
    assert len(output_name("x" * 500 + ".mp4", "burn", "mp4")) <= 120


# -- subtitle text -------------------------------------------------------------------


def test_style_max_chars_per_line_folds_into_the_line_rules() -> None:
    job_rules = CueRules(max_chars_per_line=30, max_cps=12.0)
    assert ExportOptions.from_dict({"mode": "soft"}).rules(job_rules) == job_rules
    alias = ExportOptions.from_dict({"mode": "soft", "style": {"max_chars_per_line": 20}})
    assert alias.rules(job_rules) == CueRules(max_chars_per_line=20, max_cps=12.0)
    preset = ExportOptions.from_dict({"mode": "soft", "subtitles": {"preset": "bbc", "max_line_count": 1}})
    assert preset.rules(DEFAULT_RULES) == CueRules(**{**PRESETS["bbc"].__dict__, "max_lines_per_cue": 1})
    raw = ExportOptions.from_dict({"mode": "soft", "subtitles": {"preset": "none"}})
    long_text = [Segment(0, 5, "word " * 30)]
    assert build_text_subs(long_text, "srt", raw.rules(DEFAULT_RULES)).splitlines()[1:3] == ["00:00:00,000 --> 00:00:05,000", " ".join(["word"] * 30)]
    wrapped = build_text_subs(long_text, "srt", alias.rules(DEFAULT_RULES))
    assert all(len(line) <= 20 for line in wrapped.splitlines() if "-->" not in line)


def test_karaoke_tags_follow_the_words() -> None:
    from batching.types import Word

    words = (Word(0.5, 0.9, " Hello", 0.9), Word(1.2, 1.6, " world.", 0.9))
    seg = [Segment(0.0, 2.0, "Hello world.", words=words)]
    ass = pysubs2.SSAFile.from_string(build_ass(seg, ExportStyle(), width=None, height=None, karaoke=True))
    assert ass.events[0].text == "{\\k50}{\\k40}Hello {\\k30}{\\k40}world."
    # Without word times (an edited text), a plain cue.
    edited = [Segment(0.0, 2.0, "Goodbye world.", words=words)]
    plain = pysubs2.SSAFile.from_string(build_ass(edited, ExportStyle(), width=None, height=None, karaoke=True))
    assert plain.events[0].text == "Goodbye world."


def test_build_ass_scales_to_1080_lines() -> None:
    style = ExportStyle(position="top", size=60, margin=25, primary_colour="#FF000080")
    subs = pysubs2.SSAFile.from_string(build_ass(SEGMENTS, style, width=320, height=240, rules=UNTIMED))
    assert (subs.info["PlayResX"], subs.info["PlayResY"]) == ("1440", "1080")
    default = subs.styles["Default"]
    assert (default.fontsize, default.marginv, default.alignment) == (60, 25, pysubs2.Alignment.TOP_CENTER)
    assert (default.primarycolor.r, default.primarycolor.a) == (255, 127)
    assert [(e.start, e.end) for e in subs.events] == [(400, 1600), (2400, 2900)]
    assert "\\N" in subs.events[0].text  # wrapped at 42 characters
    audio_only = pysubs2.SSAFile.from_string(build_ass(SEGMENTS, ExportStyle(), width=None, height=None))
    assert audio_only.info["PlayResX"] == "1920"


def test_user_text_is_never_markup() -> None:
    # Override blocks are dropped (as in every rendering, app.media.formats); the rest shows as typed.
    seg = [Segment(0, 1, "{\\an8} <b>x</b> {note} a\\Nb & c")]
    ass = pysubs2.SSAFile.from_string(build_ass(seg, ExportStyle(), width=640, height=360))
    assert ass.events[0].text == "<b>x</b> \\{note\\} a\\\u2060Nb & c"
    assert "&lt;b&gt;x&lt;/b&gt; {note} a\\Nb &amp; c" in build_text_subs(seg, "vtt")
    srt = build_text_subs(seg, "srt")
    assert "<\u2060b>" in srt and "{\u2060note}" in srt and "an8" not in srt
    only_codes = [Segment(0, 1, "{\\an8}{\\i1}")]
    assert build_text_subs(only_codes, "srt") == ""  # no cue left to show


def test_escape_filter_path() -> None:
    assert escape_filter_path("/tmp/a b/subs.ass") == "/tmp/a b/subs.ass"
    assert escape_filter_path("/x/it's") == "/x/it\\\\\\'s"
    assert escape_filter_path("C:/a") == "C\\\\:/a"
    assert escape_filter_path("/a,b;c[d]") == "/a\\,b\\;c\\[d\\]"
    assert escape_filter_path("/a\\b") == "/a\\\\\\\\b"


# -- rendering --------------------------------------------------------------------


async def _render(pool: FfmpegPool, media: dict[str, Path], tmp_path: Path, name: str, body: dict, *, language: str | None = "tr", work: str = "work", progress: list[float] | None = None) -> tuple[Path, MediaInfo]:  # fmt: skip
    info = await pool.probe(media[name])
    opts = ExportOptions.from_dict(body)
    dest = tmp_path / f"out.{opts.container}"
    await render_export(
        pool, source=media[name], media=info, segments=SEGMENTS, options=opts, language=language,
        work_dir=tmp_path / work, dest=dest, on_progress=None if progress is None else progress.append,
        rules=UNTIMED,
    )  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [dest.name], "temp or subtitle files left behind"
    assert list((tmp_path / work).iterdir()) == []
    return dest, info


@pytest.mark.parametrize(
    ("container", "sub_codec", "video", "audio"),
    [("mp4", "mov_text", "h264", "aac"), ("mkv", "subrip", "h264", "aac"), ("webm", "webvtt", "vp9", "opus")],
)
async def test_soft_export(pool: FfmpegPool, media: dict[str, Path], tmp_path: Path, container: str, sub_codec: str, video: str, audio: str) -> None:  # fmt: skip
    dest, _ = await _render(pool, media, tmp_path, "clip.mp4", {"mode": "soft", "container": container})
    streams = {s["codec_type"]: s for s in ffprobe(dest)["streams"]}
    assert (streams["video"]["codec_name"], streams["audio"]["codec_name"]) == (video, audio)
    assert streams["subtitle"]["codec_name"] == sub_codec
    assert streams["subtitle"]["tags"]["language"] == "tur"
    text = cues(dest)
    assert "Hello world, this is a test\nof burned subtitles & friends" in text and "Güle güle" in text
    # Read back, times shift by the file's start (the AAC priming, about 21 ms).
    starts = [int(sec) * 1000 + int(ms) for sec, ms in re.findall(r"00:00:(\d\d),(\d\d\d) -->", text)]
    assert [abs(a - b) <= 50 for a, b in zip(starts, (400, 2400))] == [True, True], text


@pytest.mark.parametrize("container", ["mp4", "mkv"])
async def test_soft_export_audio_only(pool: FfmpegPool, media: dict[str, Path], tmp_path: Path, container: str) -> None:
    dest, _ = await _render(pool, media, tmp_path, "speech.mp3", {"mode": "soft", "container": container}, language="en")
    types = sorted(s["codec_type"] for s in ffprobe(dest)["streams"])
    assert types == ["audio", "subtitle"]
    assert ffprobe(dest)["streams"][1]["tags"]["language"] == "eng"


async def test_soft_export_transcodes_pcm_for_mp4(pool: FfmpegPool, media: dict[str, Path], tmp_path: Path) -> None:
    dest, _ = await _render(pool, media, tmp_path, "speech.wav", {"mode": "soft", "container": "mp4"})
    assert [s["codec_name"] for s in ffprobe(dest)["streams"]] == ["aac", "mov_text"]


async def test_burn_export(pool: FfmpegPool, media: dict[str, Path], tmp_path: Path) -> None:
    # A work dir full of characters that are special in ffmpeg's filter syntax.
    weird = "it's: a [weird], dir; \\ ok"
    progress: list[float] = []
    dest, info = await _render(pool, media, tmp_path, "clip.mp4", {"mode": "burn", "style": {"size": 80}}, work=weird, progress=progress)  # fmt: skip
    out = ffprobe(dest)
    assert float(out["format"]["duration"]) == pytest.approx(info.duration_s, abs=0.1)
    assert [s["codec_name"] for s in out["streams"]] == ["h264", "aac"]
    with_subs = mean_abs_diff(gray_frame(media["clip.mp4"], 1.0), gray_frame(dest, 1.0))
    without = mean_abs_diff(gray_frame(media["clip.mp4"], 2.2), gray_frame(dest, 2.2))
    assert with_subs > 3 * without + 1, (with_subs, without)
    assert len(progress) >= 2 and progress[0] < 1.0 and progress[-1] == 1.0 and progress == sorted(progress)


async def test_burn_webm_uses_vp9(pool: FfmpegPool, media: dict[str, Path], tmp_path: Path) -> None:
    dest, _ = await _render(pool, media, tmp_path, "clip.mp4", {"mode": "burn", "container": "webm"})
    assert [s["codec_name"] for s in ffprobe(dest)["streams"]] == ["vp9", "opus"]


async def test_burn_needs_video(pool: FfmpegPool, media: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ExportOptionError) as err:
        await _render(pool, media, tmp_path, "speech.mp3", {"mode": "burn"})
    assert err.value.field == "mode" and "burn needs a video stream" in err.value.message


async def test_failed_export_leaves_nothing(pool: FfmpegPool, media: dict[str, Path], tmp_path: Path) -> None:
    info = await pool.probe(media["clip.mp4"])
    dest = tmp_path / "out.mp4"
    with pytest.raises(FfmpegError) as err:
        await render_export(
            pool, source=tmp_path / "gone.mp4", media=info, segments=SEGMENTS, options=ExportOptions("soft"),
            language="en", work_dir=tmp_path / "w", dest=dest,
        )  # fmt: skip
    assert "No such file" in err.value.message
    assert list(tmp_path.rglob("*.*")) == []


async def test_export_timeout(media: dict[str, Path], tmp_path: Path) -> None:
    pool = FfmpegPool(timeout_s=0.05, kill_grace_s=0.5)
    info = MediaInfo(3.0, "mov", True, True, "aac", "h264", 320, 240, 48000, 2)
    with pytest.raises(FfmpegTimeout):
        await render_export(
            pool, source=media["clip.mp4"], media=info, segments=SEGMENTS, options=ExportOptions("burn"),
            language="en", work_dir=tmp_path / "w", dest=tmp_path / "out.mp4",
        )  # fmt: skip
    assert list(tmp_path.rglob("*.*")) == []


async def test_cancelled_export_leaves_nothing(pool: FfmpegPool, media: dict[str, Path], tmp_path: Path) -> None:
    info = await pool.probe(media["clip.mp4"])
    started = asyncio.Event()
    task = asyncio.create_task(
        render_export(
            pool, source=media["clip.mp4"], media=info, segments=SEGMENTS,
            options=ExportOptions("burn", style=ExportStyle()), language="en",
            work_dir=tmp_path / "w", dest=tmp_path / "out.mp4", on_progress=lambda _: started.set(),
        )  # fmt: skip
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert list(tmp_path.rglob("*.*")) == [] and pool.busy == 0
