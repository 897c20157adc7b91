"""Promises that must hold across crashes, signals and full disks, on a real server process."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest

from tests.conftest import LiveServer, tmpfs, wait_done, wait_event, wait_export
from tests.media import VARIED_SENTENCES, make_long_speech, speak
from tests.procserver import ServerProcess

pytestmark = pytest.mark.slow



def upload(client: httpx.Client, path: Path, **data: Any) -> httpx.Response:
    with open(path, "rb") as fh:
        return client.post("/v1/jobs", files={"file": (path.name, fh)}, data=data)


def test_kill_9_loses_no_accepted_job(tmp_path: Path) -> None:
    clip = make_long_speech(tmp_path / "clip.wav", 12, VARIED_SENTENCES[:3])
    data = tmp_path / "data"
    server = ServerProcess(data, env={"ALTYAZI_LIMITS_MAX_RUNNING_JOBS": "2"}).start()
    try:
        with server.client() as client:
            ids = [upload(client, clip).json()["id"] for _ in range(10)]
            statuses = [client.get(f"/v1/jobs/{i}").json()["status"] for i in ids]
        assert sum(s in ("queued", "running") for s in statuses) >= 5, statuses
        server.signal(signal.SIGKILL)
        server.wait(10)
    finally:
        server.stop()
    again = ServerProcess(data, env={"ALTYAZI_LIMITS_MAX_RUNNING_JOBS": "4"}).start()
    try:
        with again.client() as client:
            for job_id in ids:
                job = wait_done(client, job_id, timeout=240)
                assert job["status"] == "done", job
                text = client.get(f"/v1/jobs/{job_id}/transcript", params={"format": "txt"}).text.lower()
                assert "report" in text or "weather" in text or "bicycle" in text, text
                events = client.get(f"/v1/jobs/{job_id}/events")
                ids_seen = [int(l[4:]) for l in events.text.splitlines() if l.startswith("id: ")]
                assert ids_seen == sorted(set(ids_seen)), "event ids must stay unique and increasing across the crash"
    finally:
        again.stop()


def test_sigterm_ends_sse_streams_and_exits_cleanly(tmp_path: Path) -> None:
    long = make_long_speech(tmp_path / "long.wav", 240, VARIED_SENTENCES)
    data = tmp_path / "data"
    server = ServerProcess(data, env={"ALTYAZI_SERVER_SHUTDOWN_TIMEOUT_S": "6"}).start()
    finals: list[dict[str, Any]] = []
    last_ids: list[str] = []
    try:
        with server.client() as client:
            job_id = upload(client, long).json()["id"]
            opened = threading.Barrier(4)

            def follow() -> None:
                last = None
                with httpx.Client(base_url=server.url, timeout=60) as c, c.stream("GET", f"/v1/jobs/{job_id}/events") as resp:
                    opened.wait()
                    event = None
                    for line in resp.iter_lines():
                        if line.startswith("id: "):
                            last = line[4:]
                        elif line.startswith("event: "):
                            event = line[7:]
                        elif line.startswith("data: ") and event == "status":
                            data_ = json.loads(line[6:])
                            if data_.get("reconnect"):
                                finals.append(data_)
                last_ids.append(last or "0")

            threads = [threading.Thread(target=follow) for _ in range(3)]
            for t in threads:
                t.start()
            opened.wait()
            wait_event(client, job_id, lambda type, data: data.get("stage") == "transcribing", timeout=60)
        t0 = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait(30) == 0
        took = time.monotonic() - t0
        for t in threads:
            t.join(10)
        assert took < 6 + 5, took
        assert len(finals) == 3 and all(f["status"] == "running" for f in finals)
    finally:
        server.stop()
    # The job resumes after a restart and the stream carries on from the last id.
    again = ServerProcess(data).start()
    try:
        with again.client() as client:
            assert wait_done(client, job_id, timeout=240)["status"] == "done"
            rest = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": last_ids[0]}).text
            ids = [int(l[4:]) for l in rest.splitlines() if l.startswith("id: ")]
            assert ids and min(ids) == int(last_ids[0]) + 1
    finally:
        again.stop()


def test_draining_server_refuses_uploads(make_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    from app.application import begin_drain

    live = make_server()
    wav = speak("hello", tmp_path / "h.wav")

    async def drain() -> None:
        begin_drain(live.app)

    live.call(drain())  # on the server's loop, and done when this returns
    with live.client() as client:
        r = upload(client, wav)
        assert r.status_code == 503 and r.headers["retry-after"]
        assert r.json()["error"]["code"] == "shutting_down"
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    with tmpfs(tmp_path / "small", "12m") as mnt:
        yield mnt


def test_disk_full_fails_only_that_job(make_server: Callable[..., LiveServer], small_disk: Path, tmp_path: Path) -> None:
    # 6 minutes of tone is 200 kB as MP3 but 11.5 MB as 16 kHz PCM: extraction hits ENOSPC.
    big = tmp_path / "big.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=300:duration=360", "-b:a", "8k", str(big)], check=True)
    small = speak("small job after the full disk", tmp_path / "small.wav")
    live = make_server(data_dir=small_disk / "data")
    with live.client() as client:
        job_id = upload(client, big, vad="false").json()["id"]
        job = wait_done(client, job_id, timeout=60)
        assert job["status"] == "failed" and job["error"]["code"] == "disk_full", job
        assert not any(p.name.startswith("audio.pcm") for p in live.state.files.job_dir(job_id).iterdir())
        ok = upload(client, small)
        assert ok.status_code == 202, ok.text
        assert wait_done(client, ok.json()["id"])["status"] == "done"
        assert client.get("/healthz").status_code == 200


def test_upload_refused_when_disk_low(make_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    live = make_server(**{"storage.min_free_mb": 10**9})
    wav = speak("hello", tmp_path / "h.wav")
    with live.client() as client:
        r = upload(client, wav)
        assert r.status_code == 507 and r.json()["error"]["code"] == "insufficient_storage"
        assert list(live.state.files.root.iterdir()) == [] if live.state.files.root.exists() else True


def test_queue_full_gives_429_with_retry_after(make_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    import asyncio

    from batching.fake_engine import FakeEngine

    hold = asyncio.Event()
    engine = FakeEngine(hold=hold)
    live = make_server(engine_factory=lambda c: (engine, True, "fake"), **{"limits.max_queued_jobs": 2})
    wav = speak("hello", tmp_path / "h.wav")
    with live.client() as client:
        assert upload(client, wav).status_code == 202
        assert upload(client, wav).status_code == 202
        r = upload(client, wav)
        assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
        assert 1 <= int(r.headers["retry-after"]) <= 3600
        live.extra["loop"].call_soon_threadsafe(hold.set)


def test_kill_9_during_an_export_restarts_it(tmp_path: Path) -> None:
    from tests.media import make_video_with_speech

    video = make_video_with_speech(" ".join(VARIED_SENTENCES[:4]), tmp_path / "talk.mp4", size="640x480")
    data = tmp_path / "data"
    server = ServerProcess(data).start()
    try:
        with server.client() as client:
            job_id = upload(client, video).json()["id"]
            assert wait_done(client, job_id)["status"] == "done"
            export_id = client.post(f"/v1/jobs/{job_id}/exports", json={"mode": "burn", "preset": "veryslow", "crf": 5}).json()["id"]
            wait_event(client, job_id, lambda type, data: data.get("export_id") == export_id and data.get("stage") == "exporting", timeout=30)
        server.signal(signal.SIGKILL)
        server.wait(10)
    finally:
        server.stop()
    again = ServerProcess(data).start()
    try:
        with again.client() as client:
            export = wait_export(client, job_id, export_id, timeout=240)
            assert export["status"] == "done", export
            body = client.get(f"/v1/jobs/{job_id}/exports/{export_id}/file").content
            assert len(body) == export["size_bytes"] > 0
        leftovers = [p.name for p in (data / "jobs" / job_id).rglob("*") if p.name.endswith(".part")]
        assert leftovers == []
    finally:
        again.stop()
