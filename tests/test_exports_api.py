"""Exports through the HTTP API: soft track, burn-in, events, download with Range, cancel."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
from httpx_sse import connect_sse

from tests.conftest import LiveServer, wait_done, wait_export
from tests.media import make_video_with_speech, speak


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video_with_speech("hello there, general export", tmp_path_factory.mktemp("m") / "talk.mp4")


def new_done_job(client: httpx.Client, path: Path) -> str:
    with open(path, "rb") as fh:
        job_id = client.post("/v1/jobs", files={"file": (path.name, fh)}, data={"language": "en"}).json()["id"]
    assert wait_done(client, job_id)["status"] == "done"
    return job_id


def ffprobe_streams(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", str(path)], capture_output=True, check=True)
    return json.loads(out.stdout)["streams"]  # type: ignore[no-any-return]


def test_soft_export_with_edit_events_and_range(make_server: Callable[..., LiveServer], clip: Path, tmp_path: Path) -> None:
    live = make_server()
    with live.client() as client:
        job_id = new_done_job(client, clip)
        r = client.put(f"/v1/jobs/{job_id}/transcript", json={"segments": [{"start": 0.2, "end": 1.5, "text": "Edited for export"}]})
        assert r.status_code == 200
        last_id = None
        with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events") as source:
            for sse in source.iter_sse():
                last_id = sse.id or last_id
        r = client.post(f"/v1/jobs/{job_id}/exports", json={"mode": "soft", "container": "mkv"})
        assert r.status_code == 202, r.text
        export_id = r.json()["id"]
        kinds = []
        with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": last_id or "0"}) as source:
            for sse in source.iter_sse():
                if sse.data:
                    kinds.append((sse.event, json.loads(sse.data)))
        assert kinds[-1][0] == "export_done"
        assert any(k == "progress" and d.get("stage") == "exporting" for k, d in kinds)
        export = wait_export(client, job_id, export_id)
        assert export["status"] == "done" and export["size_bytes"] > 0
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert [e["id"] for e in job["exports"]] == [export_id]

        resp = client.get(f"/v1/jobs/{job_id}/exports/{export_id}/file")
        assert resp.status_code == 200 and resp.headers["content-type"] == "video/x-matroska"
        assert 'filename="talk_subs.mkv"' in resp.headers["content-disposition"]
        out = tmp_path / "out.mkv"
        out.write_bytes(resp.content)
        subs = [s for s in ffprobe_streams(out) if s["codec_type"] == "subtitle"]
        assert subs and subs[0]["tags"].get("language") == "eng"
        srt = subprocess.run(["ffmpeg", "-v", "error", "-i", str(out), "-map", "0:s:0", "-f", "srt", "-"], capture_output=True, check=True).stdout
        assert b"Edited for export" in srt

        part = client.get(f"/v1/jobs/{job_id}/exports/{export_id}/file", headers={"Range": "bytes=10-99"})
        assert part.status_code == 206 and part.content == resp.content[10:100]
        assert part.headers["content-range"] == f"bytes 10-99/{len(resp.content)}"


def test_burn_export_changes_frames(make_server: Callable[..., LiveServer], clip: Path, tmp_path: Path) -> None:
    live = make_server()
    with live.client() as client:
        job_id = new_done_job(client, clip)
        client.put(f"/v1/jobs/{job_id}/transcript", json={"segments": [{"start": 0.0, "end": 2.5, "text": "BURNED IN"}]})
        r = client.post(f"/v1/jobs/{job_id}/exports", json={"mode": "burn", "style": {"size": 90, "position": "bottom"}, "preset": "ultrafast"})
        assert r.status_code == 202, r.text
        export = wait_export(client, job_id, r.json()["id"])
        assert export["status"] == "done", export
        out = tmp_path / "burn.mp4"
        out.write_bytes(client.get(f"/v1/jobs/{job_id}/exports/{export['id']}/file").content)

        def frame(path: Path) -> bytes:
            return subprocess.run(
                ["ffmpeg", "-v", "error", "-ss", "1.0", "-i", str(path), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "gray", "-s", "160x120", "-"],
                capture_output=True, check=True,
            ).stdout

        a, b = frame(clip), frame(out)
        assert len(a) == len(b)
        differing = sum(1 for x, y in zip(a, b) if abs(x - y) > 40)
        assert differing > 100  # the caption's pixels


def test_export_errors(make_server: Callable[..., LiveServer], clip: Path, tmp_path: Path) -> None:
    live = make_server()
    with live.client() as client:
        wav = speak("audio only here", tmp_path / "a.wav")
        audio_job = new_done_job(client, wav)
        r = client.post(f"/v1/jobs/{audio_job}/exports", json={"mode": "burn"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "mode"
        r = client.post(f"/v1/jobs/{audio_job}/exports", json={"mode": "soft", "container": "avi"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "container"
        r = client.post(f"/v1/jobs/{audio_job}/exports", json={"mode": "soft", "style": {"colour": "red"}})
        assert r.status_code == 422
        r = client.post(f"/v1/jobs/{audio_job}/exports", content=b"[")
        assert r.status_code == 400
        assert client.get(f"/v1/jobs/{audio_job}/exports/nope").status_code == 404

        # A source that ffmpeg cannot read any more: the export fails with a readable reason.
        job_id = new_done_job(client, clip)
        source = live.state.files.find_input(job_id)
        source.write_bytes(source.read_bytes()[:2000])
        r = client.post(f"/v1/jobs/{job_id}/exports", json={"mode": "soft"})
        export = wait_export(client, job_id, r.json()["id"])
        assert export["status"] == "failed" and export["error"]["message"]
        assert client.get(f"/v1/jobs/{job_id}/exports/{export['id']}/file").status_code == 409


def test_cancel_export_leaves_no_file(make_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    live = make_server()
    long_clip = make_video_with_speech("a longer clip to render slowly " * 6, tmp_path / "long.mp4", size="640x480")
    with live.client() as client:
        job_id = new_done_job(client, long_clip)
        r = client.post(f"/v1/jobs/{job_id}/exports", json={"mode": "burn", "preset": "veryslow", "crf": 10})
        export_id = r.json()["id"]
        deadline = time.monotonic() + 30
        while client.get(f"/v1/jobs/{job_id}/exports/{export_id}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert client.delete(f"/v1/jobs/{job_id}/exports/{export_id}").status_code == 204
        assert client.get(f"/v1/jobs/{job_id}/exports/{export_id}").status_code == 404
        exports_dir = live.state.files.job_dir(job_id) / "exports"
        assert not exports_dir.exists() or list(exports_dir.iterdir()) == []
        assert live.state.pool.busy == 0
