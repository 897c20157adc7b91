"""Exports through the HTTP API: soft track, burn-in, events, download with Range, cancel."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
from httpx_sse import connect_sse

from tests.conftest import REPO, LiveServer, add_keys, bearer, wait_done, wait_export
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


# -- per-key export limits ----------------------------------------------------------


def hold_renders(live: LiveServer) -> None:
    """Take the server's render slot, so every export stays queued until let_renders_go."""
    live.call(live.state.pool._slots.acquire("render", "test"))


def let_renders_go(live: LiveServer) -> None:
    live.extra["loop"].call_soon_threadsafe(live.state.pool._slots.release, "render")


def post_exports_at_once(live: LiveServer, key: str, job_id: str, n: int) -> list[httpx.Response]:
    async def burst() -> list[httpx.Response]:
        async with live.aclient(headers=bearer(key)) as client:
            return list(await asyncio.gather(*(client.post(f"/v1/jobs/{job_id}/exports", json={"mode": "soft"}) for _ in range(n))))

    return asyncio.run(burst())


def test_exports_per_key_limit(make_server: Callable[..., LiveServer], clip: Path, tmp_path: Path) -> None:
    # Before the limit one key queued 25 burn exports and held up everybody's ffmpeg.
    data = tmp_path / "data"
    keys = add_keys(data, "alice", max_exports=2)
    keys.update(add_keys(data, "bob"))
    live = make_server(data_dir=data, **{"auth.enabled": True, "auth.rate_limit_per_minute": 0, "limits.max_exports_per_key": 3})
    with live.client(headers=bearer(keys["alice"])) as alice, live.client(headers=bearer(keys["bob"])) as bob:
        a_job, b_job = new_done_job(alice, clip), new_done_job(bob, clip)
        hold_renders(live)
        # Six at once: the place is taken before the request's first await, so exactly two pass.
        answers = post_exports_at_once(live, keys["alice"], a_job, 6)
        assert sorted(r.status_code for r in answers) == [202, 202, 429, 429, 429, 429]
        refused = next(r for r in answers if r.status_code == 429)
        assert refused.json()["error"]["code"] == "too_many_exports"
        assert "most this server allows" in refused.json()["error"]["message"] and int(refused.headers["retry-after"]) >= 1
        # Bob has the server's default (3), whatever Alice holds.
        assert [r.status_code for r in post_exports_at_once(live, keys["bob"], b_job, 4)].count(202) == 3
        let_renders_go(live)
        for r in answers:
            if r.status_code == 202:
                assert wait_export(alice, a_job, r.json()["id"])["status"] == "done"
        # Finished exports no longer count.
        r = alice.post(f"/v1/jobs/{a_job}/exports", json={"mode": "soft"})
        assert r.status_code == 202, r.text
        wait_export(alice, a_job, r.json()["id"])


def test_export_limit_applies_with_keys_off(make_server: Callable[..., LiveServer], clip: Path) -> None:
    live = make_server(**{"limits.max_exports_per_key": 1})
    with live.client() as client:
        job_id = new_done_job(client, clip)
        hold_renders(live)
        first = client.post(f"/v1/jobs/{job_id}/exports", json={"mode": "soft"})
        second = client.post(f"/v1/jobs/{job_id}/exports", json={"mode": "soft"})
        assert (first.status_code, second.status_code) == (202, 429)
        let_renders_go(live)
        assert wait_export(client, job_id, first.json()["id"])["status"] == "done"


def test_keys_add_takes_an_export_limit(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTYAZI_")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app", "keys", "--data-dir", str(tmp_path), *args],
                              cwd=REPO, capture_output=True, text=True, timeout=60, env=env)  # fmt: skip

    assert cli("add", "carol", "--max-exports", "3").returncode == 0
    listed = json.loads(cli("list", "--json").stdout)
    assert listed[0]["max_exports"] == 3
    assert "max_exports=3" in cli("list").stdout
    bad = cli("add", "dave", "--max-exports", "0")
    assert bad.returncode == 2 and "--max-exports must be >= 1" in bad.stderr
