"""Probing and the upload checks, on media generated here with ffmpeg and espeak-ng.

The generators at the top are shared with tests/test_ffmpeg.py and tests/test_render.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from app.media.ffmpeg import FfmpegPool
from app.media.probe import MediaError, MediaInfo, check_media, parse_probe

pytestmark = pytest.mark.skipif(
    not (shutil.which("ffmpeg") and shutil.which("ffprobe") and shutil.which("espeak-ng")),
    reason="needs ffmpeg, ffprobe and espeak-ng on PATH",
)

CLIP_SECONDS = 3.0
AUDIO_FORMATS = {  # name -> ffmpeg output arguments
    "speech.mp3": ["-c:a", "libmp3lame", "-b:a", "64k"],
    "speech.wav": ["-c:a", "pcm_s16le"],
    "speech.flac": ["-c:a", "flac"],
    "speech.opus.ogg": ["-c:a", "libopus", "-b:a", "32k", "-f", "ogg"],
    "speech.m4a": ["-c:a", "aac", "-b:a", "64k"],
}


def ffmpeg(*args: str) -> bytes:
    return subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True, capture_output=True
    ).stdout


def make_media(folder: Path, *, seconds: float = CLIP_SECONDS, size: str = "320x240") -> dict[str, Path]:
    """A speech clip with video, audio-only files, video without audio, and non-media files."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    speech = folder / "espeak.wav"
    subprocess.run(["espeak-ng", "-w", str(speech), "hello world, this is a test"], check=True, capture_output=True)
    # Pad the speech with silence to exactly `seconds`, at 48 kHz stereo like a camera file.
    out["speech.wav"] = folder / "speech.wav"
    ffmpeg("-i", str(speech), "-af", "apad", "-t", str(seconds), "-ar", "48000", "-ac", "2", str(out["speech.wav"]))
    out["clip.mp4"] = folder / "clip.mp4"
    ffmpeg(
        "-f", "lavfi", "-i", f"testsrc2=s={size}:r=25:d={seconds}", "-i", str(out["speech.wav"]),
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k",
        "-t", str(seconds), str(out["clip.mp4"]),
    )  # fmt: skip
    for name, args in AUDIO_FORMATS.items():
        if name != "speech.wav":
            out[name] = folder / name
            ffmpeg("-i", str(out["speech.wav"]), *args, str(out[name]))
    out["silent.mp4"] = folder / "silent.mp4"
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=s=160x120:r=25:d={seconds}", "-c:v", "libx264", "-preset", "ultrafast", str(out["silent.mp4"]))  # fmt: skip
    png = folder / "picture.png"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=160x120", "-frames:v", "1", str(png))
    out["png.mp4"] = folder / "png.mp4"
    shutil.copy(png, out["png.mp4"])
    jpg = folder / "picture.jpg"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=160x120", "-frames:v", "1", str(jpg))
    out["jpg.mp4"] = folder / "jpg.mp4"
    shutil.copy(jpg, out["jpg.mp4"])
    out["text.mp4"] = folder / "text.mp4"
    out["text.mp4"].write_text("This is a shopping list, not a video.\nmilk\neggs\n")
    out["zero.mp4"] = folder / "zero.mp4"
    out["zero.mp4"].write_bytes(b"")
    out["truncated.mp4"] = folder / "truncated.mp4"
    data = out["clip.mp4"].read_bytes()
    out["truncated.mp4"].write_bytes(data[: int(len(data) * 0.3)])
    return out


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_media(tmp_path_factory.mktemp("media"))


@pytest.fixture
def pool() -> FfmpegPool:
    return FfmpegPool(max_processes=2, timeout_s=60)


# -- parse_probe / check_media on ffprobe-shaped dicts -------------------------------


def _info(**kw: object) -> MediaInfo:
    base: dict[str, object] = dict(
        duration_s=10.0, format_name="wav", has_audio=True, has_video=False, audio_codec="pcm_s16le",
        video_codec=None, width=None, height=None, sample_rate=16000, channels=1,
    )  # fmt: skip
    base.update(kw)
    return MediaInfo(**base)  # type: ignore[arg-type]


def test_cover_art_is_not_video() -> None:
    info = parse_probe(
        {
            "format": {"format_name": "mp3", "duration": "12.5"},
            "streams": [
                {"codec_type": "audio", "codec_name": "mp3", "sample_rate": "44100", "channels": 2},
                {"codec_type": "video", "codec_name": "mjpeg", "width": 500, "height": 500, "disposition": {"attached_pic": 1}},
            ],
        }
    )
    assert info.has_audio and not info.has_video and not info.is_image
    assert (info.duration_s, info.sample_rate, info.channels, info.width) == (12.5, 44100, 2, None)


