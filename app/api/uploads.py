"""Receive an upload straight to disk: multipart (``file`` field) or a raw body.

The body is never held in memory: parts are parsed as they stream in and the
file's bytes are appended to a partial file in the job's folder, in ~4 MiB
writes (one ``writev`` of the chunks as they came) done in a worker thread. The size limit is enforced while streaming,
and so is the free-space floor: a chunked upload declares no size up front,
so free space is checked again every ``FREE_CHECK_BYTES`` written, and a disk
that fills anyway (ENOSPC) is a 507, not a 500. Any failure removes the
partial file.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import anyio
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from app.api.errors import ApiError
from storage.files import free_bytes

# Bytes gathered before one write in a worker thread: big enough that the
# thread hop costs little per byte, small enough to bound memory per upload.
FLUSH_BYTES = 4 << 20
# writev takes at most this many buffers at once (Linux's UIO_MAXIOV).
IOV_MAX = 1024
_writev = os.writev  # a name of its own, so a test can fill the disk
MAX_FIELDS = 32
MAX_FIELD_BYTES = 64 * 1024
MAX_HEADER_BYTES = 16 * 1024
# A statvfs costs microseconds, but the floor (storage.min_free_mb, 1 GB by
# default) is coarse: once per this many bytes is enough to stop an upload
# well before it eats the space jobs need for their audio and exports.
FREE_CHECK_BYTES = 8 << 20


@dataclass
class ReceivedUpload:
    filename: str  # as the client sent it; sanitise before use
    path: Path
    size: int
    fields: dict[str, str] = field(default_factory=dict)


class _Sink:
    """A partial file filled in large writes off the event loop.

    Chunks are kept as they arrived (bytes, or memoryviews of a multipart
    chunk) and handed to one ``os.writev`` per flush: the body is copied once,
    by the kernel, instead of into a buffer and out again.
    """

    def __init__(self, path: Path, max_bytes: int, min_free_bytes: int = 0) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.size = 0
        self._unchecked = 0  # bytes written since free space was last checked
        self._chunks: list[bytes | memoryview] = []
        self._pending = 0
        self._fh = open(path, "wb", buffering=0)
        # At most one write in flight while the next chunks come in: the upload
        # keeps streaming during a write instead of stopping for each one.
        self._writing: asyncio.Future[None] | None = None

    def add(self, data: bytes | memoryview) -> None:
        n = len(data)
        self.size += n
        if self.size > self.max_bytes:
            raise _TooLarge()
        if n:
            self._chunks.append(data)
            self._pending += n

    @property
    def should_flush(self) -> bool:
        return self._pending >= FLUSH_BYTES

    async def flush(self) -> None:
        await self._written()
        if self._chunks:
            chunks, self._chunks, self._pending = self._chunks, [], 0
            self._writing = asyncio.ensure_future(anyio.to_thread.run_sync(self._write, chunks))

    async def _written(self) -> None:
        """Wait for the write in flight; its error (a full disk) is raised here."""
        writing, self._writing = self._writing, None
        if writing is not None:
            await writing

    def _write(self, chunks: list[bytes | memoryview]) -> None:
        fd = self._fh.fileno()
        try:
            while chunks:
                written = _writev(fd, chunks[:IOV_MAX])
                # A short write (a signal, a full disk) leaves the rest to send again.
                while chunks and written >= len(chunks[0]):
                    written -= len(chunks[0])
                    self._unchecked += len(chunks[0])
                    chunks.pop(0)
                if chunks and written:
                    chunks[0] = memoryview(chunks[0])[written:]
                    self._unchecked += written
        except OSError as exc:
            raise _disk_error(exc) from None
        if self.min_free_bytes and self._unchecked >= FREE_CHECK_BYTES:
            self._unchecked = 0
            if free_bytes(self.path.parent) < self.min_free_bytes:
                raise _LowDisk()

    async def close(self) -> None:
        # The last write and the fsync in one thread hop: a small upload is
        # often one write, and under a crowd every hop waits for a free thread.
        await self._written()
        chunks, self._chunks, self._pending = self._chunks, [], 0
        await anyio.to_thread.run_sync(self._close_sync, chunks)

    def _close_sync(self, chunks: list[bytes | memoryview]) -> None:
        if chunks:
            self._write(chunks)
        try:
            # Delayed allocation: a full disk may only show at fsync.
            os.fsync(self._fh.fileno())
            self._fh.close()
        except OSError as exc:
            raise _disk_error(exc) from None

    async def discard(self) -> None:
        # The file is closed only once no thread writes to it any more (a closed
        # descriptor's number may already name another file).
        writing, self._writing = self._writing, None
        if writing is not None:
            await asyncio.wait([writing])
            if not writing.cancelled():
                writing.exception()  # the upload failed anyway; its write's error is moot
        if not self._fh.closed:
            self._fh.close()
        self.path.unlink(missing_ok=True)


class IngestGate:
    """Small bodies first, and a bounded number of bodies streaming at a time.

    Every connection gets its turn of the event loop, so with 100 uploads at
    once a 2-MB file's bytes came in interleaved with 2 GB of others' and its
    202 took seconds; and every loop turn read every streaming socket, so the
    loop took hundreds of ms per turn and everything else waited that long.
    An upload that is not read is not lost: uvicorn stops reading its socket,
    and the kernel's buffers and TCP hold the client back.

    - **Small first.** While an upload of at most ``small_bytes`` streams in,
      larger ones stop taking chunks. A large upload waits at most
      ``max_pause_s`` at a time and then streams for at least ``min_run_s``
      before it may wait again, so a steady stream of small uploads slows it
      but never stalls it. A body is small by its Content-Length; a chunked one
      is small until it passes ``small_bytes``.
    - **In turns.** At most ``max_streams`` uploads take chunks at once (0: no
      bound); the others wait in line, small ones ahead of large ones unless a
      large one has waited ``max_pause_s``. A turn lasts ``slice_s`` when
      others wait, then the upload goes to the back of the line; a large
      upload giving way to small ones gives up its turn. A client that sends
      nothing for ``idle_s`` loses its turn to the next in line (it gets back
      in line at its next chunk), so slow clients cannot hold every turn. The
      loop's turns stay short.
    """

    def __init__(
        self,
        small_bytes: int = 8 << 20,
        max_pause_s: float = 1.0,
        min_run_s: float = 1.0,
        *,
        max_streams: int = 0,
        slice_s: float = 1.0,
        idle_s: float = 0.25,
    ) -> None:
        self.small_bytes = small_bytes
        self.max_pause_s = max_pause_s
        self.min_run_s = min_run_s
        self.max_streams = max_streams
        self.slice_s = slice_s
        self.idle_s = idle_s
        self.small = 0  # small uploads streaming now
        self.paused = 0  # large uploads waiting for small ones now
        self._clear: asyncio.Event | None = None
        self.streaming: set[IngestLane] = set()  # uploads holding a turn
        # waiting for a turn: small uploads are served before large ones
        # (lane, its grant, when it got in line)
        self._lines: tuple[deque[tuple[IngestLane, asyncio.Future[None], float]], ...] = (deque(), deque())
        self._idle_check: asyncio.TimerHandle | None = None  # one timer for the whole line

    @property
    def waiting(self) -> int:
        """Uploads waiting in line for a turn."""
        return sum(1 for line in self._lines for _, fut, _ in line if not fut.done())

    def enter_small(self) -> None:
        self.small += 1
        if self._clear is not None:
            self._clear.clear()

    def lane(self, declared: str | None) -> IngestLane:
        """A lane for a request whose Content-Length header is ``declared``."""
        return IngestLane(self, int(declared) if declared is not None and declared.isdigit() else None)

    def leave_small(self) -> None:
        self.small -= 1
        if self.small == 0 and self._clear is not None:
            self._clear.set()

    async def give_way(self, lane: IngestLane) -> float:
        """Wait while small uploads stream (bounded), without holding a turn; answer
        when this upload last stopped waiting. Cheap when there is nothing to wait for."""
        last_pause_end = lane.last_pause_end
        if not self.small:
            return last_pause_end
        now = time.monotonic()
        if now - last_pause_end < self.min_run_s:
            return last_pause_end
        self.end_turn(lane)
        if self._clear is None:
            self._clear = asyncio.Event()
        self._clear.clear()
        self.paused += 1
        try:
            with anyio.move_on_after(self.max_pause_s):
                await self._clear.wait()
        finally:
            self.paused -= 1
        return time.monotonic()

    async def stream_turn(self, lane: IngestLane) -> None:
        """Before an upload's chunk: hold a turn, or wait in line for one."""
        if not self.max_streams:
            return
        now = time.monotonic()
        queued = self._lines[0] or self._lines[1]
        if lane in self.streaming:
            lane.last_chunk = now
            if not queued or now - lane.turn_since < self.slice_s:
                return
            self.end_turn(lane)  # its turn is up and others wait: to the back of the line
        elif len(self.streaming) < self.max_streams and not queued:
            self._start(lane, now)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._lines[0 if lane.small else 1].append((lane, fut, now))
        self._fill()  # a turn may be free (the line held only requests that ended)
        if self._idle_check is None:
            self._idle_check = asyncio.get_running_loop().call_later(self.idle_s, self._evict_idle)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.end_turn(lane)  # granted as it was cancelled: pass the turn on
            fut.cancel()
            raise

    def end_turn(self, lane: IngestLane) -> None:
        """The upload stops streaming (its body is in, it failed, or its turn is up)."""
        if lane in self.streaming:
            self.streaming.discard(lane)
            self._fill()

    def _start(self, lane: IngestLane, now: float) -> None:
        self.streaming.add(lane)
        lane.turn_since = lane.last_chunk = now

    def _fill(self) -> None:
        now = time.monotonic()
        small, large = self._lines
        while len(self.streaming) < self.max_streams and (small or large):
            # Small ones first, but a large one that has waited max_pause_s goes
            # next: a steady stream of small uploads must not stall it.
            overdue = large and now - large[0][2] >= self.max_pause_s
            lane, fut, _ = (large if overdue or not small else small).popleft()
            if fut.done():  # it gave up waiting (the request ended)
                continue
            self._start(lane, now)
            fut.set_result(None)

    def _evict_idle(self) -> None:
        """Every ``idle_s`` while anyone waits in line: idle turns go to the next in line."""
        self._idle_check = None
        now = time.monotonic()
        for lane in [x for x in self.streaming if now - x.last_chunk >= self.idle_s]:
            self.streaming.discard(lane)  # it gets back in line at its next chunk
        self._fill()
        if self.waiting:
            self._idle_check = asyncio.get_running_loop().call_later(self.idle_s, self._evict_idle)


