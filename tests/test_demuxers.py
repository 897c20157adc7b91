"""Uploads open only with the allowed demuxers and the file protocol, in every reader.

The live-server side (a 415 at upload) is in tests/test_bad_input.py; here each
reader is tried on its own with the hostile files: PyAV's header read, the
ffprobe fallback, duration measuring, audio extraction and both export modes.
None may open the files the hostile ones name. And every container on the
list still opens.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio
import av
import pytest

from app.media.demuxers import FORMAT_WHITELIST, MEDIA_DEMUXERS, is_allowed, refused_format, with_whitelists
from app.media.ffmpeg import FfmpegError, FfmpegPool
from app.media.probe import MediaError, MediaInfo, check_media, parse_probe, read_headers
from app.media.render import ExportOptions, render_export
from batching.types import Segment
from tests.hostile import Hostile, OpenWatch, external_data_mp4, make_hostile
from tests.media import speak

# The cases libavformat would otherwise follow to the targets (seen with inotify
# on the code before the whitelists: the HLS and DASH ones read input.ts).
FOLLOWING = ["hls_m3u8", "hls_as_mp4", "hls_file_urls", "dash_mpd", "ffconcat"]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Hostile:
    return make_hostile(tmp_path_factory.mktemp("hostile"))


# -- the lists -------------------------------------------------------------------


def test_with_whitelists_guards_every_input_but_keeps_a_callers_own() -> None:
    args = ["-i", "file:/a", "-format_whitelist", "srt", "-f", "srt", "-i", "file:/b.srt", "-map", "0", "out"]
    assert with_whitelists(args) == [
        "-format_whitelist", FORMAT_WHITELIST, "-protocol_whitelist", "file", "-i", "file:/a",
        "-format_whitelist", "srt", "-f", "srt", "-protocol_whitelist", "file", "-i", "file:/b.srt",
        "-map", "0", "out",
    ]  # fmt: skip


def test_pool_command_lines_carry_the_whitelists() -> None:
    argv = FfmpegPool()._ffmpeg_argv(["-i", "file:/x", "-f", "null", "-"])
    i = argv.index("-i")
    assert argv[i - 4 : i] == ["-format_whitelist", FORMAT_WHITELIST, "-protocol_whitelist", "file"]


@pytest.mark.parametrize(
    ("name", "allowed"),
    [("mov,mp4,m4a,3gp,3g2,mj2", True), ("matroska,webm", True), ("mp3", True), ("hls", False), ("concat", False),
     ("sdp", False), ("image2", False), ("png_pipe", False), ("dash", False), ("vobsub", False), ("tty", False), ("lavfi", False)],
)  # fmt: skip
def test_is_allowed(name: str, allowed: bool) -> None:
    assert is_allowed(name) is allowed


def test_no_demuxer_that_opens_other_files_is_on_the_list() -> None:
    following = {"hls", "applehttp", "concat", "dash", "imf", "sdp", "rtsp", "rtp", "image2", "image2pipe", "vobsub",
                 "webm_dash_manifest", "lavfi", "ffmetadata", "tee", "srt", "ass", "webvtt", "mpl2", "jacosub"}  # fmt: skip
    assert following.isdisjoint(MEDIA_DEMUXERS)


def test_refused_format_reads_the_log_line() -> None:
    log = "[hls @ 0x5608f9234280] Format not on whitelist 'mov,matroska'\nfile:/x: Invalid argument"
    assert refused_format(log) == "hls"
    assert refused_format("[mov,mp4,m4a,3gp,3g2,mj2 @ 0x1] Format not on whitelist 'wav'") == "mov"
    assert refused_format("moov atom not found") is None


def test_check_media_refuses_a_format_off_the_list() -> None:
    info = parse_probe({"format": {"format_name": "hls", "duration": "5"}, "streams": [{"codec_type": "audio", "codec_name": "mp2"}]})
    with pytest.raises(MediaError) as caught:
        check_media(info, max_duration_s=100)
    assert caught.value.code == "not_media" and "hls format" in caught.value.message


# -- every reader refuses, and never opens the targets ------------------------------


@pytest.mark.parametrize("case", FOLLOWING)
def test_pyav_header_read_refuses(hostile: Hostile, case: str) -> None:
    with OpenWatch(*hostile.targets) as watch:
        with pytest.raises(av.error.FFmpegError):  # PyAV's refusal (demuxer or protocol not allowed)
            read_headers(str(hostile.files[case][0]))
        assert watch.opened() == []


@pytest.mark.parametrize("case", FOLLOWING)
async def test_probe_refuses_with_a_clear_message(hostile: Hostile, case: str) -> None:
    with OpenWatch(*hostile.targets) as watch:
        with pytest.raises(MediaError) as caught:
            await FfmpegPool().probe(hostile.files[case][0])
        assert watch.opened() == []
    assert caught.value.status == 415 and caught.value.code == "not_media"
    assert "does not open" in caught.value.message, caught.value.message


@pytest.mark.parametrize("case", FOLLOWING)
async def test_extraction_refuses(hostile: Hostile, case: str, tmp_path: Path) -> None:
    # A job accepted before the whitelists existed goes straight to extraction after a restart.
    with OpenWatch(*hostile.targets) as watch:
        with pytest.raises(FfmpegError):
            await FfmpegPool().extract_audio(hostile.files[case][0], tmp_path / "audio.pcm")
        assert watch.opened() == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", ["soft", "burn"])
async def test_exports_refuse(hostile: Hostile, tmp_path: Path, mode: str) -> None:
    media = MediaInfo(duration_s=5, format_name="hls", has_audio=True, has_video=True, audio_codec="mp2",
                      video_codec="h264", width=320, height=240, sample_rate=16000, channels=1)  # fmt: skip
    segments = [Segment(start=0.0, end=2.0, text="hello")]
    dest = tmp_path / "out.mkv"
    with OpenWatch(*hostile.targets) as watch:
        with pytest.raises(FfmpegError):
            await render_export(
                FfmpegPool(), source=hostile.files["hls_file_urls"][0], media=media, segments=segments,
                options=ExportOptions(mode=mode, container="mkv"), language="en", work_dir=tmp_path / "w", dest=dest,  # type: ignore[arg-type]
            )  # fmt: skip
        assert watch.opened() == []
    assert not dest.exists()


async def test_mp4_external_data_references_stay_closed(hostile: Hostile, tmp_path: Path) -> None:
    # The crafted file works: ffmpeg with -enable_drefs 1 reads the target's audio.
    # With the default every reader keeps it closed.
    m4a = tmp_path / "up" / "own.m4a"
    m4a.parent.mkdir()
    await anyio.run_process(["ffmpeg", "-nostdin", "-v", "error", "-i", str(hostile.targets[1]), "-c:a", "aac", "-movflags", "-faststart", str(m4a)])  # fmt: skip
    target = tmp_path / "secret" / "input.m4a"
    target.parent.mkdir()
    target.write_bytes(m4a.read_bytes())
    hostile_m4a = external_data_mp4(m4a, tmp_path / "up" / "input.m4a", target="/x/secret/input.m4a", nlvl_from=2, nlvl_to=2)
    with OpenWatch(target) as watch:
        await anyio.run_process(["ffmpeg", "-nostdin", "-v", "error", "-enable_drefs", "1", "-i", str(hostile_m4a), "-f", "null", "-"])  # fmt: skip
        assert watch.opened() == [str(target)]
    pool = FfmpegPool()
    with OpenWatch(target) as watch:
        try:
            await pool.probe(hostile_m4a)
        except MediaError:
            pass
        try:
            await pool.extract_audio(hostile_m4a, tmp_path / "audio.pcm")
        except FfmpegError:
            pass
        assert watch.opened() == []


# -- every container on the list still opens -------------------------------------------

CONTAINERS = {
    "m4a": ["-c:a", "aac"],
    "mov": ["-c:a", "alac"],
    "mkv": ["-c:a", "libvorbis"],
    "webm": ["-c:a", "libopus"],
    "avi": ["-c:a", "libmp3lame"],
    "ts": ["-c:a", "mp2"],
    "mpg": ["-c:a", "mp2"],
    "flv": ["-c:a", "aac"],
    "wma": ["-c:a", "wmav2"],
    "mp3": ["-c:a", "libmp3lame"],
    "aac": ["-c:a", "aac"],
    "ac3": ["-c:a", "ac3"],
    "eac3": ["-c:a", "eac3"],
    "wav": [],
    "w64": [],
    "aiff": [],
    "caf": [],
    "au": [],
    "flac": [],
    "ogg": ["-c:a", "libvorbis"],
    "opus": ["-c:a", "libopus"],
    "wv": ["-c:a", "wavpack"],
}


@pytest.fixture(scope="module")
def containers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("containers")
    wav = speak("every container still opens", d / "said.wav")
    out = {}
    for ext, codec in CONTAINERS.items():
        out[ext] = d / f"speech.{ext}"
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(wav), *codec, str(out[ext])], check=True)
    return out


async def test_every_listed_container_probes_and_extracts(containers: dict[str, Path], tmp_path: Path) -> None:
    pool = FfmpegPool()
    for ext, path in containers.items():
        info = await pool.probe(path)
        check_media(info, max_duration_s=60)
        assert is_allowed(info.format_name), (ext, info.format_name)
        pcm = tmp_path / f"{ext}.pcm"
        await pool.extract_audio(path, pcm)
        assert pcm.stat().st_size > 16000, ext  # more than half a second of 16 kHz s16 audio
