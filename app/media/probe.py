"""What an uploaded file is, as far as altyazi cares, and whether we can use it.

``parse_probe`` turns ffprobe's JSON into a small :class:`MediaInfo`;
``check_media`` decides whether the file may become a job. Running ffprobe
lives in :mod:`app.media.ffmpeg` (it goes through the shared process pool); this
module is pure and fast to test.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from app.media.demuxers import is_allowed, pyav_options


class MediaError(Exception):
    """An upload we cannot transcribe; ``status``/``code``/``message`` go to the client as-is."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class MediaInfo:
    duration_s: float
    format_name: str
    has_audio: bool
    has_video: bool  # a real picture track: cover art in an mp3/m4a does not count
    audio_codec: str | None
    video_codec: str | None
    width: int | None
    height: int | None
    sample_rate: int | None
    channels: int | None
    is_image: bool = False  # a still picture that ffprobe reads as a one-frame "video"


# ffprobe names still images by their demuxer: image2 for files, *_pipe when the
# content was sniffed (a PNG renamed .mp4 comes out as png_pipe).
_IMAGE_FORMATS = {"image2", "image2pipe", "gif", "webp", "apng", "ico"}
_IMAGE_CODECS = {"png", "mjpeg", "bmp", "gif", "webp", "tiff", "jpeg2000", "jpegls", "ppm", "pgm", "pam", "qoi"}


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):  # ffprobe writes "N/A" or leaves the key out
        return None
    return out if math.isfinite(out) else None


def _int(value: Any) -> int | None:
    out = _num(value)
    return int(out) if out is not None else None


def _is_cover_art(stream: dict[str, Any]) -> bool:
    disposition = stream.get("disposition") or {}
    return bool(disposition.get("attached_pic")) or bool(disposition.get("still_image"))


def parse_probe(data: dict[str, Any]) -> MediaInfo:
    """Summarise ``ffprobe -print_format json -show_format -show_streams`` output."""
    fmt = data.get("format") or {}
    streams = data.get("streams") or []
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    video = [s for s in streams if s.get("codec_type") == "video" and not _is_cover_art(s)]
    a = audio[0] if audio else None
    v = video[0] if video else None
    format_name = str(fmt.get("format_name") or "")

    duration = _num(fmt.get("duration"))
    if duration is None:
        # Some containers only know per-stream durations; the longest one is the file.
        durations = [d for d in (_num(s.get("duration")) for s in audio + video) if d is not None]
        duration = max(durations) if durations else 0.0

    is_image = not audio and (
        format_name in _IMAGE_FORMATS
        or format_name.endswith("_pipe")
        or (v is not None and v.get("codec_name") in _IMAGE_CODECS and (_int(v.get("nb_frames")) or 1) <= 1)
    )
    return MediaInfo(
        duration_s=max(duration, 0.0),
        format_name=format_name,
        has_audio=a is not None,
        has_video=v is not None,
        audio_codec=a.get("codec_name") if a else None,
        video_codec=v.get("codec_name") if v else None,
        width=_int(v.get("width")) if v else None,
        height=_int(v.get("height")) if v else None,
        sample_rate=_int(a.get("sample_rate")) if a else None,
        channels=_int(a.get("channels")) if a else None,
        is_image=is_image,
    )


def read_headers(path: str) -> dict[str, Any]:
    """ffprobe-shaped ``{"format", "streams"}`` read in-process with PyAV (libav).

    Blocking (run it in a thread). Opening a file reads only its headers: a
    few milliseconds, against a quarter of a second for starting an ffprobe
    process on a busy machine, which is what an upload waits on before its
    202. Raises whatever PyAV raises for a file it cannot open.
    """
    import av  # faster-whisper depends on PyAV, so it is always installed

    # Only the allowed demuxers, only the file protocol (see app/media/demuxers.py):
    # a playlist or script among the uploads must not open the files it names.
    url = "file:" + os.path.abspath(path)
    with av.open(url, container_options=pyav_options(), metadata_errors="ignore") as container:
        streams: list[dict[str, Any]] = []
        for stream in container.streams:
            ctx = stream.codec_context
            entry: dict[str, Any] = {
                "codec_type": stream.type,
                "codec_name": ctx.codec.canonical_name if ctx is not None else None,
                "disposition": {"attached_pic": int(bool(stream.disposition & av.stream.Disposition.attached_pic))},
            }
            if stream.duration is not None and stream.time_base is not None:
                entry["duration"] = float(stream.duration * stream.time_base)
            if stream.frames:
                entry["nb_frames"] = stream.frames
            if stream.type == "video" and ctx is not None:
                entry.update(width=ctx.width, height=ctx.height)
            elif stream.type == "audio" and ctx is not None:
                entry.update(sample_rate=ctx.sample_rate, channels=ctx.channels)
            streams.append(entry)
        fmt: dict[str, Any] = {"format_name": container.format.name}
        if container.duration is not None:
            fmt["duration"] = container.duration / 1_000_000  # AV_TIME_BASE
        return {"format": fmt, "streams": streams}


def _format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h} h {m:02d} min" if not s else f"{h} h {m:02d} min {s:02d} s"
    if m:
        return f"{m} min" if not s else f"{m} min {s:02d} s"
    return f"{s} s"


def too_long_message(duration_s: float | None, max_duration_s: float, *, claimed_s: float | None = None) -> str:
    """Why a file is refused for its length; ``duration_s`` None: it was cut off past the limit while decoding."""
    if duration_s is not None:
        head = f"The file is {_format_duration(duration_s)} long"
    else:
        head = "The file's audio runs longer than the limit"
        if claimed_s:
            head += f" (its header claims {_format_duration(claimed_s)})"
    return (
        f"{head}; this server accepts at most {_format_duration(max_duration_s)}. "
        "Cut it into shorter parts and upload them separately."
    )


def not_media(detail: str = "") -> MediaError:
    message = "The file is not audio or video that ffmpeg can read"
    message += f" ({detail})." if detail else "."
    return MediaError(415, "not_media", message + " Upload an audio or video file such as MP4, MKV, WebM, MP3, WAV, FLAC, OGG or M4A.")


def not_allowed_format(format_name: str) -> MediaError:
    """415 for a file whose format (demuxer name) is not on the allow-list."""
    if format_name == "tty":  # libavformat's name for plain or ANSI text
        return not_media("it is a text file")
    if format_name in _IMAGE_FORMATS or format_name.endswith("_pipe"):
        return not_media("it is a still image")
    return not_media(
        f"it is in the {format_name} format, which this server does not open: playlists, scripts and "
        "other files that name further files or addresses are refused"
    )


def check_media(info: MediaInfo, *, max_duration_s: float) -> None:
    """Raise :class:`MediaError` unless the file has audio we can transcribe within the limits."""
    if info.is_image:
        raise not_media("it is a still image")
    if info.format_name and not is_allowed(info.format_name):
        # The readers only open allowed demuxers; this holds should one ever be called without them.
        raise not_allowed_format(info.format_name.split(",")[0])
    if not info.has_audio and not info.has_video:
        raise not_media("it has no audio or video stream")
    if not info.has_audio:
        raise MediaError(
            415,
            "no_audio_stream",
            "The file has video but no audio track, so there is nothing to transcribe. Upload a file with sound.",
        )
    if info.duration_s <= 0:
        raise MediaError(415, "empty_media", "The file has an audio track but it is empty (zero seconds long).")
    if info.duration_s > max_duration_s:
        raise MediaError(413, "too_long", too_long_message(info.duration_s, max_duration_s))
