"""Failed API keys are limited before hashing, and HEAD counts against the stream cap (live server)."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Callable

from app.api.authlimit import AuthFailureLimiter
from batching.fake_engine import FakeEngine
from tests.conftest import LiveServer, add_keys, bearer
from tests.media import speak


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_limiter_counts_key_ids_and_addresses() -> None:
    clock = Clock()
    limiter = AuthFailureLimiter(60, 3, clock=clock)
    assert [limiter.take("k1", "1.2.3.4") for _ in range(3)] == [0.0] * 3
    assert limiter.take("k1", "5.6.7.8") > 0  # the key id's bucket is empty, whatever the address
    assert limiter.take("k2", "1.2.3.4") > 0  # the address's bucket is empty, whatever the key
    assert limiter.take("k2", "5.6.7.8") == 0.0
    limiter.give_back("k2", "5.6.7.8")  # a success is not a failure
    assert limiter.take("k2", "5.6.7.8") == 0.0
    clock.now += 1.0  # one token a second
    assert limiter.take("k1", "9.9.9.9") == 0.0
    assert 0 < limiter.take("k1", "9.9.9.9") <= 1.0
    assert AuthFailureLimiter(0, 1).take("k", "a") == 0.0  # 0 = unlimited


def test_wrong_keys_get_429_before_hashing(make_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    keys = add_keys(tmp_path / "data", "alice")
    live = make_server(**{"auth.enabled": True, "auth.failures_per_minute": 6, "auth.failure_burst": 5})
    key_id = keys["alice"].split(".")[0]
    with live.client(headers=bearer(keys["alice"])) as alice:
        assert alice.get("/v1/jobs").status_code == 200  # verified once, then cached
    statuses = []
    t0 = time.monotonic()
    with live.client(headers=bearer(f"{key_id}.wrong-secret")) as attacker:
        for _ in range(40):
            r = attacker.get("/v1/jobs")
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.json()["error"]["code"] == "too_many_auth_failures"
                assert int(r.headers["retry-after"]) >= 1
    elapsed = time.monotonic() - t0
    assert statuses[:5] == [401] * 5 and statuses[5:] == [429] * 35, statuses
    assert elapsed < 5, f"{elapsed:.1f} s: refused requests must not hash"
    with live.client(headers=bearer(keys["alice"])) as alice:
        assert alice.get("/v1/jobs").status_code == 200  # the owner's cached key keeps working


def test_head_on_events_holds_no_stream(make_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    keys = add_keys(tmp_path / "data", "alice")
    hold = asyncio.Event()
    live = make_server(engine_factory=lambda c: (FakeEngine(hold=hold), True, "fake"), **{"auth.enabled": True, "auth.max_sse_per_key": 2})
    wav = speak("heads up", tmp_path / "s.wav")
    with live.client(headers=bearer(keys["alice"])) as alice:
        job = alice.post("/v1/jobs", files={"file": ("s.wav", wav.read_bytes())}).json()["id"]
        host, port = live.url.removeprefix("http://").split(":")
        socks = []
        try:
            for _ in range(12):
                sock = socket.create_connection((host, int(port)), timeout=5)
                socks.append(sock)
                sock.sendall(f"HEAD /v1/jobs/{job}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {keys['alice']}\r\n\r\n".encode())
                head = sock.recv(65536)
                assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head, head
            time.sleep(0.2)
            assert live.state.sse_streams == 0
            with alice.stream("GET", f"/v1/jobs/{job}/events") as stream:
                assert stream.status_code == 200
        finally:
            for sock in socks:
                sock.close()
    live.extra["loop"].call_soon_threadsafe(hold.set)
