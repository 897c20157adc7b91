"""A bounded pool of ffmpeg/ffprobe subprocesses shared by probing, audio extraction and exports.

One :class:`anyio.CapacityLimiter` bounds every process altyazi starts, so a burst of
uploads and exports queues here instead of forking a hundred encoders. Each process
is run the way trio/anyio run them: no shell, both pipes drained at once (a full
stderr pipe would otherwise stall ffmpeg forever), and on cancellation or timeout
SIGTERM, a grace period, then SIGKILL, with the reap shielded so no zombie is left
behind whatever the caller's task does next.

Every input is opened with the demuxer and protocol whitelists of
:mod:`app.media.demuxers`, and the slots are handed out by :mod:`app.media.ffmpeg_slots`:
reading uploads before rendering exports, owners in turn.

Every ffmpeg run gets ``-progress pipe:1``, even when nobody listens: the steady
trickle of progress blocks means ffmpeg dies of SIGPIPE if the server itself dies,
instead of running on as an orphan for an hour.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import anyio

from app.media.demuxers import refused_format, whitelist_args, with_whitelists
from app.media.ffmpeg_slots import FairSlots, Kind
from app.media.probe import MediaError, MediaInfo, not_allowed_format, not_media, parse_probe, read_headers, too_long_message

log = logging.getLogger("altyazi.ffmpeg")

T = TypeVar("T")

_STDERR_TAIL_BYTES = 8192
_PROBE_TIMEOUT_S = 60.0
_MEASURE_TIMEOUT_S = 600.0
# Audio is decoded up to this far past storage.max_duration_s, and refused when
# it runs more than half of it past: headers and decoders disagree by a few
# frames on honest files, never by half a second.
LIMIT_SLACK_S = 1.0


class FfmpegError(Exception):
    """ffmpeg or ffprobe failed; ``message`` is a sentence for the user, ``stderr_tail`` is for the log."""

    code = "ffmpeg_failed"
    status = 500

    def __init__(self, message: str, *, stderr_tail: str = "", code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.stderr_tail = stderr_tail
        if code is not None:
            self.code = code


class FfmpegTimeout(FfmpegError):
    code = "ffmpeg_timeout"
    status = 504


class DiskFull(FfmpegError):
    code = "disk_full"
    status = 507


class TooLong(FfmpegError):
    """The decoded audio runs past storage.max_duration_s, whatever the header said."""

    code = "too_long"
    status = 413


@dataclass
class RunResult:
    returncode: int
    stderr_tail: str
    elapsed_s: float


def file_url(path: str | Path) -> str:
    """An absolute ``file:`` URL for ffmpeg's command line.

    The prefix stops ffmpeg from reading a name such as ``-x.mp4`` as an option or
    ``rtmp:x.mp4`` as a protocol; the path stays as is (ffmpeg does not percent-decode it).
    """
    return "file:" + os.path.abspath(os.fspath(path))


def out_time_s(block: dict[str, str]) -> float | None:
    """The output position of one ``-progress`` block, in seconds (None before the first frame)."""
    for key in ("out_time_us", "out_time_ms"):  # ffmpeg's out_time_ms is in microseconds too
        raw = block.get(key, "")
        if raw.lstrip("-").isdigit():
            return max(int(raw), 0) / 1_000_000
    raw = block.get("out_time", "")
    try:
        h, m, s = raw.split(":")
        return max(int(h) * 3600 + int(m) * 60 + float(s), 0.0)
    except ValueError:
        return None  # "N/A" until the first frame is written


def fraction_reporter(duration_s: float | None, on_progress: Callable[[float], None]) -> Callable[[dict[str, str]], None]:
    """Turn progress blocks into a non-decreasing 0..1 fraction of ``duration_s``."""
    last = 0.0

    def report(block: dict[str, str]) -> None:
        nonlocal last
        if block.get("progress") == "end":
            frac = 1.0
        else:
            pos = out_time_s(block)
            if pos is None or not duration_s or duration_s <= 0:
                return
            # Stop just short of 1: only the end block means the output is complete.
            frac = min(pos / duration_s, 0.999)
        if frac > last or (frac == 1.0 and last < 1.0):
            last = frac
            on_progress(frac)

    return report


def _summarise(stderr_tail: str) -> str:
    lines = [ln.strip() for ln in stderr_tail.splitlines() if ln.strip()]
    if not lines:
        return "no error message"
    line = lines[-1]
    # "[mov,mp4 @ 0x55...] moov atom not found": the bracket is noise for a person.
    if line.startswith("[") and "] " in line:
        line = line.split("] ", 1)[1]
    return line[:300]


async def _uncancellable(awaitable: Awaitable[T]) -> T:
    """Run ``awaitable`` to completion even if the calling task is cancelled meanwhile.

    asyncio.shield alone returns at the first cancel; this keeps waiting and then
    re-raises the cancellation, like a trio/anyio shielded cancel scope.
    """
    task = asyncio.ensure_future(awaitable)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


class FfmpegPool:
    def __init__(
        self,
        *,
        ffmpeg: str = "ffmpeg",
        ffprobe: str = "ffprobe",
        max_processes: int = 2,
        timeout_s: float = 3600,
        threads: int = 0,
        kill_grace_s: float = 3.0,
        render_processes: int = 0,
        max_audio_s: float | None = None,
    ) -> None:
        """``render_processes``: most exports rendering at once (0: all slots but one).
        ``max_audio_s``: longest audio that extraction and measuring decode (None: no limit)."""
        if max_processes < 1:
            raise ValueError(f"max_processes must be >= 1, got {max_processes!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads!r}")
        if not 0 <= render_processes <= max_processes:
            raise ValueError(f"render_processes must be from 0 to max_processes, got {render_processes!r}")
        self.ffmpeg = ffmpeg
        self.ffprobe = ffprobe
        self.max_processes = max_processes
        self.timeout_s = timeout_s
        self.threads = threads
        self.kill_grace_s = kill_grace_s
        self.max_audio_s = max_audio_s
        self._slots = FairSlots(max_processes, render_slots=render_processes or None)
        # ffprobe reads headers in milliseconds and answers an upload that is
        # waiting for its 202: it must not queue behind long exports, so it has
        # slots of its own.
        self._probe_limiter = anyio.CapacityLimiter(max(4, max_processes))
        self._probe_threads = anyio.CapacityLimiter(8)

    @property
    def busy(self) -> int:
        """Processes running now."""
        return self._slots.busy

    @property
    def waiting(self) -> int:
        """Callers queued for a process slot."""
        return self._slots.waiting

    # -- running ---------------------------------------------------------------

    def _ffmpeg_argv(self, args: list[str]) -> list[str]:
        args = with_whitelists(args)
        head = [self.ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-progress", "pipe:1", "-nostats"]
        if self.threads <= 0 or "-threads" in args:
            return head + list(args)
        n = str(self.threads)
        # -threads is a per-codec option: before each -i it caps the decoders, before the
        # last argument (the output, by ffmpeg convention) the encoder; -filter_threads caps
        # the filter graph. Together they keep one process near `threads` cores.
        out: list[str] = ["-filter_threads", n]
        for arg in args[:-1]:
            if arg == "-i":
                out += ["-threads", n]
            out.append(arg)
        out += ["-threads", n, *args[-1:]]
        return head + out

    async def run(
        self,
        args: list[str],
        *,
        timeout_s: float | None = None,
        on_progress: Callable[[dict[str, str]], None] | None = None,
        kind: Kind = "read",
        owner: str = "",
    ) -> RunResult:
        """Run ``ffmpeg <args>`` in a pool slot; raise :class:`FfmpegError` unless it exits 0.

        ``kind`` and ``owner`` place it in the queue: reads (extraction, measuring)
        before renders, owners in turn (:mod:`app.media.ffmpeg_slots`).

        ``on_progress`` gets each ``-progress`` key=value block as a dict, on the loop.
        Cancelling the caller kills the process (TERM, grace, KILL) and re-raises.
        """
        block: dict[str, str] = {}

        def on_line(line: bytes) -> None:
            key, sep, value = line.decode("utf-8", "replace").strip().partition("=")
            if not sep:
                return
            block[key] = value
            if key == "progress":
                done = dict(block)
                block.clear()
                if on_progress is not None:
                    on_progress(done)

        result, _ = await self._exec(
            self._ffmpeg_argv(args), timeout_s=timeout_s, on_line=on_line, what="ffmpeg", kind=kind, owner=owner
        )
        return result

    async def _exec(
        self,
        argv: list[str],
        *,
        timeout_s: float | None,
        on_line: Callable[[bytes], None] | None,
        what: str,
        limiter: anyio.CapacityLimiter | None = None,
        kind: Kind = "read",
        owner: str = "",
    ) -> tuple[RunResult, bytes]:
        limit = self.timeout_s if timeout_s is None else timeout_s
        if limiter is None:
            await self._slots.acquire(kind, owner)
            try:
                return await self._exec_in_slot(argv, limit, on_line, what)
            finally:
                self._slots.release(kind)
        borrower = object()  # one token per call, so one task may run several processes in turn
        await limiter.acquire_on_behalf_of(borrower)
        try:
            return await self._exec_in_slot(argv, limit, on_line, what)
        finally:
            limiter.release_on_behalf_of(borrower)

    async def _exec_in_slot(
        self, argv: list[str], limit: float, on_line: Callable[[bytes], None] | None, what: str
    ) -> tuple[RunResult, bytes]:
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                # Its own session: a Ctrl-C meant for the server must not kill exports
                # mid-file; the server stops them itself, in order.
                start_new_session=True,
            )
        except OSError as exc:  # missing binary, not executable
            raise FfmpegError(
                f"{argv[0]} could not be started ({exc.strerror or exc}); install ffmpeg or set ffmpeg.path in the config.",
                code="ffmpeg_missing",
            ) from exc

        tail: collections.deque[bytes] = collections.deque()
        tail_size = 0
        stdout = bytearray()

        async def pump_stderr() -> None:
            nonlocal tail_size
            assert proc.stderr is not None
            while chunk := await proc.stderr.read(4096):
                tail.append(chunk)
                tail_size += len(chunk)
                while tail_size - len(tail[0]) >= _STDERR_TAIL_BYTES:
                    tail_size -= len(tail.popleft())

        async def pump_stdout() -> None:
            assert proc.stdout is not None
            if on_line is None:
                while chunk := await proc.stdout.read(65536):
                    stdout.extend(chunk)
            else:
                async for line in proc.stdout:
                    on_line(line)

        def stderr_tail() -> str:
            return b"".join(tail)[-_STDERR_TAIL_BYTES:].decode("utf-8", "replace")

        pumps = [asyncio.ensure_future(pump_stdout()), asyncio.ensure_future(pump_stderr())]

        async def communicate() -> int:
            await asyncio.gather(*pumps)  # EOF on both pipes first, so no output is lost
            return await proc.wait()

        try:
            try:
                returncode = await asyncio.wait_for(communicate(), limit)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before 3.11
                await _uncancellable(self._terminate(proc))
                raise FfmpegTimeout(
                    f"{what} ran longer than its limit of {limit:g} s and was stopped; "
                    "try a shorter file or ask the operator to raise ffmpeg.timeout_s.",
                    stderr_tail=stderr_tail(),
                ) from None
            except BaseException:
                await _uncancellable(self._terminate(proc))
                raise
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

        result = RunResult(returncode=returncode, stderr_tail=stderr_tail(), elapsed_s=time.monotonic() - started)
        if returncode != 0:
            raise self._failure(what, result)
        return result, bytes(stdout)

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(proc.wait(), self.kill_grace_s)
            except asyncio.TimeoutError:
                log.warning("ffmpeg pid %s ignored SIGTERM for %.1f s; killing it", proc.pid, self.kill_grace_s)
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
        await proc.wait()  # reaps: no zombie, whatever happened above

    @staticmethod
    def _failure(what: str, result: RunResult) -> FfmpegError:
        summary = _summarise(result.stderr_tail)
        if "No space left on device" in result.stderr_tail:
            return DiskFull(
                "The server ran out of disk space while writing the file; try again later or ask the operator to free space.",
                stderr_tail=result.stderr_tail,
            )
        if result.returncode < 0:
            return FfmpegError(
                f"{what} was killed by signal {-result.returncode} (the server may be short of memory); try again later.",
                stderr_tail=result.stderr_tail,
            )
        return FfmpegError(
            f"{what} failed (exit status {result.returncode}): {summary}. "
            "The file may be damaged or use an unsupported codec; re-encode it or try another copy.",
            stderr_tail=result.stderr_tail,
        )

    # -- probing and extraction -------------------------------------------------

    async def probe(self, path: str | Path) -> MediaInfo:
        """Describe a media file; :class:`MediaError` (415) if ffprobe cannot read it."""
        if os.stat(path).st_size == 0:
            raise MediaError(415, "empty_media", "The file is empty (0 bytes); upload the whole file again.")
        try:
            # In-process first (milliseconds, no process to start); ffprobe is the
            # second opinion for whatever PyAV cannot open.
            info = parse_probe(await anyio.to_thread.run_sync(read_headers, str(path), limiter=self._probe_threads))
        except Exception as exc:
            log.debug("PyAV could not read %s (%s); asking ffprobe", path, exc)
        else:
            if info.has_audio and info.duration_s <= 0:
                measured = await self._measure_duration(path)
                if measured:
                    info = replace(info, duration_s=measured)
            return info
        argv = [
            self.ffprobe, "-v", "error", "-hide_banner", "-print_format", "json", "-show_format", "-show_streams",
            *whitelist_args(), file_url(path),
        ]  # fmt: skip
        try:
            _, out = await self._exec(
                argv, timeout_s=min(self.timeout_s, _PROBE_TIMEOUT_S), on_line=None, what="ffprobe", limiter=self._probe_limiter
            )
        except FfmpegTimeout as exc:
            raise not_media("reading its headers took too long") from exc
        except FfmpegError as exc:
            if exc.code == "ffmpeg_missing":
                raise
            log.info("ffprobe rejected %s: %s", path, _summarise(exc.stderr_tail))
            refused = refused_format(exc.stderr_tail)
            raise (not_allowed_format(refused) if refused else not_media()) from exc
        try:
            info = parse_probe(json.loads(out or b"{}"))
        except ValueError as exc:
            raise not_media() from exc
        if info.has_audio and info.duration_s <= 0:
            # Browser recordings (MediaRecorder WebM) carry no duration in their headers;
            # decoding the audio once is cheap and gives the real length.
            measured = await self._measure_duration(path)
            if measured:
                info = replace(info, duration_s=measured)
        return info

    async def _measure_duration(self, path: str | Path) -> float | None:
        last: list[float] = []

        def on_block(block: dict[str, str]) -> None:
            pos = out_time_s(block)
            if pos is not None:
                last.append(pos)

        # Past the limit the length no longer matters: stop there instead of
        # decoding hours of audio that will be refused anyway.
        cap = ["-t", f"{self.max_audio_s + LIMIT_SLACK_S:g}"] if self.max_audio_s else []
        try:
            await self.run(
                ["-i", file_url(path), "-map", "0:a:0", *cap, "-f", "null", "-"],
                timeout_s=min(self.timeout_s, _MEASURE_TIMEOUT_S),
                on_progress=on_block,
            )
        except FfmpegError as exc:
            log.info("could not measure the duration of %s: %s", path, exc.message)
            return None
        return last[-1] if last else None

    async def extract_audio(
        self,
        src: str | Path,
        dst_pcm: str | Path,
        *,
        duration_s: float | None = None,
        on_progress: Callable[[float], None] | None = None,
    ) -> None:
        """Write the first audio stream of ``src`` as 16 kHz mono s16le PCM to ``dst_pcm``.

        Written under a ``.part`` name and renamed, so ``dst_pcm`` is either complete
        or absent; the partial file is removed on any failure or cancellation.
        With ``max_audio_s`` set, decoding stops just past that limit and
        :class:`TooLong` is raised: a header may claim 3 s over hours of audio.
        """
        dst = Path(dst_pcm)
        tmp = dst.with_name(dst.name + ".part")
        args = [
            "-i", file_url(src),
            "-map", "0:a:0", "-vn", "-sn", "-dn",
            "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le",
        ]  # fmt: skip
        if self.max_audio_s:
            args += ["-t", f"{self.max_audio_s + LIMIT_SLACK_S:g}"]
        args += ["-f", "s16le", file_url(tmp)]
        report = fraction_reporter(duration_s, on_progress) if on_progress is not None else None
        try:
            await self.run(args, on_progress=report)
            decoded_s = tmp.stat().st_size / (2 * 16000)
            if self.max_audio_s and decoded_s > self.max_audio_s + LIMIT_SLACK_S / 2:
                raise TooLong(too_long_message(None, self.max_audio_s, claimed_s=duration_s))
            os.replace(tmp, dst)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