class IngestLane:
    """One upload's place at the :class:`IngestGate`, from its first byte until
    its answer: a small upload's probe and job row are part of its wait too.
    ``close`` it when the request is answered (it is idempotent)."""

    def __init__(self, gate: IngestGate | None, declared: int | None) -> None:
        self.gate = gate
        self.small = gate is not None and (declared is None or declared <= gate.small_bytes)
        self.last_pause_end = 0.0
        self.turn_since = 0.0  # when its current turn at the gate began
        self.last_chunk = 0.0
        if gate is not None and self.small:
            gate.enter_small()

    async def turn(self, received: int) -> None:
        """Called before each chunk is taken."""
        gate = self.gate
        if gate is None:
            return
        if self.small:
            if received > gate.small_bytes:  # a chunked body that turned out large
                self.leave_small()
        elif gate.small:
            self.last_pause_end = await gate.give_way(self)
        await gate.stream_turn(self)

    def body_done(self) -> None:
        """The body is in: its turn goes to the next upload in line."""
        if self.gate is not None:
            self.gate.end_turn(self)

    def leave_small(self) -> None:
        if self.gate is not None and self.small:
            self.small = False
            self.gate.leave_small()

    def close(self) -> None:
        if self.gate is not None:
            self.gate.end_turn(self)
            self.leave_small()


