"""Which ffmpeg demuxers and protocols may open an upload.

An upload is an untrusted program for libavformat: left to probe freely, a
text file that says ``#EXTM3U`` is read as an HLS playlist and its entries
(``/srv/altyazi/jobs/<other job>/input.ts``) are opened and decoded, and the
same holds for ``ffconcat`` scripts, SDP files (network sockets), image
sequence patterns, VobSub indexes and DASH/IMF manifests. So every input
altyazi hands to PyAV, ffprobe or ffmpeg is opened with

- ``format_whitelist``: only demuxers of self-contained audio and video
  containers, none of which opens another file or URL (MP4's external data
  references stay off, ffmpeg's default ``enable_drefs=0``);
- ``protocol_whitelist=file``: the input itself is a local file, and nothing
  it names can reach the network or another protocol.

A whitelist rather than a forced ``-f``: PyAV ships its own libavformat,
newer than the system ffmpeg, and the two may name or score a format
differently; whichever demuxer either of them picks must be on this list,
which holds under both.
"""

from __future__ import annotations

import re

# libavformat demuxer names (``ffmpeg -demuxers``). A demuxer registered under
# several names ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm") is allowed when
# any of its names is listed.
MEDIA_DEMUXERS: tuple[str, ...] = (
    "mov",  # MP4, MOV, M4A, M4V, 3GP, 3G2
    "matroska",  # MKV, MKA, WebM
    "avi",
    "mpegts",  # .ts, .m2ts, .mts
    "mpeg",  # MPEG program streams: .mpg, .vob
    "flv",
    "asf",  # WMV, WMA
    "mp3",
    "aac",  # raw ADTS AAC
    "ac3",
    "eac3",
    "wav",
    "w64",
    "aiff",
    "caf",
    "au",
    "flac",
    "ogg",  # Ogg Vorbis, Opus, FLAC, Theora
    "wv",  # WavPack
    "amr",
    "amrnb",
    "amrwb",
)

FORMAT_WHITELIST = ",".join(MEDIA_DEMUXERS)
PROTOCOL_WHITELIST = "file"

# What people call them, for the README and error messages.
ACCEPTED_NAMES = (
    "MP4/MOV/M4A/3GP, Matroska/WebM, AVI, MPEG-TS, MPEG-PS, FLV, ASF/WMV/WMA, MP3, AAC, AC-3, "
    "WAV, W64, AIFF, CAF, AU, FLAC, Ogg/Opus, WavPack, AMR"
)

_REFUSED = re.compile(r"\[([A-Za-z0-9_,]+) @ [^\]]*\] Format not on whitelist")


def whitelist_args(formats: str = FORMAT_WHITELIST) -> list[str]:
    """ffmpeg/ffprobe input options that restrict the next ``-i`` to ``formats`` and local files."""
    return ["-format_whitelist", formats, "-protocol_whitelist", PROTOCOL_WHITELIST]


def pyav_options() -> dict[str, str]:
    """The same restriction as ``container_options`` for :func:`av.open`."""
    return {"format_whitelist": FORMAT_WHITELIST, "protocol_whitelist": PROTOCOL_WHITELIST}


def is_allowed(format_name: str) -> bool:
    """Whether a demuxer name as ffprobe/PyAV report it ("mov,mp4,m4a,...") is on the list."""
    return any(name in MEDIA_DEMUXERS for name in format_name.split(","))


def refused_format(log_text: str) -> str | None:
    """The demuxer libavformat refused for not being on the list, from its log; None if none was."""
    match = _REFUSED.search(log_text)
    return match.group(1).split(",")[0] if match else None


def with_whitelists(args: list[str]) -> list[str]:
    """``args`` of one ffmpeg command with the whitelists before every ``-i`` that lacks its own.

    An input whose options already name a ``-format_whitelist`` (altyazi's own
    subtitle file, read as ``srt``) keeps it; every other input gets the media
    list. So a command line built anywhere in the code base cannot open an
    upload without them.
    """
    out: list[str] = []
    since_input: list[str] = []  # the options given for the input being built
    for arg in args:
        if arg == "-i":
            if "-format_whitelist" not in since_input:
                out += ["-format_whitelist", FORMAT_WHITELIST]
            if "-protocol_whitelist" not in since_input:
                out += ["-protocol_whitelist", PROTOCOL_WHITELIST]
            since_input = []
        else:
            since_input.append(arg)
        out.append(arg)
    return out
