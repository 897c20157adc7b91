"""What the page's player can play: the upload itself, or a small copy made once.

Browsers play MP4/MOV with H.264 (or AV1) and AAC/MP3, WebM with VP8/VP9/AV1
and Opus/Vorbis, and MP3, WAV, Ogg and FLAC audio. An upload that is one of
those is served as it is. Anything else gets a copy made once, while the job
runs:

- ``remux``: the picture and sound are playable but the container is not (an
  MKV from a screen recorder with H.264 and AAC): both streams copied into an
  MP4, no re-encoding, seconds for an hour;
- ``audio``: the codecs are not playable either (HEVC, MPEG-2, WMV, AC-3...):
  the 16 kHz audio the pipeline extracted, as 48 kbit/s AAC in an M4A; the page
  shows the waveform instead of the picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from app.media.ffmpeg import file_url

Plan = Literal["input", "remux", "audio"]

# ffprobe's format names, as probe.MediaInfo keeps them.
_MP4 = "mov,mp4,m4a,3gp,3g2,mj2"
_WEBM = "matroska,webm"
_MP4_VIDEO = {"h264", "av1"}
_MP4_AUDIO = {"aac", "mp3"}
_WEBM_VIDEO = {"vp8", "vp9", "av1"}
_WEBM_AUDIO = {"opus", "vorbis"}
# Audio-only containers browsers play, with the codecs they play in them.
_AUDIO_FILES = {
    "mp3": {"mp3"},
    "wav": {"pcm_s16le", "pcm_u8", "pcm_f32le", "pcm_s24le"},
    "ogg": {"opus", "vorbis", "flac"},
    "flac": {"flac"},
}

MEDIA_TYPES = {
    ".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/mp4", ".m4a": "audio/mp4", ".webm": "video/webm",
    ".weba": "audio/webm", ".mp3": "audio/mpeg", ".wav": "audio/wav", ".ogg": "audio/ogg", ".oga": "audio/ogg",
    ".opus": "audio/ogg", ".flac": "audio/flac",
}


def plan_for(media: dict[str, Any] | None, suffix: str) -> Plan:
    """How the player gets this upload: as it is, remuxed to MP4, or as an audio copy."""
    media = media or {}
    fmt = str(media.get("format_name") or "")
    video = media.get("video_codec") if media.get("has_video") and not media.get("is_image") else None
    audio = media.get("audio_codec")
    suffix = suffix.lower()
    if fmt == _MP4 and (video is None or video in _MP4_VIDEO) and audio in _MP4_AUDIO:
        return "input"
    if fmt == _WEBM and suffix in (".webm", ".weba") and (video is None or video in _WEBM_VIDEO) and audio in _WEBM_AUDIO:
        return "input"
    if video is None and audio in _AUDIO_FILES.get(fmt, ()):
        return "input"
    playable_video = video is None or video in _MP4_VIDEO
    if playable_video and audio in _MP4_AUDIO:
        return "remux"
    return "audio"


def playback_suffix(plan: Plan) -> str:
    return {"remux": ".mp4", "audio": ".m4a"}.get(plan, "")


def media_type_for(path: Path, *, has_video: bool) -> str:
    kind = MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
    if not has_video and kind.startswith("video/"):
        kind = "audio/" + kind.split("/", 1)[1]
    return kind


def remux_args(src: Path, dst: Path) -> list[str]:
    """The first picture and sound of ``src`` copied into an MP4 that starts playing at once."""
    return [
        "-i", file_url(src),
        "-map", "0:v:0?", "-map", "0:a:0", "-sn", "-dn",
        "-c", "copy", "-movflags", "+faststart", "-f", "mp4", file_url(dst),
    ]  # fmt: skip


def audio_args(pcm: Path, dst: Path) -> list[str]:
    """The extracted 16 kHz mono PCM as a small AAC M4A."""
    return [
        "-f", "s16le", "-ar", "16000", "-ac", "1", "-format_whitelist", "s16le", "-i", file_url(pcm),
        "-c:a", "aac", "-b:a", "48k", "-movflags", "+faststart", "-f", "mp4", file_url(dst),
    ]  # fmt: skip
