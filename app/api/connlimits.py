"""Connection limits: what a client may hold open, and how slowly it may send.

uvicorn alone holds a connection forever while a client sends half a request
line, half its headers, or a body a byte every two seconds, and with
httptools it accepts headers of any size (4 MB were accepted). So altyazi
serves with h11, whose parser buffers at most
``server.h11_max_incomplete_event_size`` bytes of an unfinished request
line and headers, through :class:`GuardedH11Protocol`, which adds:

- a deadline for the request line and headers (``server.timeout_headers_s``),
  started when the connection opens and again after each response; bytes
  that arrive meanwhile do not extend it, so a trickle cannot keep it alive;
- the error shape on the answers uvicorn writes itself: 400/431 for a
  malformed or oversized head, 503 past ``server.limit_concurrency``.

:class:`BodyRateMiddleware` then bounds the body: in every window of
``server.timeout_body_s`` seconds a request must send at least
``server.min_upload_rate_bytes_s`` bytes per second of it (and, with the
rate at 0, something), or it is answered 408 and the connection closed.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import Config as UvicornConfig
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.config import Config
from app.api.errors import ApiError


def _json(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


async def _server_busy(scope: Scope, receive: Receive, send: Send) -> None:
    body = _json("server_busy", "The server has as many open connections as it allows; try again in a few seconds.")
    await send({
        "type": "http.response.start", "status": 503,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"retry-after", b"5"), (b"connection", b"close")],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for request heads and JSON refusals."""

    timeout_headers_s = 10.0  # set per server by uvicorn_options()

    def __init__(self, config: UvicornConfig, *args: Any, **kw: Any) -> None:
        super().__init__(config, *args, **kw)
        # uvicorn's own check would answer in plain text; ours does the same count.
        self._limit = self.limit_concurrency
        self.limit_concurrency = None
        self._app = self.app
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # h11 checks its limit only on a head that is still incomplete, so one that
        # arrives whole in a single read (up to 256 kB here) would pass: measure it.
        limit = self.config.h11_max_incomplete_event_size
        if limit and self.conn.their_state is h11.IDLE:
            pending = self.conn.trailing_data[0] + data
            end = pending.find(b"\r\n\r\n")
            if (end if end >= 0 else len(pending)) > limit:
                self._unset_keepalive_if_required()
                self._refuse_head(431)
                return
        super().data_received(data)

    def handle_events(self) -> None:
        busy = self._limit is not None and (len(self.connections) > self._limit or len(self.tasks) >= self._limit)
        self.app = _server_busy if busy else self._app
        super().handle_events()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()

    def send_400_response(self, msg: str) -> None:
        # h11 refuses a head past its buffer limit with this same error; say which it was.
        limit = self.config.h11_max_incomplete_event_size
        self._refuse_head(431 if limit and len(self.conn.trailing_data[0]) >= limit else 400)

    def _refuse_head(self, status: int) -> None:
        if status == 431:
            body = _json("headers_too_large", f"The request line and headers are larger than {self.config.h11_max_incomplete_event_size} bytes.")
        else:
            body = _json("bad_request", "The request is not valid HTTP/1.1.")
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        try:
            for event in (h11.Response(status_code=status, headers=headers), h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:
            # h11 will not answer before it has seen a request; write the same bytes itself.
            self.transport.write(b"HTTP/1.1 %d \r\n" % status + b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n" + body)
        self.transport.close()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.timeout_headers_s, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered: its body has its own limit
        if not self.transport.is_closing():
            self.transport.close()


def uvicorn_options(cfg: Config) -> dict[str, Any]:
    """The uvicorn.Config keywords that carry these limits (shared by the server and the tests)."""
    s = cfg.server
    protocol = type("GuardedH11", (GuardedH11Protocol,), {"timeout_headers_s": s.timeout_headers_s})
    return {
        "http": protocol,
        "h11_max_incomplete_event_size": s.h11_max_incomplete_event_size,
        "limit_concurrency": s.limit_concurrency or None,
        "timeout_keep_alive": s.timeout_keep_alive_s,
    }


class BodyTooSlow(ApiError):
    def __init__(self, min_rate: float, window_s: float) -> None:
        if min_rate > 0:
            message = f"The request body arrived slower than {min_rate:g} bytes/s over {window_s:g} s; send it again on a faster link."
        else:
            message = f"No part of the request body arrived for {window_s:g} s; send it again."
        super().__init__(408, "body_too_slow", message, headers={"Connection": "close"})


class BodyRateMiddleware:
    """Pure ASGI: times the reads of a request body; once the body is complete it steps aside."""

    def __init__(self, app: ASGIApp, *, min_rate: float, window_s: float) -> None:
        self.app = app
        self.min_rate = min_rate
        self.window_s = window_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        window_s, need = self.window_s, self.min_rate * self.window_s
        window_end = time.monotonic() + window_s
        got = 0
        complete = False

        async def guarded() -> Message:
            nonlocal window_end, got, complete
            if complete:
                return await receive()  # e.g. a stream listening for the disconnect
            while True:
                timeout = window_end - time.monotonic()
                # asyncio.timeout, not wait_for: wait_for wraps every body chunk's
                # receive in a task of its own, a cost paid per 64 kB of upload.
                try:
                    async with asyncio.timeout(max(timeout, 0.0)):
                        message = await receive()
                except TimeoutError:
                    message = None
                now = time.monotonic()
                if message is not None:
                    if message["type"] != "http.request" or not message.get("more_body", False):
                        complete = True
                    got += len(message.get("body", b""))
                if now >= window_end and not complete:
                    if got < need or (need == 0 and got == 0):
                        raise BodyTooSlow(self.min_rate, window_s)
                    window_end, got = now + window_s, 0
                if message is not None:
                    return message

        await self.app(scope, guarded, send)
