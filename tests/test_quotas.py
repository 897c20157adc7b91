"""Per-key quotas on a live server: active and queued jobs, upload size, request rate, event streams."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

from batching.fake_engine import FakeEngine
from app.api.auth import AuthMiddleware
from app.api.ratelimit import RateLimiter
from tests.conftest import FinishedRequests, LiveServer, add_keys, bearer, wait_done, wait_event
from tests.media import speak

AUTH_ON = {"auth.enabled": True}


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speak("one two three", tmp_path_factory.mktemp("m") / "speech.wav")


def held(make_server: Callable[..., LiveServer], **overrides: Any) -> tuple[LiveServer, asyncio.Event]:
    hold = asyncio.Event()
    live = make_server(engine_factory=lambda c: (FakeEngine(hold=hold), True, "fake"), **AUTH_ON, **overrides)
    return live, hold


def release(live: LiveServer, hold: asyncio.Event) -> None:
    live.extra["loop"].call_soon_threadsafe(hold.set)


def upload(client: httpx.Client, path: Path) -> httpx.Response:
    return client.post("/v1/jobs", files={"file": (path.name, path.read_bytes())})


def wait_status(client: httpx.Client, job_id: str, status: str, timeout: float = 20) -> None:
    wait_event(client, job_id, lambda type, data: data.get("status") == status, timeout=timeout)


def auth_middleware(live: LiveServer) -> AuthMiddleware:
    """The server's AuthMiddleware (the middleware stack is built by the first request)."""
    with live.client() as client:
        client.get("/healthz")
    layer: Any = live.app.middleware_stack
    while not isinstance(layer, AuthMiddleware):
        layer = layer.app
    return layer


def assert_429(r: httpx.Response, code: str) -> None:
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == code
    assert int(r.headers["retry-after"]) >= 1


def test_max_active_jobs_per_key(make_server: Callable[..., LiveServer], tmp_path: Path, wav: Path) -> None:
    # A key's jobs past max_active wait their turn (queued) even on an idle
    # server, so one key never fills the stages before the batcher; other keys
    # are not held up by it.
    keys = add_keys(tmp_path / "data", "alice", max_active_jobs=1, max_queued_jobs=1)
    keys |= add_keys(tmp_path / "data", "bob")
    live, hold = held(make_server)
    with live.client(headers=bearer(keys["alice"])) as alice, live.client(headers=bearer(keys["bob"])) as bob:
        first = upload(alice, wav).json()["id"]
        wait_status(alice, first, "running")
        second = upload(alice, wav)
        assert second.status_code == 202 and second.json()["status"] == "queued"
        assert second.json()["queue_position"] == 1
        assert_429(upload(alice, wav), "too_many_queued_jobs")
        other = upload(bob, wav).json()["id"]
        wait_status(bob, other, "running")  # "one key's quota is not another's"
        assert alice.get(f"/v1/jobs/{second.json()['id']}").json()["status"] == "queued"
        release(live, hold)
        wait_done(alice, first)
        wait_done(alice, second.json()["id"])
        assert upload(alice, wav).status_code == 202


def test_max_queued_jobs_per_key(make_server: Callable[..., LiveServer], tmp_path: Path, wav: Path) -> None:
    keys = add_keys(tmp_path / "data", "alice", max_active_jobs=1, max_queued_jobs=2)
    keys |= add_keys(tmp_path / "data", "bob")
    live, hold = held(make_server, **{"limits.max_running_jobs": 1})
    with live.client(headers=bearer(keys["alice"])) as alice, live.client(headers=bearer(keys["bob"])) as bob:
        running = upload(alice, wav).json()["id"]
        wait_status(alice, running, "running")
        queued = [upload(alice, wav) for _ in range(2)]
        assert [r.status_code for r in queued] == [202, 202]
        assert [r.json()["status"] for r in queued] == ["queued", "queued"]
        assert_429(upload(alice, wav), "too_many_queued_jobs")
        assert upload(bob, wav).status_code == 202
        # Deleting a queued job frees a place at once.
        assert alice.delete(f"/v1/jobs/{queued[0].json()['id']}").status_code == 204
        assert upload(alice, wav).status_code == 202
        release(live, hold)


