"""End to end with the real tiny.en model, real ffmpeg and espeak-ng speech."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
from httpx_sse import connect_sse

from tests.conftest import LiveServer, tiny_engine_factory, wait_done
from tests.media import VARIED_SENTENCES, make_long_speech, make_video_with_speech, shared_clip
from tests.wer import wer

pytestmark = pytest.mark.slow

SENTENCE = "Please send me the report before the meeting on Monday morning. The weather today is sunny and warm, and we are going to the park."


@pytest.fixture
def tiny_server(make_server: Callable[..., LiveServer]) -> LiveServer:
    return make_server(engine_factory=tiny_engine_factory)


def upload(client: httpx.Client, path: Path, **data: Any) -> httpx.Response:
    with open(path, "rb") as fh:
        return client.post("/v1/jobs", files={"file": (path.name, fh)}, data=data)


def transcript_text(client: httpx.Client, job_id: str) -> str:
    return client.get(f"/v1/jobs/{job_id}/transcript", params={"format": "txt"}).text


def test_espeak_speech_in_mp4(tiny_server: LiveServer, tmp_path: Path) -> None:
    video = make_video_with_speech(SENTENCE, tmp_path / "fox.mp4")
    with tiny_server.client() as client:
        t0 = time.monotonic()
        r = upload(client, video)
        assert r.status_code == 202 and time.monotonic() - t0 < 1.0
        job_id = r.json()["id"]
        segments = []
        with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events") as source:
            for sse in source.iter_sse():
                if sse.event == "segment":
                    segments.append(json.loads(sse.data))
                if sse.event in ("done", "failed"):
                    assert sse.event == "done", sse.data
                    break
        assert segments
        text = transcript_text(client, job_id)
        assert wer(SENTENCE, text) < 0.3, text


def test_recorded_jfk(tiny_server: LiveServer) -> None:
    clip = shared_clip("fw_jfk.flac")
    if clip is None:
        pytest.skip("../shared/data/speech/fw_jfk.flac is not beside the checkout")
    with tiny_server.client() as client:
        job_id = upload(client, clip).json()["id"]
        job = wait_done(client, job_id)
        assert job["status"] == "done" and job["language"] == "en"
        text = transcript_text(client, job_id).lower()
        assert "ask not what your country can do for you" in text.replace(",", "")


def _children_named(name: str) -> list[int]:
    me = os.getpid()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError):
            continue
        if comm == name and ppid == me:
            found.append(int(pid))
    return found


def test_cancel_mid_transcription_leaves_no_process_and_no_files(tiny_server: LiveServer, tmp_path: Path) -> None:
    long = make_long_speech(tmp_path / "long.wav", 300, VARIED_SENTENCES)
    with tiny_server.client() as client:
        job_id = upload(client, long).json()["id"]
        deadline = time.monotonic() + 60
        while True:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job["stage"] == "transcribing":
                break
            assert job["status"] in ("queued", "running"), job
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
        assert not tiny_server.state.files.job_dir(job_id).exists()
        assert _children_named("ffmpeg") == []
        assert tiny_server.state.manager.active == 0
        # The model is free for the next job at once.
        short = make_video_with_speech("hello world", tmp_path / "hello.mp4")
        assert wait_done(client, upload(client, short).json()["id"])["status"] == "done"
