"""app/pipeline/jobs.py: the job state machine, on the fake engine with the real store,
files, ffmpeg and VAD, and no server. Every wait is on the job's own events.

    queued ──admission──> running: extracting → detecting_speech → transcribing → done
                                         └──────────── failed / cancelled ───────────┘
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.media.ffmpeg import FfmpegPool
from app.pipeline.events import EventHub
from app.pipeline.jobs import JobManager, ManagerLimits
from batching.fake_engine import FakeEngine
from storage.files import JobFiles
from storage.states import Stage, Status
from storage.store import EventRecord, JobRecord, JobStore
from tests.media import have_tool, speak

pytestmark = pytest.mark.skipif(not (have_tool("ffmpeg") and have_tool("espeak-ng")), reason="needs ffmpeg and espeak-ng")


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speak("The weather today is sunny and warm.", tmp_path_factory.mktemp("jobs") / "say.wav")


class Parts:
    def __init__(self, store: JobStore, files: JobFiles, hub: EventHub, engine: FakeEngine, speech: Path) -> None:
        self.store, self.files, self.hub, self.engine, self.speech = store, files, hub, engine, speech
        self.pool = FfmpegPool(max_processes=2)
        self.managers: list[JobManager] = []

    def manager(self, max_running_jobs: int = 4) -> JobManager:
        manager = JobManager(
            store=self.store, files=self.files, pool=self.pool, engine=self.engine, hub=self.hub,
            multilingual=True, limits=ManagerLimits(max_running_jobs=max_running_jobs),
        )
        self.managers.append(manager)
        return manager

    async def submit(self, manager: JobManager, job_id: str, owner: str = "o", **options: object) -> JobRecord:
        """What an upload does: the file in the job's folder, the row, the first event, the task."""
        self.files.create(job_id)
        self.files.input_path(job_id, ".wav").write_bytes(self.speech.read_bytes())
        now = time.time()
        job = JobRecord(
            id=job_id, owner=owner, status=Status.QUEUED, stage=Stage.QUEUED, progress=0.0, filename="say.wav",
            options={"language": "en", **options}, created_at=now, updated_at=now, duration_s=None,
        )
        await self.store.create_job(job)
        await self.hub.publish(job_id, "status", {"status": Status.QUEUED, "stage": Stage.QUEUED})
        manager.spawn(job)
        return job

    async def events_until(self, job_id: str, *types: str) -> list[EventRecord]:
        """The job's events from the start up to the first of ``types``."""
        seen: list[EventRecord] = []
        stream = self.hub.stream(job_id)
        try:
            async for item in stream:
                if isinstance(item, EventRecord):
                    seen.append(item)
                    if item.type in types:
                        return seen
        finally:
            await stream.aclose()
        raise AssertionError(f"no {types} event for {job_id}")


@pytest.fixture
async def parts(tmp_path: Path, speech: Path) -> AsyncIterator[Parts]:
    store = await JobStore.open(tmp_path / "altyazi.db")
    engine = FakeEngine(hold=asyncio.Event())
    await engine.start()
    made = Parts(store, JobFiles(tmp_path / "data"), EventHub(store), engine, speech)
    yield made
    for manager in made.managers:
        await manager.stop()
    await engine.stop()
    await store.close()


async def test_a_job_goes_through_its_stages_to_done(parts: Parts) -> None:
    manager = parts.manager()
    await parts.submit(manager, "j1")
    assert parts.engine.hold is not None
    parts.engine.hold.set()
    events = await parts.events_until("j1", "done", "failed")
    stages = [e.data.get("stage") for e in events if e.type in ("status", "progress")]
    assert stages[0] == "queued" and "extracting" in stages
    order = [s for s in dict.fromkeys(stages) if s is not None]
    assert order == ["queued", "extracting", "detecting_speech", "transcribing"]
    assert [e.type for e in events][-1] == "done" and any(e.type == "segment" for e in events)
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    job = await parts.store.get_job("j1")
    assert job is not None and (job.status, job.stage, job.progress) == ("done", "done", 1.0)
    transcript = json.loads(parts.files.transcript_path("j1").read_text())
    assert transcript["segments"][0]["text"] == "window 0"


async def test_a_failing_window_fails_the_job_with_its_reason(parts: Parts) -> None:
    manager = parts.manager()
    parts.engine.fail_window("j1", 0)
    await parts.submit(manager, "j1")
    assert parts.engine.hold is not None
    parts.engine.hold.set()
    events = await parts.events_until("j1", "done", "failed")
    assert events[-1].type == "failed" and events[-1].data["error"]["code"]
    job = await parts.store.get_job("j1")
    assert job is not None and job.status == "failed" and job.error_code == events[-1].data["error"]["code"]


