"""The v1 job API on a live server with the fake engine: fast, real ffmpeg, real SQLite."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
from httpx_sse import connect_sse

from batching.fake_engine import FakeEngine
from tests.conftest import LiveServer, wait_done
from tests.media import make_tone, make_video_with_speech, speak



@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    return {
        "video": make_video_with_speech("hello world, this is a test", d / "clip.mp4"),
        "wav": speak("one two three", d / "speech.wav"),
        "tone40": make_tone(d / "tone40.wav", 40),
    }


def held_engine() -> tuple[FakeEngine, asyncio.Event]:
    hold = asyncio.Event()
    return FakeEngine(hold=hold), hold


def release(live: LiveServer, hold: asyncio.Event) -> None:
    live.extra["loop"].call_soon_threadsafe(hold.set)


def upload(client: httpx.Client, path: Path, **data: Any) -> httpx.Response:
    with open(path, "rb") as fh:
        return client.post("/v1/jobs", files={"file": (path.name, fh)}, data=data)


def events_of(client: httpx.Client, job_id: str, last_id: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    headers = {"Last-Event-ID": last_id} if last_id else {}
    out = []
    with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events", headers=headers) as source:
        for sse in source.iter_sse():
            if not sse.data:
                continue  # the `retry:` preamble dispatches no event in browsers
            out.append((sse.id, sse.event, json.loads(sse.data)))
    return out


def test_upload_is_accepted_at_once_and_runs_to_done(make_server: Callable[..., LiveServer], media: dict[str, Path]) -> None:
    live = make_server()
    with live.client() as client:
        t0 = time.monotonic()
        r = upload(client, media["video"], language="en")
        elapsed = time.monotonic() - t0
        assert r.status_code == 202, r.text
        assert elapsed < 2.0
        job = r.json()
        assert r.headers["location"] == f"/v1/jobs/{job['id']}"
        assert job["status"] in ("queued", "running") and job["filename"] == "clip.mp4"
        assert len(job["id"]) >= 22  # 128 random bits
        events = events_of(client, job["id"])
        kinds = [e[1] for e in events]
        assert kinds[0] == "status" and kinds[-1] == "done"
        assert "segment" in kinds and "progress" in kinds
        ids = [int(e[0]) for e in events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        progress = [e[2]["progress"] for e in events if e[1] == "progress"]
        assert progress == sorted(progress)
        done = client.get(f"/v1/jobs/{job['id']}").json()
        assert done["status"] == "done" and done["progress"] == 1.0 and done["language"] == "en"
        srt = client.get(f"/v1/jobs/{job['id']}/transcript", params={"format": "srt"})
        assert srt.status_code == 200 and srt.headers["content-type"].startswith("application/x-subrip")
        assert re.match(r"1\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n", srt.text)
        vtt = client.get(f"/v1/jobs/{job['id']}/transcript", params={"format": "vtt"})
        assert vtt.text.startswith("WEBVTT")
        data = client.get(f"/v1/jobs/{job['id']}/transcript").json()
        assert data["segments"] and data["segments"][0]["text"]
        listing = client.get("/v1/jobs").json()
        assert [j["id"] for j in listing["jobs"]] == [job["id"]]


def test_raw_body_upload_with_filename(make_server: Callable[..., LiveServer], media: dict[str, Path]) -> None:
    live = make_server()
    with live.client() as client:
        r = client.post("/v1/jobs", params={"filename": "speech.wav", "vad": "false"}, content=media["wav"].read_bytes())
        assert r.status_code == 202, r.text
        assert r.json()["options"]["vad"] is False
        assert wait_done(client, r.json()["id"])["status"] == "done"


def test_sse_resume_with_last_event_id(make_server: Callable[..., LiveServer], media: dict[str, Path]) -> None:
    live = make_server()
    with live.client() as client:
        job_id = upload(client, media["video"]).json()["id"]
        wait_done(client, job_id)
        everything = events_of(client, job_id)
        middle = everything[len(everything) // 2]
        rest = events_of(client, job_id, last_id=middle[0])
        assert rest == everything[len(everything) // 2 + 1 :]
        # Resuming after the final event ends the stream at once.
        assert events_of(client, job_id, last_id=everything[-1][0]) == []


def test_live_segments_and_heartbeat_while_held(make_server: Callable[..., LiveServer], media: dict[str, Path]) -> None:
    engine, hold = held_engine()
    live = make_server(engine_factory=lambda c: (engine, True, "fake"))
    with live.client() as client:
        job_id = upload(client, media["tone40"], vad="false").json()["id"]
        assert client.get(f"/v1/jobs/{job_id}/transcript").status_code == 409
        seen: list[str] = []
        with client.stream("GET", f"/v1/jobs/{job_id}/events") as resp:
            for line in resp.iter_lines():
                seen.append(line)
                if line.startswith(": heartbeat"):
                    release(live, hold)
                if line == "event: done":
                    break
        assert any(l.startswith(": heartbeat") for l in seen)
        assert "event: segment" in seen


def test_delete_mid_transcription_leaves_nothing(make_server: Callable[..., LiveServer], media: dict[str, Path]) -> None:
    engine, hold = held_engine()
    live = make_server(engine_factory=lambda c: (engine, True, "fake"))
    with live.client() as client:
        job_id = upload(client, media["tone40"], vad="false").json()["id"]
        deadline = time.monotonic() + 20
        while client.get(f"/v1/jobs/{job_id}").json()["stage"] != "transcribing":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        job_dir = live.state.files.job_dir(job_id)
        assert job_dir.exists()
        r = client.delete(f"/v1/jobs/{job_id}")
        assert r.status_code == 204
        assert client.get(f"/v1/jobs/{job_id}").status_code == 404
        assert not job_dir.exists()
        assert live.state.manager.active == 0
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 404


def test_put_transcript_validates_and_keeps_original(make_server: Callable[..., LiveServer], media: dict[str, Path]) -> None:
    live = make_server()
    with live.client() as client:
        job_id = upload(client, media["video"]).json()["id"]
        wait_done(client, job_id)
        original = client.get(f"/v1/jobs/{job_id}/transcript").json()
        edited = [{"start": 0.0, "end": 1.0, "text": "Edited line"}]
        r = client.put(f"/v1/jobs/{job_id}/transcript", json={"segments": edited})
        assert r.status_code == 200, r.text
        assert "Edited line" in client.get(f"/v1/jobs/{job_id}/transcript", params={"format": "srt"}).text
        again = client.get(f"/v1/jobs/{job_id}/transcript", params={"version": "original"}).json()
        assert again["segments"] == original["segments"]
        bad = [{"start": 0.0, "end": 1.0, "text": "a"}, {"start": 2.0, "end": 1.5, "text": "b"}]
        r = client.put(f"/v1/jobs/{job_id}/transcript", json={"segments": bad})
        assert r.status_code == 422
        assert r.json()["error"]["code"] == "invalid_segment" and r.json()["error"]["index"] == 1
        r = client.put(f"/v1/jobs/{job_id}/transcript", content=b"{not json")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_unknown_job_and_bad_parameters(make_server: Callable[..., LiveServer], media: dict[str, Path]) -> None:
    live = make_server()
    with live.client() as client:
        for method, path in [("GET", "/v1/jobs/nope"), ("GET", "/v1/jobs/nope/events"), ("GET", "/v1/jobs/nope/transcript"), ("DELETE", "/v1/jobs/nope")]:
            r = client.request(method, path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found", path
        assert client.get("/v1/jobs", params={"limit": "0"}).status_code == 422
        r = upload(client, media["wav"], colour="blue")
        assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_option"
        r = upload(client, media["wav"], language="xx")
        assert r.status_code == 422 and r.json()["error"]["field"] == "language"
        r = upload(client, media["wav"], task="summarise")
        assert r.status_code == 422 and r.json()["error"]["field"] == "task"
        r = upload(client, media["wav"], word_timestamps="maybe")
        assert r.status_code == 422
        job_id = upload(client, media["wav"]).json()["id"]
        wait_done(client, job_id)
        r = client.get(f"/v1/jobs/{job_id}/transcript", params={"format": "docx"})
        assert r.status_code == 422


def test_pagination(make_server: Callable[..., LiveServer], media: dict[str, Path]) -> None:
    live = make_server()
    with live.client() as client:
        ids = [upload(client, media["wav"]).json()["id"] for _ in range(5)]
        page1 = client.get("/v1/jobs", params={"limit": 2}).json()
        page2 = client.get("/v1/jobs", params={"limit": 2, "cursor": page1["next_cursor"]}).json()
        page3 = client.get("/v1/jobs", params={"limit": 2, "cursor": page2["next_cursor"]}).json()
        got = [j["id"] for p in (page1, page2, page3) for j in p["jobs"]]
        assert got == list(reversed(ids)) and page3["next_cursor"] is None
        for job_id in ids:
            wait_done(client, job_id)


def test_health_and_readiness(make_server: Callable[..., LiveServer]) -> None:
    live = make_server()
    with live.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 200


def test_a_repeated_idempotency_key_answers_the_first_job(make_server: Callable[..., LiveServer], media: dict[str, Path]) -> None:
    live = make_server()
    body = media["wav"].read_bytes()
    with live.client() as client:
        def post(key: str) -> httpx.Response:
            return client.post("/v1/jobs", files={"file": ("speech.wav", body)}, headers={"Idempotency-Key": key})

        first, again, other = post("upload-1"), post("upload-1"), post("upload-2")
        assert first.status_code == again.status_code == other.status_code == 202
        assert first.json()["id"] == again.json()["id"] != other.json()["id"]
        assert len(client.get("/v1/jobs").json()["jobs"]) == 2
        assert post("").status_code == 422
        assert wait_done(client, first.json()["id"])["status"] == "done"