def test_duration_falls_back_to_streams() -> None:
    info = parse_probe(
        {"format": {"format_name": "matroska,webm"}, "streams": [{"codec_type": "audio", "codec_name": "opus", "duration": "N/A"}, {"codec_type": "video", "codec_name": "vp9", "duration": "4.5"}]}  # fmt: skip
    )
    assert info.duration_s == 4.5


def test_too_long_names_the_limit() -> None:
    with pytest.raises(MediaError) as err:
        check_media(_info(duration_s=7300), max_duration_s=7200)
    assert (err.value.status, err.value.code) == (413, "too_long")
    assert "2 h 00 min" in err.value.message and "2 h 01 min 40 s" in err.value.message


def test_zero_duration_is_empty() -> None:
    with pytest.raises(MediaError) as err:
        check_media(_info(duration_s=0.0), max_duration_s=100)
    assert (err.value.status, err.value.code) == (415, "empty_media")


def test_no_streams_is_not_media() -> None:
    with pytest.raises(MediaError) as err:
        check_media(parse_probe({"format": {"format_name": "srt"}, "streams": [{"codec_type": "subtitle"}]}), max_duration_s=100)
    assert (err.value.status, err.value.code) == (415, "not_media")


# -- real files ---------------------------------------------------------------


async def test_video_with_speech_passes(pool: FfmpegPool, media: dict[str, Path]) -> None:
    info = await pool.probe(media["clip.mp4"])
    check_media(info, max_duration_s=60)
    assert info.has_audio and info.has_video
    assert (info.video_codec, info.audio_codec, info.width, info.height) == ("h264", "aac", 320, 240)
    assert info.duration_s == pytest.approx(CLIP_SECONDS, abs=0.1)


@pytest.mark.parametrize("name", sorted(AUDIO_FORMATS))
async def test_audio_only_formats_pass(pool: FfmpegPool, media: dict[str, Path], name: str) -> None:
    info = await pool.probe(media[name])
    check_media(info, max_duration_s=60)
    assert info.has_audio and not info.has_video
    assert info.duration_s == pytest.approx(CLIP_SECONDS, abs=0.1)


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("png.mp4", "not_media"),  # ffprobe: png_pipe, one video stream, no audio
        ("jpg.mp4", "not_media"),
        ("text.mp4", "not_media"),
        ("truncated.mp4", "not_media"),  # moov atom lies in the missing 70 %
        ("zero.mp4", "empty_media"),
        ("silent.mp4", "no_audio_stream"),
    ],
)
async def test_unusable_files_are_refused(pool: FfmpegPool, media: dict[str, Path], name: str, code: str) -> None:
    with pytest.raises(MediaError) as err:
        check_media(await pool.probe(media[name]), max_duration_s=60)
    assert (err.value.status, err.value.code) == (415, code)
    assert err.value.message.endswith(".")


async def test_too_long_real_file(pool: FfmpegPool, media: dict[str, Path]) -> None:
    with pytest.raises(MediaError) as err:
        check_media(await pool.probe(media["speech.mp3"]), max_duration_s=2)
    assert (err.value.status, err.value.code) == (413, "too_long")


async def test_missing_duration_is_measured(pool: FfmpegPool, media: dict[str, Path], tmp_path: Path) -> None:
    # WebM written to a pipe (as browsers' MediaRecorder does) has no duration in its header.
    webm = tmp_path / "recorded.webm"
    webm.write_bytes(ffmpeg("-i", str(media["speech.wav"]), "-c:a", "libopus", "-f", "webm", "pipe:1"))
    info = await pool.probe(webm)
    check_media(info, max_duration_s=60)
    assert info.duration_s == pytest.approx(CLIP_SECONDS, abs=0.1)


def test_in_process_header_read_agrees_with_ffprobe(tmp_path: Path) -> None:
    """Uploads are probed with PyAV (fast, no process); it must describe files as ffprobe does."""
    import json
    import subprocess

    from app.media.probe import parse_probe, read_headers
    from tests.media import make_video_with_speech, speak

    wav = speak("one two three", tmp_path / "s.wav")
    mp3 = tmp_path / "s.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), str(mp3)], check=True)
    mp4 = make_video_with_speech("hello", tmp_path / "v.mp4")
    for path in (wav, mp3, mp4):
        out = subprocess.run(
            ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(path)],
            capture_output=True, check=True,
        ).stdout
        ours, theirs = parse_probe(read_headers(str(path))), parse_probe(json.loads(out))
        assert ours.duration_s == pytest.approx(theirs.duration_s, abs=0.1), path.name  # mp3 length is an estimate in both
        assert (ours.has_audio, ours.has_video, ours.audio_codec, ours.video_codec) == (
            theirs.has_audio, theirs.has_video, theirs.audio_codec, theirs.video_codec
        ), path.name
        assert (ours.width, ours.height, ours.sample_rate, ours.channels) == (theirs.width, theirs.height, theirs.sample_rate, theirs.channels)
