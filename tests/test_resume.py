"""A job stopped while the rest of a cut window waits to be decoded resumes exactly there."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from batching.fake_engine import FakeEngine
from batching.types import Segment, WindowRequest, WindowResult
from tests.conftest import LiveServer, wait_done
from tests.media import make_tone

LEFT_OPEN_S = 5.0  # what the model leaves unfinished at every cut


class StopsAtCuts(FakeEngine):
    """A fake model that leaves the last 5 s of every cut window unwritten,
    and, with ``gate``, holds every window after the first until it is set."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        super().__init__()
        self.gate = gate

    async def _work(self, window: WindowRequest) -> WindowResult:
        if self.gate is not None and window.index >= 1:
            await self.gate.wait()
        return await super()._work(window)

    @staticmethod
    def result_for(window: WindowRequest) -> WindowResult:
        end = window.offset + window.duration
        covered = end - LEFT_OPEN_S if window.ends_in_speech else None
        seg = Segment(start=round(window.offset, 3), end=round(covered or end, 3), text=f"at {window.offset:.0f}")
        return WindowResult((seg,), "en", 1.0, covered_until=covered)


def test_a_carried_window_survives_a_restart(make_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    tone = make_tone(tmp_path / "tone.wav", 65)  # without VAD: windows cut at 30 and 60 s
    data = tmp_path / "data"
    first = StopsAtCuts(gate=asyncio.Event())  # never set: only the first window finishes
    live = make_server(engine_factory=lambda c: (first, True, "fake"), data_dir=data)
    with httpx.Client(base_url=live.url, timeout=30) as client:
        with open(tone, "rb") as fh:
            job_id = client.post("/v1/jobs", files={"file": ("t.wav", fh)}, data={"vad": "false"}).json()["id"]
        deadline = time.monotonic() + 30
        while len(first.calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        # The first window (0-30 s) is saved, its last 5 s are waiting in the next.
        assert [(w.offset, w.ends_in_speech) for w in first.calls] == [(0.0, True), (25.0, True)]
    live.stop()

    second = StopsAtCuts()
    again = make_server(engine_factory=lambda c: (second, True, "fake"), data_dir=data)
    with httpx.Client(base_url=again.url, timeout=30) as client:
        assert wait_done(client, job_id)["status"] == "done"
        segments = client.get(f"/v1/jobs/{job_id}/transcript").json()["segments"]
    # The restart decodes from 25 s on, as an uninterrupted run would: 25-55
    # (cut inside the 30-60 window, 50 s kept), 50-60 (cut, 55 kept), 55-65.
    assert [(w.offset, round(w.duration, 3)) for w in second.calls] == [(25.0, 30.0), (50.0, 10.0), (55.0, 10.0)]
    assert [(s["start"], s["end"]) for s in segments] == [(0.0, 25.0), (25.0, 50.0), (50.0, 55.0), (55.0, 65.0)]
    assert [s["id"] for s in segments] == [0, 1, 2, 3]
