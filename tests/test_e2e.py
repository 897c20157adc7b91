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


def test_downloaded_srt_of_long_speech_follows_the_line_rules(tiny_server: LiveServer, tmp_path: Path) -> None:
    # Sentences run together with short pauses: the decoder's segments are long.
    long = make_long_speech(tmp_path / "long.wav", 90, VARIED_SENTENCES, pause_s=0.3)
    with tiny_server.client() as client:
        job_id = upload(client, long).json()["id"]
        etas = []
        with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events") as source:
            for sse in source.iter_sse():
                if sse.event == "progress":
                    etas.append(json.loads(sse.data)["eta_seconds"])
                if sse.event in ("done", "failed"):
                    assert sse.event == "done", sse.data
                    break
        assert any(isinstance(eta, (int, float)) for eta in etas), etas
        raw = client.get(f"/v1/jobs/{job_id}/transcript").json()["segments"]
        assert all(s.get("words") for s in raw)  # word times were computed for the rules
        assert max(len(s["text"].strip()) for s in raw) > 42  # raw segments would break the rules
        srt = client.get(f"/v1/jobs/{job_id}/transcript", params={"format": "srt"}).text
        blocks = [b.split("\n") for b in srt.strip().split("\n\n")]
        lines = [line for b in blocks for line in b[2:]]
        assert max(len(line) for line in lines) <= 42, max(lines, key=len)
        assert max(len(b) - 2 for b in blocks) <= 2
        assert " ".join(lines).split() == " ".join(s["text"] for s in raw).split()  # no word lost or moved
        ass = client.get(f"/v1/jobs/{job_id}/transcript", params={"format": "ass"}).text
        events = [line for line in ass.splitlines() if line.startswith("Dialogue:")]
        assert len(events) == len(blocks) and all("{\\k" in e for e in events)  # karaoke from the word times
