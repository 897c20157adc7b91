"""Quotas under concurrent slow uploads, on a live server: slots are taken when an upload starts.

Before app/api/reservations.py eight uploads opened at once by a key allowed
1 running + 1 queued all got 202: the count was taken before the bodies
streamed in and the rows written after.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from app.api.reservations import Slots
from batching.fake_engine import FakeEngine
from tests.conftest import LiveServer, add_keys, bearer
from tests.media import speak


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return speak("slots for everyone", tmp_path_factory.mktemp("r") / "speech.wav").read_bytes()


def held_server(make_server: Callable[..., LiveServer], **overrides: Any) -> LiveServer:
    hold = asyncio.Event()  # never set: jobs stay queued or running
    return make_server(engine_factory=lambda c: (FakeEngine(hold=hold), True, "fake"), **overrides)


def slow_uploads(live: LiveServer, body: bytes, n: int, headers: str = "") -> list[int]:
    """``n`` raw uploads that all send their head and half their body before any finishes."""
    host, port = live.url.removeprefix("http://").split(":")
    barrier = threading.Barrier(n)
    statuses: list[int] = [0] * n

    def one(i: int) -> None:
        with socket.create_connection((host, int(port)), timeout=20) as sock:
            head = f"POST /v1/jobs?filename=s.wav HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
            sock.sendall(head.encode() + body[: len(body) // 2])
            barrier.wait()
            time.sleep(0.3)  # every upload is in flight now
            try:
                sock.sendall(body[len(body) // 2 :])
            except OSError:
                pass  # refused before the rest was read
            data = b""
            while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
                data += chunk
            statuses[i] = int(data.split()[1])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return statuses


def test_key_quota_holds_under_concurrent_uploads(make_server: Callable[..., LiveServer], tmp_path: Path, wav: bytes) -> None:
    keys = add_keys(tmp_path / "data", "alice", max_active_jobs=1, max_queued_jobs=1)
    live = held_server(make_server, **{"auth.enabled": True})
    statuses = slow_uploads(live, wav, 8, headers=f"Authorization: Bearer {keys['alice']}\r\n")
    assert sorted(statuses) == [202, 202] + [429] * 6, statuses
    with live.client(headers=bearer(keys["alice"])) as client:
        assert len(client.get("/v1/jobs").json()["jobs"]) == 2
    assert live.state.slots.total == 0


def test_global_queue_limit_holds_under_concurrent_uploads(make_server: Callable[..., LiveServer], wav: bytes) -> None:
    live = held_server(make_server, **{"limits.max_queued_jobs": 3})
    statuses = slow_uploads(live, wav, 8)
    assert sorted(statuses) == [202] * 3 + [429] * 5, statuses
    assert live.state.slots.total == 0


def test_a_failed_upload_gives_its_slot_back(make_server: Callable[..., LiveServer], wav: bytes) -> None:
    live = held_server(make_server, **{"limits.max_queued_jobs": 1})
    host, port = live.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"POST /v1/jobs?filename=s.wav HTTP/1.1\r\nHost: x\r\nContent-Length: {len(wav)}\r\n\r\n".encode() + wav[:1000])
        deadline = time.monotonic() + 5
        while live.state.slots.total == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert live.state.slots.total == 1
        with live.client() as client:
            r = client.post("/v1/jobs", params={"filename": "s.wav"}, content=wav)
            assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
    # Cut off: the slot comes back, and the next upload takes it.
    deadline = time.monotonic() + 5
    while live.state.slots.total and time.monotonic() < deadline:
        time.sleep(0.02)
    with live.client() as client:
        assert client.post("/v1/jobs", params={"filename": "s.wav"}, content=wav).status_code == 202
        assert client.post("/v1/jobs", params={"filename": "s.wav"}, content=wav).status_code == 429


def test_slots_count_per_owner() -> None:
    slots = Slots()
    a1, a2, b = slots.take("a"), slots.take("a"), slots.take("b")
    assert (slots.total, slots.held("a"), slots.held("b")) == (3, 2, 1)
    a1.release()
    a1.release()  # idempotent
    b.release()
    assert (slots.total, slots.held("a"), slots.held("b")) == (1, 1, 0)
    a2.release()
    assert slots.total == 0
