from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage.files import JobFiles
from storage.retention import RetentionSweeper
from storage.store import JobRecord, JobStore

HOUR = 3600.0
NOW = 1_000_000_000.0


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[JobStore]:
    s = await JobStore.open(tmp_path / "altyazi.db")
    yield s
    await s.close()


@pytest.fixture
def jf(tmp_path: Path) -> JobFiles:
    return JobFiles(tmp_path / "data")


async def add(store: JobStore, jf: JobFiles, job_id: str, status: str, finished_hours_ago: float | None) -> None:
    finished = None if finished_hours_ago is None else NOW - finished_hours_ago * HOUR
    await store.create_job(
        JobRecord(job_id, "alice", status, "x", 0.0, "a.mp4", {}, created_at=NOW - 100 * HOUR,
                  updated_at=NOW - 100 * HOUR, finished_at=finished)
    )
    await store.append_event(job_id, "status", {"status": status})
    jf.input_path(job_id, ".mp4").parent.mkdir(parents=True, exist_ok=True)
    jf.input_path(job_id, ".mp4").write_bytes(b"video")


async def test_sweep_deletes_only_old_finished_unpinned(store: JobStore, jf: JobFiles) -> None:
    await add(store, jf, "old-done", "done", 30)
    await add(store, jf, "old-failed", "failed", 25)
    await add(store, jf, "old-cancelled", "cancelled", 48)
    await add(store, jf, "new-done", "done", 1)
    await add(store, jf, "running", "running", None)
    await add(store, jf, "queued", "queued", None)
    await add(store, jf, "pinned", "done", 30)
    deleted_hook: list[str] = []

    async def on_delete(job_id: str) -> None:
        deleted_hook.append(job_id)

    sweeper = RetentionSweeper(store, jf, retention_hours=24, clock=FakeClock(), on_delete=on_delete)
    with jf.pin("pinned"):
        deleted = await sweeper.sweep_once()
    assert sorted(deleted) == ["old-cancelled", "old-done", "old-failed"]
    assert sorted(deleted_hook) == sorted(deleted)
    for job_id in deleted:
        assert await store.get_job(job_id) is None
        assert await store.events_after(job_id, 0) == []
        assert not jf.job_dir(job_id).exists()
    for job_id in ["new-done", "running", "queued", "pinned"]:
        assert await store.get_job(job_id) is not None
        assert jf.find_input(job_id) is not None

    # once the download is over the pinned job goes too
    assert await sweeper.sweep_once() == ["pinned"]
    assert await sweeper.sweep_once() == []


async def test_zero_keeps_forever(store: JobStore, jf: JobFiles) -> None:
    await add(store, jf, "ancient", "done", 24 * 365 * 10)
    sweeper = RetentionSweeper(store, jf, retention_hours=0, clock=FakeClock())
    assert await sweeper.sweep_once() == []
    assert await store.get_job("ancient") is not None and jf.find_input("ancient") is not None


def test_rejects_bad_settings(jf: JobFiles) -> None:
    with pytest.raises(ValueError):
        RetentionSweeper(None, jf, retention_hours=-1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RetentionSweeper(None, jf, retention_hours=float("nan"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RetentionSweeper(None, jf, retention_hours=1, interval_s=0)  # type: ignore[arg-type]


async def test_orphan_folders(store: JobStore, jf: JobFiles) -> None:
    await add(store, jf, "has-row", "running", None)
    for job_id in ("orphan-old", "orphan-new", "orphan-pinned"):
        (jf.create(job_id) / "input.mp4").write_bytes(b"x")
    old = NOW - 48 * HOUR
    for job_id in ("orphan-old", "orphan-pinned", "has-row"):
        for p in (jf.job_dir(job_id), jf.job_dir(job_id) / "input.mp4"):
            os.utime(p, (old, old))
    os.utime(jf.job_dir("orphan-new") / "input.mp4", (NOW, NOW))  # an upload still streaming

    sweeper = RetentionSweeper(store, jf, retention_hours=24, clock=FakeClock())
    with jf.pin("orphan-pinned"):
        assert await sweeper.sweep_orphans() == ["orphan-old"]
    assert sorted(jf.job_ids()) == ["has-row", "orphan-new", "orphan-pinned"]


async def test_run_survives_a_failing_sweep(store: JobStore, jf: JobFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    await add(store, jf, "old", "done", 30)
    deleted = asyncio.Event()

    async def on_delete(job_id: str) -> None:
        deleted.set()

    real = store.finished_before
    calls = 0

    async def flaky(cutoff: float) -> list[JobRecord]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk hiccup")
        return await real(cutoff)

    monkeypatch.setattr(store, "finished_before", flaky)
    sweeper = RetentionSweeper(store, jf, retention_hours=24, interval_s=0.001, clock=FakeClock(), on_delete=on_delete)
    task = asyncio.create_task(sweeper.run())
    try:
        await asyncio.wait_for(deleted.wait(), timeout=5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert calls >= 2 and await store.get_job("old") is None
