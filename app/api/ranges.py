"""HTTP Range requests cut down to one range before any file response sees them.

Starlette's FileResponse merges multiple ranges with a loop per range over the
ranges merged so far, on the event loop: 10,000 ranges in one header took
3.4 s of CPU there, and its multipart answer was longer than the
Content-Length it announced. Players and download managers ask for one range
at a time, so this middleware lets through exactly one: a list of ranges is
coalesced into the one range that covers them (RFC 9110 14.2 lets a server
coalesce), and anything it cannot read cheaply — a header past
``MAX_HEADER_CHARS``, more than ``MAX_RANGES`` ranges, a suffix range mixed
with others, a range that ends before it starts, another unit — gets a 416
in the API's error shape. The 416 that FileResponse itself gives for a
range past the end of the file is rewritten into that shape too.
"""

from __future__ import annotations

import json
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_HEADER_CHARS = 200
MAX_RANGES = 16
_SPEC = re.compile(r"^\s*(\d{0,18})\s*-\s*(\d{0,18})\s*$")


class RangeError(ValueError):
    """The Range header is not one this server answers."""


def single_range(header: str) -> str:
    """The one ``bytes=`` range equivalent to (or covering) ``header``; raises RangeError.

    >>> single_range("bytes=0-99, 200-299")
    'bytes=0-299'
    """
    if len(header) > MAX_HEADER_CHARS:
        raise RangeError(f"the Range header is longer than {MAX_HEADER_CHARS} characters")
    unit, eq, spec = header.partition("=")
    if not eq or unit.strip().lower() != "bytes":
        raise RangeError("only byte ranges are served")
    parts = [p for p in spec.split(",") if p.strip()]
    if not parts:
        raise RangeError("the Range header names no range")
    if len(parts) > MAX_RANGES:
        raise RangeError(f"more than {MAX_RANGES} ranges in one request")
    starts: list[int] = []
    ends: list[int | None] = []
    for part in parts:
        m = _SPEC.match(part)
        if m is None or (not m.group(1) and not m.group(2)):
            raise RangeError(f"{part.strip()[:20]!r} is not a byte range")
        first, last = m.group(1), m.group(2)
        if not first:  # "-500": the last 500 bytes
            if len(parts) > 1:
                raise RangeError("a suffix range (-N) must be the only range")
            if int(last) == 0:
                raise RangeError("a suffix range of 0 bytes is empty")
            return f"bytes=-{int(last)}"
        start = int(first)
        end = int(last) if last else None
        if end is not None and end < start:
            raise RangeError(f"range {start}-{end} ends before it starts")
        starts.append(start)
        ends.append(end)
    low = min(starts)
    high = None if any(e is None for e in ends) else max(e for e in ends if e is not None)
    return f"bytes={low}-" + ("" if high is None else str(high))


def resolve(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) byte of the one range RangeGuard let through, for a body of ``size``.

    None when there is no Range header (the whole body); RangeError when the
    range starts past the end (416).
    """
    if not header:
        return None
    spec = single_range(header)[len("bytes="):]
    first, _, last = spec.partition("-")
    if not first:  # the last N bytes
        return max(0, size - int(last)), size - 1
    start = int(first)
    if start >= size:
        raise RangeError(f"the range starts at byte {start}, past the end ({size} bytes)")
    return start, min(int(last), size - 1) if last else size - 1


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class RangeGuard:
    """Pure ASGI: rewrites a Range header to one range, or answers 416 itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers") or []
        raw = [v for k, v in headers if k == b"range"]
        if not raw:
            await self.app(scope, receive, send)
            return
        try:
            if len(raw) > 1:
                raise RangeError("send one Range header")
            fixed = single_range(raw[0].decode("latin-1"))
        except RangeError as exc:
            await _send_416(send, f"The Range header cannot be served: {exc}. Ask for one range, such as 'Range: bytes=0-1048575'.", None)
            return
        scope = dict(scope)
        scope["headers"] = [(k, v) for k, v in headers if k != b"range"] + [(b"range", fixed.encode("latin-1"))]
        await self.app(scope, receive, _Rewrite416(send))


class _Rewrite416:
    """Replaces the plain-text body of a 416 from FileResponse with the error shape."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._swallow = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start" and message.get("status") == 416:
            content_range = next((v.decode("latin-1") for k, v in message.get("headers", []) if k.lower() == b"content-range"), None)
            if content_range and content_range.startswith("*/"):
                content_range = "bytes " + content_range  # RFC 9110 14.4: "bytes */<size>"
            self._swallow = True
            await _send_416(self._send, "The range starts past the end of the file; the size is in Content-Range.", content_range)
            return
        if self._swallow:
            return
        await self._send(message)


async def _send_416(send: Send, message: str, content_range: str | None) -> None:
    body = _error_body("range_not_satisfiable", message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if content_range:
        headers.append((b"content-range", content_range.encode("latin-1")))
    await send({"type": "http.response.start", "status": 416, "headers": headers})
    await send({"type": "http.response.body", "body": body})