async def test_cancel_stops_the_job_and_withdraws_its_windows(parts: Parts) -> None:
    manager = parts.manager()
    await parts.submit(manager, "j1")
    await parts.engine.wait_for_calls(1)  # its window is with the engine, held there
    assert await manager.cancel("j1") is True
    assert parts.engine.stats.items_cancelled >= 1 and parts.engine.completed == []
    assert manager.active == 0 and await manager.cancel("j1") is False


async def test_admission_keeps_jobs_queued_past_max_running(parts: Parts) -> None:
    manager = parts.manager(max_running_jobs=1)
    await parts.submit(manager, "first")
    await parts.engine.wait_for_calls(1)  # first holds the one slot
    await parts.submit(manager, "second")
    await asyncio.sleep(0)  # one loop turn: second's task asks for a slot
    assert manager.queue_position("second") == 1
    second = await parts.store.get_job("second")
    assert second is not None and second.status == "queued"
    assert parts.engine.hold is not None
    parts.engine.hold.set()
    assert (await parts.events_until("second", "done"))[-1].type == "done"


async def test_stop_leaves_jobs_to_resume_and_recover_finishes_them(parts: Parts) -> None:
    first = parts.manager()
    await parts.submit(first, "j1")
    await parts.engine.wait_for_calls(1)
    await first.stop(grace_s=0.0)  # a restart: the job is interrupted, not marked
    job = await parts.store.get_job("j1")
    assert job is not None and job.status == "running"
    assert parts.engine.hold is not None
    parts.engine.hold.set()
    second = parts.manager()
    assert await second.recover() == 1
    events = await parts.events_until("j1", "done", "failed")
    assert events[-1].type == "done"
    job = await parts.store.get_job("j1")
    assert job is not None and job.attempts == 2


async def test_progress_events_carry_an_eta_once_the_rate_is_measured(parts: Parts) -> None:
    manager = parts.manager()
    await parts.submit(manager, "eta1")
    assert manager.eta_seconds("eta1") is None  # nothing measured yet
    assert manager.eta_seconds("unknown") is None
    assert parts.engine.hold is not None
    parts.engine.hold.set()
    events = await parts.events_until("eta1", "done", "failed")
    progress = [e.data for e in events if e.type == "progress"]
    assert progress and all("eta_seconds" in d for d in progress)
    assert all(d["eta_seconds"] is None or d["eta_seconds"] >= 0 for d in progress)
    # The second job starts with the rate the first one measured.
    manager.rates.rate = manager.rates.rate or 50.0
    parts.engine.hold.clear()
    await parts.submit(manager, "eta2")
    events = await parts.events_until("eta2", "progress")
    eta = manager.eta_seconds("eta2")
    assert eta is not None and eta >= 0
    parts.engine.hold.set()
    await parts.events_until("eta2", "done", "failed")
    assert manager.eta_seconds("eta2") in (None, 0.0)


async def test_progress_moves_between_results_at_the_measured_rate(parts: Parts) -> None:
    manager = parts.manager()
    manager.rates.rate = 1000.0  # as measured by earlier jobs: this one's audio takes well under a tick
    await parts.submit(manager, "tick")
    # The engine holds every window: only the ticker can move the bar, up to the audio submitted.
    events = []
    stream = parts.hub.stream("tick")
    try:
        async for item in stream:
            if isinstance(item, EventRecord):
                events.append(item)
                assert item.type != "segment", "the engine is held"
                if item.type == "progress" and item.data["stage"] == "transcribing" and item.data["progress"] > 0.5:
                    break
    finally:
        await stream.aclose()
    moved = [e.data for e in events if e.type == "progress" and e.data["stage"] == "transcribing"]
    assert moved[-1]["progress"] < 1.0 and moved[-1]["eta_seconds"] is not None
    assert parts.engine.hold is not None
    parts.engine.hold.set()
    done = await parts.events_until("tick", "done", "failed")
    progress = [e.data["progress"] for e in done if e.type == "progress"]
    assert progress == sorted(progress)  # never backwards when the real results come


async def test_only_media_that_fits_one_window_is_marked_short(parts: Parts, tmp_path: Path) -> None:
    # The engine may encode a short clip trimmed; windows of long media never are.
    from tests.media import make_long_speech

    manager = parts.manager()
    assert parts.engine.hold is not None
    parts.engine.hold.set()
    await parts.submit(manager, "short")
    await parts.events_until("short", "done", "failed")
    parts.speech = make_long_speech(tmp_path / "long.wav", 45.0, ["The weather today is sunny and warm."], pause_s=3.0)
    await parts.submit(manager, "long")
    await parts.events_until("long", "done", "failed")
    marks = {(w.job_id, w.short_media) for w in parts.engine.calls}
    assert marks == {("short", True), ("long", False)}
