"""Structured logs: one JSON object per line; job lines carry id, owner, stage and timings."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from app.logs import JsonFormatter
from tests.conftest import LiveServer, add_keys, bearer, wait_done
from tests.media import make_tone


def record(msg: str, *args: Any, **extra: Any) -> logging.LogRecord:
    rec = logging.getLogger("altyazi.test").makeRecord("altyazi.test", logging.INFO, __file__, 1, msg, args, None, extra=extra)
    return rec


def test_one_json_object_per_line() -> None:
    line = JsonFormatter().format(record("two\nlines %s", "here", job="abc", run_s=1.5, color_message="\x1b[36mx\x1b[0m"))
    assert "\n" not in line
    data = json.loads(line)
    assert data["msg"] == "two\nlines here" and data["level"] == "info" and data["logger"] == "altyazi.test"
    assert data["job"] == "abc" and data["run_s"] == 1.5
    assert "color_message" not in data  # uvicorn's coloured duplicate of msg
    assert data["ts"].endswith("Z")


def test_exception_stays_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.getLogger("x").makeRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(rec)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exc"]


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(JsonFormatter())

    def emit(self, rec: logging.LogRecord) -> None:
        self.lines.append(self.format(rec))


@pytest.fixture
def captured() -> Iterator[Collect]:
    handler = Collect()
    logger = logging.getLogger("altyazi")
    old = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def test_job_lifecycle_lines(make_server: Callable[..., LiveServer], tmp_path: Path, captured: Collect) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    key = add_keys(data_dir, "alice")["alice"]
    live = make_server(data_dir=data_dir, **{"auth.enabled": True})
    tone = make_tone(tmp_path / "tone.wav", 65)  # three 30-second windows
    with live.client(headers=bearer(key)) as client:
        with open(tone, "rb") as fh:
            r = client.post("/v1/jobs", files={"file": ("tone.wav", fh)}, data={"vad": "false"})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert wait_done(client, job_id)["status"] == "done"
        client.get("/healthz")

    records = [json.loads(line) for line in captured.lines]
    assert not any(key in line for line in captured.lines), "an API key reached the log"
    jobs = [r for r in records if r.get("job") == job_id and r["logger"] == "altyazi.jobs"]
    assert [r["stage"] for r in jobs] == ["extracting", "detecting_speech", "transcribing", "done"]
    assert len({r["owner"] for r in jobs}) == 1 and jobs[0]["owner"] not in ("", "anonymous")
    done = jobs[-1]
    assert done["windows"] == 3  # one line for the job, none per window
    assert done["level"] == "info" and done["msg"] == f"job {job_id} done"
    assert 64 < done["duration_s"] < 66
    for timing in ("queued_s", "run_s", "total_s"):
        assert 0 <= done[timing] < 60, timing
    assert done["total_s"] >= done["run_s"]

    access = [r for r in records if r["logger"] == "altyazi.access"]
    post = next(r for r in access if r["method"] == "POST")
    assert post["route"] == "/v1/jobs" and post["status"] == 202 and post["owner"] == "alice"
    assert post["duration_s"] >= 0
    polls = [r for r in access if r["route"] == "/v1/jobs/{job_id}"]
    assert polls and all(r["path"] == f"/v1/jobs/{job_id}" for r in polls)
    # Probes are at DEBUG, so an INFO log is not a wall of health checks.
    assert not any(r["route"] == "/healthz" and r["level"] == "info" for r in access)
