"""sd_notify: the protocol on a socket the test binds, and READY/STOPPING from a real server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from app import sdnotify
from tests.conftest import REPO, free_port


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def test_sends_to_a_path_socket(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    assert sdnotify.notify("READY=1", "STATUS=serving", environ={"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving"


def test_sends_to_an_abstract_socket() -> None:
    name = f"altyazi-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert sdnotify.notify("STOPPING=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"STOPPING=1"


def test_no_socket_is_a_quiet_no_op(tmp_path: Path) -> None:
    assert not sdnotify.notify("READY=1", environ={})
    assert not sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1234"})
    # A socket that went away is logged, never raised: the server keeps running.
    assert not sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})


def messages(sock: socket.socket, until: bytes, timeout: float) -> list[bytes]:
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while not any(until in m for m in out):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            out.append(sock.recv(4096))
        except socket.timeout:
            raise AssertionError(f"no {until!r} within {timeout} s; got {out}") from None
    return out


@pytest.mark.slow
def test_ready_only_once_listening_and_stopping_on_sigterm(notify_socket: tuple[socket.socket, str], tmp_path: Path) -> None:
    sock, path = notify_socket
    port = free_port()
    env = {
        **os.environ,
        "NOTIFY_SOCKET": path,
        "ALTYAZI_STORAGE_MIN_FREE_MB": "1",
        "ALTYAZI_SERVER_LOG_FORMAT": "json",
        "ALTYAZI_SERVER_SHUTDOWN_TIMEOUT_S": "4",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp_path / "data"), "--model", "tiny.en"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        before = messages(sock, b"READY=1", timeout=60)
        # At the moment READY=1 arrives the model is loaded and the port answers.
        r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
        assert r.status_code == 200 and r.json()["status"] == "ready"
        assert any(m.startswith(b"STATUS=loading model") for m in before[:-1]), before
        assert sum(b"READY=1" in m for m in before) == 1
        proc.send_signal(signal.SIGTERM)
        after = messages(sock, b"STOPPING=1", timeout=10)
        assert after[0].startswith(b"STOPPING=1")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _, stderr = proc.communicate()
    lines = [line for line in stderr.decode().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # log_format=json: every line is one object
    assert any(r["logger"] == "altyazi.server" and "ready" in r["msg"] for r in records)
    assert all("color_message" not in r for r in records)
    assert records[-1]["msg"] == "stopped" or any(r["msg"] == "stopped" for r in records)  # the lifespan ran to its end
