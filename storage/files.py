"""The per-job folders on disk, atomic writes, and safe names.

Everything here is blocking file I/O; async callers run it in a worker
thread (anyio.to_thread.run_sync) when it may touch much data (remove,
size_bytes, large atomic writes).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import threading
import unicodedata
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# ------------------------------------------------------------------ atomic files


def _fsync_dir(path: Path) -> None:
    # The rename lives in the directory entry; without this fsync a power cut
    # can bring back the old name even though the new data was synced.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: after a crash it holds the old or the new bytes, never half.

    Temp file in the same folder (os.replace is atomic only within one file
    system), written, fsynced, renamed over the target, folder fsynced. On any
    failure the temp file is removed and the old file is untouched. The file is
    created 0600: job files are private to the server.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """UTF-8 JSON (not ASCII-escaped: transcripts are mostly non-English text)."""
    atomic_write_bytes(path, json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def free_bytes(path: Path) -> int:
    """Bytes available at `path` (its file system)."""
    return shutil.disk_usage(path).free


# ------------------------------------------------------------------ names

# Characters that break a name somewhere it travels: path separators, Windows'
# reserved punctuation, and quotes that would need escaping in Content-Disposition.
_BAD_CHARS = re.compile(r'[<>:"/\\|?*\x00]')
# Unicode categories dropped outright: controls (Cc), format characters (Cf,
# which include the right-to-left override behind "invoice\u202egpj.exe"),
# lone surrogates (Cs, from undecodable bytes) and unassigned code points (Cn).
_DROP_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Cn"})
# Windows refuses these as file names whatever the extension; downloads land there.
_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"COM{i}" for i in range(1, 10)} | {f"LPT{i}" for i in range(1, 10)}
)
_EXT = re.compile(r"\.[^\W_]{1,10}$")  # a short alphanumeric extension, unicode allowed
# ext4, XFS and NTFS cap a name at 255 bytes / UTF-16 units; stay under both.
_MAX_NAME_BYTES = 240


def safe_filename(name: str, *, max_len: int = 120, default: str = "upload") -> str:
    """A display and download name that cannot name another path.

    Keeps unicode letters and the extension; drops folders ("../../etc/passwd"
    gives "passwd", "C:\\x\\a.mp4" gives "a.mp4"), control and format
    characters, leading and trailing dots and spaces; caps the length in
    characters and in UTF-8 bytes. Falls back to `default` when nothing is left.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    name = unicodedata.normalize("NFC", name)
    # Browsers on Windows send the full client path; both separators count.
    name = re.split(r"[/\\]", name)[-1]
    # tabs and newlines separate words, so they become spaces rather than vanish
    name = "".join(" " if c.isspace() else c for c in name)
    name = "".join(c for c in name if unicodedata.category(c) not in _DROP_CATEGORIES)
    name = _BAD_CHARS.sub("_", name)
    name = " ".join(name.split())  # runs of spaces become one
    # Leading dots make hidden files (and "." / ".."); Windows drops trailing ones.
    name = name.strip(" .")
    if not name:
        return default
    stem, ext = name, ""
    m = _EXT.search(name)
    if m and m.start() > 0:
        stem, ext = name[: m.start()], m.group()
    if stem.split(".")[0].upper() in _WINDOWS_RESERVED:
        stem = "_" + stem
    stem = _truncate(stem, max_len - len(ext), _MAX_NAME_BYTES - len(ext.encode("utf-8")))
    if not stem:  # no room for any stem: keep what fits of the whole name
        return _truncate(name, max_len, _MAX_NAME_BYTES).strip(" .") or default
    return stem + ext


def _truncate(text: str, max_chars: int, max_bytes: int) -> str:
    text = text[: max(max_chars, 0)]
    while len(text.encode("utf-8")) > max_bytes:
        text = text[:-1]
    return text.rstrip(" .")


# ------------------------------------------------------------------ job folders

# Job and export ids are made by the server (secrets.token_urlsafe); anything
# else reaching here is a bug or an attack, so it is refused, not cleaned.
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SUFFIX_CHARS = re.compile(r"[^a-z0-9]")
_INPUT_NAME = re.compile(r"input(\.[a-z0-9]{1,10})?")


