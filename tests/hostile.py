"""Hostile uploads made on the spot, and a watch that tells whether a file was opened.

Not a test module. Each hostile file is a playlist, script or manifest that
points libavformat at *target* files: a speech clip that says a secret, and a
copy of a passwd file. :class:`OpenWatch` uses inotify, so it sees an open by
any process (the server's PyAV thread, an ffprobe or ffmpeg child), not just
by this one.
"""

from __future__ import annotations

import ctypes
import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.media import speak

SECRET_WORDS = "the secret password is banana"

_IN_ACCESS = 0x001
_IN_OPEN = 0x020


class OpenWatch:
    """Records every open or read of the given files, by any process, until closed."""

    def __init__(self, *paths: Path) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._paths: dict[int, str] = {}
        for path in paths:
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), _IN_OPEN | _IN_ACCESS)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch failed for {path}")
            self._paths[wd] = str(path)
        self.seen: list[str] = []

    def opened(self) -> list[str]:
        """The watched files opened or read since the watch began (each once)."""
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            offset = 0
            while offset < len(data):
                wd, _mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                offset += 16 + length
                name = self._paths.get(wd)
                if name is not None and name not in self.seen:
                    self.seen.append(name)
        return list(self.seen)

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> OpenWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Hostile:
    targets: list[Path]  # what the hostile files point at; none may ever be opened
    files: dict[str, tuple[Path, str]]  # case -> (file, the name it is uploaded under)


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def make_hostile(folder: Path) -> Hostile:
    """The targets (in ``folder/secret``) and one hostile upload per way of naming them."""
    secret_dir = folder / "secret"
    secret_dir.mkdir(parents=True, exist_ok=True)
    wav = speak(SECRET_WORDS, secret_dir / "said.wav")
    ts = secret_dir / "input.ts"  # as another job's upload would be stored
    _ffmpeg("-i", str(wav), "-c:a", "mp2", "-f", "mpegts", str(ts))
    mp3 = secret_dir / "input.mp3"
    _ffmpeg("-i", str(wav), "-c:a", "libmp3lame", str(mp3))
    passwd = secret_dir / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    png = folder / "frame.png"
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x64", "-frames:v", "1", "-c:v", "png", "-f", "image2", str(png))

    def text(name: str, body: str) -> Path:
        path = folder / name
        path.write_text(body)
        return path

    hls = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
    hls_body = hls + f"#EXTINF:5.0,\n{ts}\n#EXTINF:5.0,\n{mp3}\n#EXT-X-ENDLIST\n"
    files = {
        # The case: a playlist naming local .ts/.mp3 files, under its own name and as .mp4.
        "hls_m3u8": (text("playlist.m3u8", hls_body), "playlist.m3u8"),
        "hls_as_mp4": (text("hls.mp4", hls_body), "talk.mp4"),
        "hls_file_urls": (text("urls.m3u8", hls + f"#EXTINF:5.0,\nfile:{ts}\n#EXT-X-ENDLIST\n"), "urls.m3u8"),
        "hls_passwd": (text("passwd.m3u8", hls + f"#EXTINF:5.0,\n{passwd}\n#EXT-X-ENDLIST\n"), "passwd.m3u8"),
        "ffconcat": (text("list.ffconcat", f"ffconcat version 1.0\nfile '{ts}'\nfile '{passwd}'\n"), "list.mp3"),
        "sdp": (
            text("stream.sdp", "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 41234 RTP/AVP 0\r\n"),
            "stream.sdp",
        ),
        "dash_mpd": (
            text(
                "manifest.mpd",
                '<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
                'mediaPresentationDuration="PT5S" minBufferTime="PT1S" profiles="urn:mpeg:dash:profile:isoff-on-demand:2011">\n'
                f'<Period><AdaptationSet mimeType="audio/mp2t"><Representation id="a" bandwidth="64000">'
                f"<BaseURL>file://{ts}</BaseURL></Representation></AdaptationSet></Period></MPD>\n",
            ),
            "manifest.mpd",
        ),
        "vobsub_idx": (text("movie.idx", f"# VobSub index file, v7 (do not modify this line!)\nsize: 720x480\nid: en, index: 0\ntimestamp: 00:00:00:000, filepos: 000000000\n# {passwd}\n"), "movie.idx"),
        "image2_pattern": (png, "frame%03d.png"),
        "image2_glob": (png, "frame*.png"),
    }
    return Hostile(targets=[ts, mp3, passwd], files=files)


