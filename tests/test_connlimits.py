"""Connection limits on a live server: heads, idle and half-sent requests, slow bodies, concurrency.

Before app/api/connlimits.py each of these was held forever (or, for the 4 MB
header, accepted).
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from typing import Callable

import pytest

from tests.conftest import LiveServer

FAST = {
    "server.timeout_headers_s": 1,
    "server.timeout_body_s": 1,
    "server.min_upload_rate_bytes_s": 1024,
    "server.timeout_keep_alive_s": 1,
}


def connect(live: LiveServer) -> socket.socket:
    host, port = live.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closed the connection (fails past ``seconds``)."""
    sock.settimeout(seconds)
    t0 = time.monotonic()
    read_all(sock)
    return time.monotonic() - t0


def read_response(sock: socket.socket) -> bytes:
    """One response, read up to the end of its Content-Length (the connection may stay open)."""
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
            if len(body) >= length:
                return data
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def response(data: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_huge_header_is_refused(make_server: Callable[..., LiveServer]) -> None:
    live = make_server()
    with connect(live) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (4 << 20) + b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed before all 4 MB went out
        status, body = response(read_all(sock))
    assert status == 431 and body["error"]["code"] == "headers_too_large"  # type: ignore[index]
    with live.client() as client:
        assert client.get("/healthz", headers={"X-Ok": "a" * 8000}).status_code == 200


def test_malformed_request_gets_the_error_shape(make_server: Callable[..., LiveServer]) -> None:
    live = make_server()
    with connect(live) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")
        status, body = response(read_all(sock))
    assert status == 400 and body["error"]["code"] == "bad_request"  # type: ignore[index]


def test_idle_and_half_sent_connections_are_closed(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(**FAST)
    with connect(live) as idle, connect(live) as half:
        # One byte every 0.2 s never completes the head; the deadline does not move.
        def trickle() -> None:
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: yes":
                try:
                    half.send(bytes([byte]))
                except OSError:
                    return
                time.sleep(0.2)

        threading.Thread(target=trickle, daemon=True).start()
        assert closed_within(idle, 4) < 3
        assert closed_within(half, 4) < 3


def test_keep_alive_connection_is_closed_when_idle(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(**FAST)
    with connect(live) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        assert b"200 OK" in sock.recv(65536)
        assert closed_within(sock, 4) < 3


def test_trickling_uploads_are_cut(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(**FAST)
    socks = [connect(live) for _ in range(40)]
    try:
        for sock in socks:
            sock.sendall(b"POST /v1/jobs?filename=a.wav HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nRIFF")
        t0 = time.monotonic()
        for _ in range(4):  # a byte every 0.5 s each, far below 1 kB/s
            # Not to a socket that was answered: bytes sent after the server closed
            # it make a reset, which can drop the unread answer.
            answered, _, _ = select.select(socks, [], [], 0)
            for sock in socks:
                if sock in answered:
                    continue
                try:
                    sock.send(b"x")
                except OSError:
                    pass
            time.sleep(0.5)
            with live.client() as client:
                assert client.get("/healthz").status_code == 200
        answers = []
        for sock in socks:
            sock.settimeout(5)
            answers.append(read_all(sock))
        assert time.monotonic() - t0 < 20  # cut after ~2 s; generous for a loaded 2-core box
    finally:
        for sock in socks:
            sock.close()
    for data in answers:
        status, body = response(data)
        assert status == 408 and body["error"]["code"] == "body_too_slow"  # type: ignore[index]
    deadline = time.monotonic() + 5
    while live.state.uploads_in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live.state.uploads_in_flight == 0
    root = live.state.files.root
    assert not root.exists() or list(root.iterdir()) == []


def test_a_steady_slow_upload_is_not_cut(make_server: Callable[..., LiveServer]) -> None:
    # 2 kB/s is over the 1 kB/s floor: it goes through, however long it takes.
    live = make_server(**FAST)
    with connect(live) as sock:
        sock.sendall(b"POST /v1/jobs?filename=a.wav HTTP/1.1\r\nHost: x\r\nContent-Length: 6000\r\n\r\n")
        for _ in range(12):
            sock.sendall(b" " * 500)
            time.sleep(0.25)
        sock.settimeout(5)
        status, body = response(read_response(sock))
    assert status == 415 and body["error"]["code"] == "not_media"  # read to the end, then refused: not a 408


def test_concurrency_limit_answers_503(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(**{"server.limit_concurrency": 3, "server.timeout_headers_s": 5})
    held = [connect(live) for _ in range(3)]
    try:
        time.sleep(0.2)
        with connect(live) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.settimeout(5)
            status, body = response(read_all(sock))
        assert status == 503 and body["error"]["code"] == "server_busy"  # type: ignore[index]
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    with live.client() as client:
        assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("key", "value"),
    [("server.limit_concurrency", -1), ("server.h11_max_incomplete_event_size", 10), ("server.timeout_headers_s", 0),
     ("server.timeout_body_s", 0), ("server.min_upload_rate_bytes_s", -1), ("server.timeout_keep_alive_s", 0),
     ("server.max_upload_streams", -1)],
)  # fmt: skip
def test_bad_limits_are_refused_at_start(key: str, value: float) -> None:
    from app.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(environ={}, overrides={key: value})
