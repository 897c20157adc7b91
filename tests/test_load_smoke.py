"""The load test in small: 10 users at once against a real server subprocess (tiny.en).

Asserts that every user's job finishes and that every SRT is valid; it asserts
no timings, which depend on the machine and whatever else runs on it.
bench/load.py holds the machinery and measures the full-size runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.clips import assign, build_clips
from bench.load import RunConfig, run_once, srt_problem
from tests.media import ToolMissing, have_tool

pytestmark = pytest.mark.slow


def test_srt_check() -> None:
    good = "1\n00:00:00,000 --> 00:00:01,500\nHello.\n\n2\n00:00:01,500 --> 00:01:02,000\nTwo\nlines.\n\n"
    assert srt_problem(good) is None
    assert srt_problem("") == "the SRT is empty"
    assert "numbered" in (srt_problem(good.replace("2\n00", "3\n00")) or "")
    assert "time line" in (srt_problem(good.replace("00:00:01,500 -->", "0:00:01.500 -->", 1)) or "")
    assert "ends before" in (srt_problem("1\n00:00:02,000 --> 00:00:01,000\nx\n") or "")


def test_ten_users_at_once(tmp_path: Path) -> None:
    if not have_tool("ffmpeg"):
        pytest.skip("ffmpeg is not on PATH")
    try:
        clips = build_clips(tmp_path / "clips", (3, 4, 5, 6))
    except ToolMissing as exc:
        pytest.skip(str(exc))
    cfg = RunConfig(users=10, clips=assign(10, clips), arrival="burst", timeout_s=120)
    run = run_once(cfg, log_dir=tmp_path)
    assert run["errors"] == [], "\n".join(run["errors"]) + "\n" + (tmp_path / "server-10-batched.log").read_text()[-3000:]
    assert run["srt_ok"] == 10
    assert all(u["cues"] >= 1 and u["segments"] >= 1 for u in run["users_detail"])
    assert run["server_exit_status"] == 0