def lying_mkv(dest: Path, *, seconds: float, claimed_s: float) -> Path:
    """A Matroska tone of ``seconds`` whose header Duration claims ``claimed_s``.

    ffmpeg writes the segment's Duration as an 8-byte float (element 0x4489,
    size 0x88) in milliseconds; it is overwritten in place, so the rest of the
    file stays valid and decodes to the end.
    """
    _ffmpeg("-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}:sample_rate=16000", "-c:a", "libopus", str(dest))
    data = bytearray(dest.read_bytes())
    at = data.find(b"\x44\x89\x88")
    if at < 0:
        raise RuntimeError("no 8-byte Matroska Duration element to patch")
    data[at + 3 : at + 11] = struct.pack(">d", claimed_s * 1000)
    dest.write_bytes(bytes(data))
    return dest


_CONTAINER_BOXES = {b"moov", b"trak", b"mdia", b"minf", b"dinf"}


def _alias_dref_entry(path: str, nlvl_from: int, nlvl_to: int) -> bytes:
    """A QuickTime ``alis`` data reference: the track's samples live in the file at ``path``."""
    name = path.rsplit("/", 1)[-1].encode()[:63]
    record = b"\0" * 10  # creator, record size, version, alias kind
    record += bytes([4]) + b"disk".ljust(27, b"\0")  # volume name
    record += b"\0" * 12  # created, fs type, disk type, parent dir id
    record += bytes([len(name)]) + name.ljust(63, b"\0")  # file name
    record += b"\0" * 16  # file id, created, file type, creator
    record += struct.pack(">hh", nlvl_from, nlvl_to)
    record += b"\0" * 16  # volume attributes, fs id, reserved
    abs_path = path.encode()
    record += struct.pack(">hH", 2, len(abs_path)) + abs_path + (b"\0" if len(abs_path) % 2 else b"")  # type 2: absolute path
    record += struct.pack(">hH", -1, 0)  # end of the alias record
    body = b"alis" + b"\0\0\0\0" + record  # type, version and flags (0: not self-contained)
    return struct.pack(">I", 4 + len(body)) + body


def _rebuild(data: bytes, new_dref: bytes) -> bytes:
    out = bytearray()
    at = 0
    while at + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, at)
        body = data[at + 8 : at + size]
        if kind in _CONTAINER_BOXES:
            body = _rebuild(body, new_dref)
        elif kind == b"dref":
            body = b"\0\0\0\0" + struct.pack(">I", 1) + new_dref  # version/flags, one entry
        out += struct.pack(">I", 8 + len(body)) + kind + body
        at += size
    return bytes(out)


def external_data_mp4(src: Path, dest: Path, *, target: str, nlvl_from: int, nlvl_to: int) -> Path:
    """``src`` (an AAC .m4a with its moov at the end) rewritten so that its track's
    samples are in another file, ``target`` as a Mac alias (``nlvl_*``: how many
    folders up from this file and down to the target). Its own sample bytes are
    zeroed, so only the target could give them sound; the offsets match a target
    that is a copy of ``src``."""
    data = src.read_bytes()
    out = bytearray()
    at = 0
    while at + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, at)
        box = data[at : at + size]
        if kind == b"mdat":
            box = box[:8] + b"\0" * (size - 8)
        elif kind == b"moov":
            box = _rebuild(box, _alias_dref_entry(target, nlvl_from, nlvl_to))
        out += box
        at += size
    dest.write_bytes(bytes(out))
    return dest