def chunks(data: bytes, size: int = 16 * 1024) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_upload_over_the_keys_limit_is_413(make_server: Callable[..., LiveServer], tmp_path: Path, wav: Path) -> None:
    keys = add_keys(tmp_path / "data", "small", max_upload_mb=0.1)
    keys |= add_keys(tmp_path / "data", "big")
    live = make_server(**AUTH_ON)
    big = tmp_path / "big.wav"
    big.write_bytes(wav.read_bytes() + b"\0" * 300_000)
    with live.client(headers=bearer(keys["small"])) as small, live.client(headers=bearer(keys["big"])) as other:
        r = upload(small, big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "upload_too_large"
        # Without a Content-Length the limit is enforced while the body streams in.
        r = small.post("/v1/jobs", params={"filename": "big.wav"}, content=chunks(big.read_bytes()))
        assert r.status_code == 413 and r.json()["error"]["code"] == "upload_too_large"
        assert upload(small, wav).status_code == 202, "under the limit is fine"
        assert upload(other, big).status_code == 202, "the limit is the key's, not the server's"
        assert small.get("/v1/jobs").json()["jobs"].__len__() == 1, "refused uploads leave no job"
        assert list((tmp_path / "data" / "jobs").glob("*/upload.partial")) == []


def test_server_upload_limit_caps_a_keys_limit(make_server: Callable[..., LiveServer], tmp_path: Path, wav: Path) -> None:
    keys = add_keys(tmp_path / "data", "greedy", max_upload_mb=1000)
    live = make_server(**AUTH_ON, **{"storage.max_upload_mb": 0.1})
    big = tmp_path / "big.wav"
    big.write_bytes(wav.read_bytes() + b"\0" * 300_000)
    with live.client(headers=bearer(keys["greedy"])) as client:
        assert upload(client, big).status_code == 413


def test_request_rate_limit_per_key(make_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    keys = add_keys(tmp_path / "data", "alice", "bob")
    keys |= add_keys(tmp_path / "data", "robot", rate_per_minute=0)
    live = make_server(**AUTH_ON, **{"auth.rate_limit_per_minute": 60, "auth.rate_limit_burst": 3})
    now = [1000.0]
    auth_middleware(live).limiter = RateLimiter(60, 3, clock=lambda: now[0])  # time moves when the test says
    with live.client() as client:
        a, b, robot = (bearer(keys[n]) for n in ("alice", "bob", "robot"))
        assert [client.get("/v1/jobs", headers=a).status_code for _ in range(3)] == [200, 200, 200]
        r = client.get("/v1/jobs", headers=a)
        assert_429(r, "rate_limited")
        assert int(r.headers["retry-after"]) == 1  # one token a second
        assert client.get("/v1/jobs", headers=b).status_code == 200, "buckets are per key"
        assert all(client.get("/v1/jobs", headers=robot).status_code == 200 for _ in range(10)), "a key's own rate (0 = unlimited)"
        assert client.get("/healthz").status_code == 200, "open paths are not rate limited"
        now[0] += 1.0
        assert client.get("/v1/jobs", headers=a).status_code == 200


def test_event_streams_per_key(make_server: Callable[..., LiveServer], tmp_path: Path, wav: Path, finished_requests: FinishedRequests) -> None:
    keys = add_keys(tmp_path / "data", "alice", "bob")
    live, hold = held(make_server, **{"auth.max_sse_per_key": 1})
    with live.client(headers=bearer(keys["alice"])) as alice, live.client(headers=bearer(keys["bob"])) as bob:
        job = upload(alice, wav).json()["id"]
        bob_job = upload(bob, wav).json()["id"]
        wait_status(alice, job, "running")
        events = f"/v1/jobs/{job}/events"
        finished_requests.wait_for("GET", events)  # the stream wait_status followed is closed on the server too
        with alice.stream("GET", f"/v1/jobs/{job}/events") as first:
            assert first.status_code == 200
            lines = first.iter_lines()  # kept: a dropped iterator closes the connection
            assert next(lines).startswith("retry:")  # the stream is open on the server
            with alice.stream("GET", f"/v1/jobs/{job}/events") as second:  # never reads a stream's endless body
                assert second.status_code == 429
                second.read()
                assert_429(second, "too_many_streams")
            with bob.stream("GET", f"/v1/jobs/{bob_job}/events") as other:
                assert other.status_code == 200, "another key has its own streams"
        # Closing the stream frees the place once the server has seen the disconnect.
        assert sorted(finished_requests.wait_for("GET", events, count=3)) == [200, 200, 429]
        with alice.stream("GET", f"/v1/jobs/{job}/events") as again:
            assert again.status_code == 200, "a closed stream still counts against the key"
        release(live, hold)
