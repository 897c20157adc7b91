"""Shared fixtures: a live altyazi server on a free loopback port, in a thread.

A live server (not an in-process ASGI transport) is what SSE, uploads cut off
mid-body and client disconnects need to be tested for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
import uvicorn

from app.config import Config, load_config
from app.api.connlimits import uvicorn_options
from app.application import create_app
from batching.types import Engine

REPO = Path(__file__).resolve().parents[1]
TINY_EN = "tiny.en"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_config(data_dir: Path, **overrides: Any) -> Config:
    values = {"storage.data_dir": str(data_dir), "storage.min_free_mb": 1, "server.sse_heartbeat_s": 1}
    values.update(overrides)
    return load_config(environ={}, overrides=values)


@dataclass
class LiveServer:
    cfg: Config
    url: str
    server: uvicorn.Server
    thread: threading.Thread
    app: Any
    engine: Engine | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 30), **kw)

    def aclient(self, **kw: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=kw.pop("timeout", 30), **kw)

    @property
    def state(self) -> Any:
        return self.app.state.altyazi

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the server's own loop (to reach its parts)."""
        loop = self.extra["loop"]
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def start_server(cfg: Config, engine_factory: Callable[[Config], tuple[Engine, bool, str]]) -> LiveServer:
    port = free_port()
    app = create_app(cfg, engine_factory=engine_factory)
    # The same protocol and limits as `python -m app serve`.
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on", timeout_graceful_shutdown=2, **uvicorn_options(cfg))
    server = uvicorn.Server(config)
    extra: dict[str, Any] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        extra["loop"] = loop
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.serve())
        loop.close()

    thread = threading.Thread(target=run, name=f"altyazi-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    live = LiveServer(cfg=cfg, url=f"http://127.0.0.1:{port}", server=server, thread=thread, app=app, extra=extra)
    live.engine = app.state.altyazi.engine
    return live


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start servers (fake engine by default); all are stopped at teardown."""
    started: list[LiveServer] = []

    def make(engine_factory: Callable[[Config], tuple[Engine, bool, str]] | None = None, data_dir: Path | None = None, **overrides: Any) -> LiveServer:
        from batching.fake_engine import FakeEngine

        cfg = server_config(data_dir or tmp_path / "data", **overrides)
        factory = engine_factory or (lambda c: (FakeEngine(), True, "fake"))
        live = start_server(cfg, factory)
        started.append(live)
        return live

    yield make
    for live in started:
        live.stop()


def tiny_engine_factory(cfg: Config) -> tuple[Engine, bool, str]:
    from app.model_files import resolve_model
    from app.serving import engine_for

    resolved = resolve_model(TINY_EN, cfg.storage.data_dir)
    return engine_for(cfg, resolved), resolved.multilingual, resolved.name


class FinishedRequests(logging.Handler):
    """The requests a live server has finished answering, read from its access log.

    The access line is written after everything the request did (cleanup of a cut
    upload, the release of an event-stream slot), so a test waits on it instead
    of sleeping for "long enough".
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._done = threading.Condition()
        self.seen: list[tuple[str, str, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        with self._done:
            self.seen.append((getattr(record, "method", ""), getattr(record, "path", ""), getattr(record, "status", 0)))
            self._done.notify_all()

    def wait_for(self, method: str, path: str, *, count: int = 1, timeout: float = 30) -> list[int]:
        """Statuses of the first ``count`` finished ``method path`` requests, once there are that many."""
        with self._done:
            matching = lambda: [s for m, p, s in self.seen if (m, p) == (method, path)]  # noqa: E731
            assert self._done.wait_for(lambda: len(matching()) >= count, timeout), f"{method} {path} did not finish: {self.seen}"
            return matching()[:count]


@pytest.fixture
def finished_requests() -> Iterator[FinishedRequests]:
    handler = FinishedRequests()
    logger = logging.getLogger("altyazi.access")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def wait_event(client: httpx.Client, job_id: str, done: Callable[[str, dict[str, Any]], bool], timeout: float = 120) -> dict[str, Any]:
    """Follow the job's event stream until ``done(type, data)``; answers that event's data.

    The stream is how the API tells a client that something happened, so a test
    waits on it rather than polling the job."""
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout) as resp:
        assert resp.status_code == 200, resp.read()
        event = ""
        for line in resp.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                if done(event, data):
                    return data  # type: ignore[no-any-return]
    raise AssertionError(f"the event stream of job {job_id} ended first")


def wait_done(client: httpx.Client, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def wait_export(client: httpx.Client, job_id: str, export_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        export = client.get(f"/v1/jobs/{job_id}/exports/{export_id}").json()
        if export["status"] not in ("queued", "running"):
            return export  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"export {export_id} did not finish in {timeout} s")


def add_keys(data_dir: Path, *names: str, **limits: Any) -> dict[str, str]:
    """Create API keys in ``<data_dir>/keys.json`` (the default keys file); answers name -> key.

    ``limits`` (max_active_jobs, max_queued_jobs, max_upload_mb, rate_per_minute)
    apply to every key made by this call.
    """
    from app.api.auth import load_keys, new_key, save_keys

    path = data_dir / "keys.json"
    keys = load_keys(path)
    out: dict[str, str] = {}
    for name in names:
        record, key = new_key(name, keys, **limits)
        keys.append(record)
        out[name] = key
    save_keys(path, keys)
    return out


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def settle() -> None:
    """Let every task that can run do so (a few loop turns; no waiting on time)."""
    for _ in range(5):
        await asyncio.sleep(0)


@contextlib.contextmanager
def tmpfs(mnt: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``mnt`` (root only; skips the test where it cannot mount)."""
    mnt.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


class HealthProbe:
    """Times GET /healthz in a thread, back to back, while a test attacks the server."""

    def __init__(self, live: LiveServer, pause_s: float = 0.005) -> None:
        self.live = live
        self.pause_s = pause_s
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with self.live.client() as client:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                assert client.get("/healthz").status_code == 200
                self.times.append(time.perf_counter() - t0)
                time.sleep(self.pause_s)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        while not self.times and self._thread.is_alive():
            time.sleep(0.01)  # measuring from the first answer on
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def worst(self) -> float:
        return max(self.times)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A real PostgreSQL server on loopback for the whole session (tests/cluster_servers.py)."""
    from tests.cluster_servers import PostgresServer

    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Any]:
    """A real S3 server (SeaweedFS) on loopback for the whole session, with one bucket."""
    from tests.cluster_servers import S3Server

    server = S3Server().start()
    try:
        yield server
    finally:
        server.close()