def _check_id(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ValueError(f"invalid {kind} id {value!r}: expected 1-64 of [A-Za-z0-9_-]")
    return value


def _clean_suffix(suffix: str) -> str:
    """".MP4" → ".mp4"; anything not [a-z0-9] dropped; at most 10 chars; "" when none left."""
    cleaned = _SUFFIX_CHARS.sub("", suffix.lower())[:10]
    return f".{cleaned}" if cleaned else ""


def walk_stats(root: Path) -> Iterator[tuple[bool, os.stat_result]]:
    """(is_dir, lstat) of ``root`` and everything below it; symlinks are not
    followed, and entries deleted during the walk are skipped, not errors."""
    try:
        yield True, root.stat(follow_symlinks=False)
    except FileNotFoundError:
        return
    stack = [root]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for e in entries:
            try:
                is_dir = e.is_dir(follow_symlinks=False)
                yield is_dir, e.stat(follow_symlinks=False)
            except FileNotFoundError:  # deleted while we walked
                continue
            if is_dir:
                stack.append(Path(e.path))


class JobFiles:
    """Paths of a job's files under data_dir/jobs/<job_id>/, and their life.

    Layout of one job folder:
        input.<ext>              the upload as received
        audio.pcm                16 kHz mono PCM from ffmpeg
        transcript.json          the original transcript
        transcript.edited.json   the user's corrections, when any
        waveform.json            peaks of the audio for the page's waveform
        playback.<ext>           a browser-playable copy, when the input is not one
        exports/<export_id>.<ext>
        work/                    scratch for renders
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / "jobs"
        self._pins: dict[str, int] = {}
        # Downloads may pin from worker threads as well as from the loop.
        self._pins_lock = threading.Lock()

    def job_dir(self, job_id: str) -> Path:
        return self.root / _check_id("job", job_id)

    def create(self, job_id: str) -> Path:
        """Make the job folder (and data_dir/jobs); fine if it exists."""
        d = self.job_dir(job_id)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def input_path(self, job_id: str, suffix: str) -> Path:
        return self.job_dir(job_id) / f"input{_clean_suffix(suffix)}"

    def find_input(self, job_id: str) -> Path | None:
        """The upload, whatever its suffix; None when there is none."""
        try:
            entries = list(os.scandir(self.job_dir(job_id)))
        except FileNotFoundError:
            return None
        for entry in sorted(entries, key=lambda e: e.name):
            # exact names only: temp files of an upload in progress don't count
            if _INPUT_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                return Path(entry.path)
        return None

    def audio_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "audio.pcm"

    def transcript_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "transcript.json"

    def edited_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "transcript.edited.json"

    def waveform_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "waveform.json"

    def playback_path(self, job_id: str, ext: str) -> Path:
        """The browser-playable copy made when the input is not one (``playback.mp4``, ``.m4a``)."""
        clean = _clean_suffix(ext)
        if not clean:
            raise ValueError(f"invalid playback extension {ext!r}")
        return self.job_dir(job_id) / f"playback{clean}"

    def export_path(self, job_id: str, export_id: str, ext: str) -> Path:
        """job_dir/exports/<export_id>.<ext>; creates the exports folder."""
        clean = _clean_suffix(ext)
        if not clean:
            raise ValueError(f"invalid export extension {ext!r}")
        d = self.job_dir(job_id) / "exports"
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{_check_id('export', export_id)}{clean}"

    def work_dir(self, job_id: str) -> Path:
        d = self.job_dir(job_id) / "work"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def job_ids(self) -> list[str]:
        """Ids of every job folder on disk (to find folders with no row)."""
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        return sorted(e.name for e in entries if _ID.fullmatch(e.name) and e.is_dir(follow_symlinks=False))

    def remove(self, job_id: str) -> None:
        """Delete the job folder and everything in it; missing is fine."""
        d = self.job_dir(job_id)
        # The id check already keeps us inside; this catches a job folder that
        # was replaced by a symlink pointing elsewhere.
        if d.is_symlink():
            d.unlink()
            return
        root = self.root.resolve()
        target = d.resolve()
        if target.parent != root:
            raise ValueError(f"refusing to remove {target}: not directly under {root}")
        if sys.version_info >= (3, 12):
            shutil.rmtree(target, onexc=_ignore_missing_exc)
        else:
            shutil.rmtree(target, onerror=_ignore_missing)

    @contextmanager
    def pin(self, job_id: str) -> Iterator[None]:
        """Hold while reading a job's files; retention skips pinned jobs."""
        _check_id("job", job_id)
        with self._pins_lock:
            self._pins[job_id] = self._pins.get(job_id, 0) + 1
        try:
            yield
        finally:
            with self._pins_lock:
                left = self._pins[job_id] - 1
                if left:
                    self._pins[job_id] = left
                else:
                    del self._pins[job_id]

    def is_pinned(self, job_id: str) -> bool:
        with self._pins_lock:
            return job_id in self._pins

    def size_bytes(self, job_id: str) -> int:
        """Bytes used by the job's files (symlinks not followed); 0 when missing."""
        return sum(st.st_size for is_dir, st in walk_stats(self.job_dir(job_id)) if not is_dir)

    # The folders are the storage: nothing to copy anywhere (see storage.s3_files).

    async def push(self, job_id: str, path: Path) -> None:
        return None

    async def pull(self, job_id: str, path: Path) -> bool:
        return path.exists()  # noqa: ASYNC240 - one stat

    async def pull_input(self, job_id: str) -> Path | None:
        return self.find_input(job_id)

    async def remote_size(self, job_id: str, path: Path) -> int | None:
        return None  # every download is a local file

    async def read_stream(self, job_id: str, path: Path, first: int, last: int) -> AsyncIterator[bytes]:
        raise FileNotFoundError(path)  # remote_size() never sends a download here
        yield b""  # pragma: no cover - makes this an async generator


def _ignore_missing_exc(func: Any, path: str, exc: BaseException) -> None:
    # Something else (a cancelled job's cleanup, a second sweep) may delete
    # parts of the tree while rmtree walks it; that is not an error.
    if not isinstance(exc, FileNotFoundError):
        raise exc


def _ignore_missing(func: Any, path: str, exc_info: Any) -> None:
    _ignore_missing_exc(func, path, exc_info[1])