class _TooLarge(Exception):
    pass


class _LowDisk(Exception):
    """Free space fell below the floor (or ran out) while the body streamed in."""


def _disk_error(exc: OSError) -> Exception:
    return _LowDisk() if exc.errno in (errno.ENOSPC, errno.EDQUOT) else exc


def insufficient_storage() -> ApiError:
    return ApiError(
        507, "insufficient_storage",
        "The server ran low on disk space while receiving the upload, so it was dropped; "
        "try again later or upload a smaller file.",
        headers={"Retry-After": "60"},
    )


def too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413,
        "upload_too_large",
        f"The upload is larger than the limit of {max_bytes / (1024 * 1024):.3g} MB for this key or server.",
    )


async def receive_upload(
    request: Request,
    dest: Path,
    *,
    max_bytes: int,
    query_filename: str | None = None,
    on_progress: Callable[[int], None] | None = None,
    min_free_bytes: int = 0,
    lane: IngestLane | None = None,
) -> ReceivedUpload:
    """Stream the request body into ``dest``; answer what arrived.

    Raises ApiError: 413 over the limit, 400 for a malformed or cut-off body or
    a multipart body without a ``file`` field, 507 when free space on ``dest``'s
    disk falls below ``min_free_bytes`` or runs out while streaming.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + MAX_HEADER_BYTES * 4:
        raise too_large(max_bytes)
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    sink = await anyio.to_thread.run_sync(_Sink, dest, max_bytes, min_free_bytes)  # open() creates: a journal write
    lane = lane or IngestLane(None, None)
    try:
        if content_type == b"multipart/form-data":
            boundary = params.get(b"boundary")
            if not boundary:
                raise ApiError(400, "bad_multipart", "The multipart body has no boundary in its Content-Type header.")
            filename, fields = await _receive_multipart(request, sink, boundary, on_progress, lane)
        else:
            fields = {}
            filename = query_filename or ""
            async for chunk in request.stream():
                await lane.turn(sink.size)
                sink.add(chunk)
                if sink.should_flush:
                    await sink.flush()
                    if on_progress:
                        on_progress(sink.size)
        lane.body_done()
        await sink.close()
    except _TooLarge:
        await sink.discard()
        raise too_large(max_bytes) from None
    except _LowDisk:
        await sink.discard()
        raise insufficient_storage() from None
    except ClientDisconnect:
        await sink.discard()
        raise ApiError(400, "upload_incomplete", "The upload was cut off before the body was complete; send it again.") from None
    except BaseException:
        await sink.discard()
        raise
    return ReceivedUpload(filename=filename, path=dest, size=sink.size, fields=fields)


async def _receive_multipart(
    request: Request,
    sink: _Sink,
    boundary: bytes,
    on_progress: Callable[[int], None] | None,
    lane: IngestLane,
) -> tuple[str, dict[str, str]]:
    fields: dict[str, str] = {}
    state: dict[str, object] = {"headers": {}, "name": None, "filename": None, "is_file": False, "value": bytearray()}
    header_field = bytearray()
    header_value = bytearray()
    found_file: list[str] = []
    errors: list[ApiError] = []
    header_bytes = 0

    def on_part_begin() -> None:
        state.update(headers={}, name=None, filename=None, is_file=False, value=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        nonlocal header_bytes
        header_bytes += end - start
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        nonlocal header_bytes
        header_bytes += end - start
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers = state["headers"]
        assert isinstance(headers, dict)
        headers[bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        headers = state["headers"]
        assert isinstance(headers, dict)
        _, options = parse_options_header(headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = name
        if b"filename" in options or name == "file":
            state["is_file"] = True
            state["filename"] = options.get(b"filename", b"").decode("utf-8", "replace")
            if name != "file" or found_file:
                errors.append(
                    ApiError(400, "unexpected_file", "Send exactly one file, in the form field named 'file'.")
                )

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if errors:
            return
        if state["is_file"]:
            # A view, not a copy: the chunk stays alive until the sink writes it.
            sink.add(memoryview(data)[start:end])
            return
        value = state["value"]
        assert isinstance(value, bytearray)
        value.extend(data[start:end])
        if len(value) > MAX_FIELD_BYTES:
            errors.append(ApiError(413, "field_too_large", f"Form field {state['name']!r} is longer than 64 kB."))

    def on_part_end() -> None:
        if errors:
            return
        if state["is_file"]:
            found_file.append(str(state["filename"] or ""))
            return
        if len(fields) >= MAX_FIELDS:
            errors.append(ApiError(400, "too_many_fields", "The form has too many fields."))
            return
        value = state["value"]
        assert isinstance(value, bytearray)
        try:
            name, text = str(state["name"]), value.decode("utf-8")
            if name.endswith("[]") and name in fields:
                # Repeated array fields (OpenAI's timestamp_granularities[]) keep every value.
                text = fields[name] + "," + text
            fields[name] = text
        except UnicodeDecodeError:
            errors.append(ApiError(400, "bad_field", f"Form field {state['name']!r} is not UTF-8 text."))

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
        },
        # File names of several kB are legal (and get shortened later); the
        # parser's 4 kB default would refuse them as malformed.
        max_header_size=MAX_HEADER_BYTES * 4,
    )
    async for chunk in request.stream():
        await lane.turn(sink.size)
        try:
            parser.write(chunk)
        except _TooLarge:
            raise
        except Exception as exc:
            raise ApiError(400, "bad_multipart", f"The multipart body is malformed ({str(exc)[:80]}).") from None
        if errors:
            raise errors[0]
        if header_bytes > MAX_HEADER_BYTES * 4:
            raise ApiError(400, "bad_multipart", "The multipart part headers are too large.")
        if sink.should_flush:
            await sink.flush()
            if on_progress:
                on_progress(sink.size)
    try:
        parser.finalize()
    except Exception:
        raise ApiError(400, "bad_multipart", "The multipart body is malformed or cut off.") from None
    if errors:
        raise errors[0]
    if not found_file:
        raise ApiError(400, "missing_file", "The form has no 'file' field; attach the media as file=@name.")
    return found_file[0], fields
