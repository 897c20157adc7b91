from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage.store import (
    SCHEMA_VERSION,
    ExportRecord,
    InvalidCursor,
    JobRecord,
    JobStore,
)

ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[JobStore]:
    s = await JobStore.open(tmp_path / "db" / "altyazi.db", clock=clock)
    yield s
    await s.close()


def job(job_id: str, owner: str = "alice", *, created: float = 100.0, status: str = "queued", **kw: object) -> JobRecord:
    fields: dict[str, object] = {"options": {"language": "auto"}, **kw}
    return JobRecord(
        id=job_id, owner=owner, status=status, stage="upload", progress=0.0, filename=f"{job_id}.mp4",
        created_at=created, updated_at=created, **fields,  # type: ignore[arg-type]
    )


def export(export_id: str, job_id: str, *, created: float = 200.0, status: str = "queued") -> ExportRecord:
    return ExportRecord(
        id=export_id, job_id=job_id, owner="alice", status=status, progress=0.0,
        options={"mode": "burn", "container": "mp4"}, created_at=created, updated_at=created,
    )


# ------------------------------------------------------------------ jobs


async def test_create_get_update_roundtrip(store: JobStore, clock: FakeClock) -> None:
    rec = job("j1", media={"streams": [{"codec": "aac"}]}, options={"prompt": "Türkçe altyazı 字幕", "n": [1, 2.5]})
    await store.create_job(rec)
    assert await store.get_job("j1") == rec

    clock.now = 2_000_000.0
    updated = await store.update_job("j1", status="running", stage="transcribe", progress=0.5, attempts=1,
                                     started_at=123.0, media=None)
    assert updated.status == "running" and updated.stage == "transcribe" and updated.progress == 0.5
    assert updated.attempts == 1 and updated.started_at == 123.0 and updated.media is None
    assert updated.updated_at == 2_000_000.0 and updated.created_at == 100.0
    assert await store.get_job("j1") == updated


async def test_update_validates(store: JobStore) -> None:
    await store.create_job(job("j1"))
    with pytest.raises(TypeError):
        await store.update_job("j1", colour="blue")
    with pytest.raises(TypeError):
        await store.update_job("j1", owner="mallory")
    with pytest.raises(TypeError):
        await store.update_job("j1", updated_at=5.0)
    with pytest.raises(ValueError):
        await store.update_job("j1", status="exploded")
    with pytest.raises(KeyError):
        await store.update_job("nope", status="done")
    # rounding overshoot is clamped, not an error
    assert (await store.update_job("j1", progress=1.0000001)).progress == 1.0
    with pytest.raises(ValueError):
        await store.update_job("j1", progress=float("nan"))


async def test_create_rejects_duplicates_and_bad_status(store: JobStore) -> None:
    await store.create_job(job("j1"))
    with pytest.raises(ValueError, match="already exists"):
        await store.create_job(job("j1"))
    with pytest.raises(ValueError):
        await store.create_job(job("j2", status="weird"))


async def test_owner_isolation(store: JobStore) -> None:
    await store.create_job(job("a1", "alice"))
    await store.create_job(job("b1", "bob"))
    assert await store.get_job("a1", owner="alice") is not None
    assert await store.get_job("a1", owner="bob") is None
    assert [j.id for j in await store.list_jobs("bob")] == ["b1"]
    assert {j.id for j in await store.list_jobs(None)} == {"a1", "b1"}
    # another owner's id is no cursor for me
    with pytest.raises(InvalidCursor):
        await store.list_jobs("bob", before="a1")


async def test_pagination_newest_first_with_ties(store: JobStore) -> None:
    # 25 jobs over 5 distinct timestamps, so the id tiebreak matters
    for i in range(25):
        await store.create_job(job(f"j{i:02d}", created=float(i // 5)))
    await store.create_job(job("other", "bob", created=99.0))
    expected = sorted((j for j in [f"j{i:02d}" for i in range(25)]), key=lambda s: (int(s[1:]) // 5, s), reverse=True)

    seen: list[str] = []
    before = None
    while True:
        page = await store.list_jobs("alice", limit=10, before=before)
        if not page:
            break
        assert len(page) <= 10
        seen += [j.id for j in page]
        before = page[-1].id
    assert seen == expected

    with pytest.raises(InvalidCursor):
        await store.list_jobs("alice", before="deleted-meanwhile")
    with pytest.raises(ValueError):
        await store.list_jobs("alice", limit=0)


async def test_status_queries(store: JobStore) -> None:
    await store.create_job(job("q2", created=2.0))
    await store.create_job(job("q1", created=1.0))
    await store.create_job(job("r1", "bob", created=3.0, status="running"))
    await store.create_job(job("d1", created=4.0, status="done", finished_at=50.0))
    await store.create_job(job("f1", created=5.0, status="failed", finished_at=500.0))
    await store.create_job(job("c1", created=6.0, status="cancelled"))  # no finished_at: falls back to updated_at

    assert [j.id for j in await store.jobs_with_status(["queued", "running"])] == ["q1", "q2", "r1"]
    assert await store.jobs_with_status([]) == []
    assert await store.count_jobs(["queued", "running"]) == 3
    assert await store.count_jobs(["queued", "running"], owner="bob") == 1
    assert await store.count_jobs([]) == 0
    assert [j.id for j in await store.finished_before(100.0)] == ["d1", "c1"]


# ------------------------------------------------------------------ events


async def test_event_seq_is_monotonic_under_concurrency(store: JobStore) -> None:
    await store.create_job(job("j1"))
    await store.create_job(job("j2"))
    recs = await asyncio.gather(
        *(store.append_event("j1" if i % 3 else "j2", "segment", {"i": i}) for i in range(200))
    )
    for job_id in ("j1", "j2"):
        seqs = [r.seq for r in recs if r.job_id == job_id]
        # gather starts them in order and the store keeps submission order
        assert seqs == list(range(1, len(seqs) + 1))
    assert await store.last_event_seq("j1") == 133
    assert await store.last_event_seq("j2") == 67
    assert await store.last_event_seq("missing") == 0

    after = await store.events_after("j1", 130)
    assert [e.seq for e in after] == [131, 132, 133]
    assert after[0].type == "segment" and after[0].data["i"] == [r for r in recs if r.job_id == "j1"][130].data["i"]
    assert [e.seq for e in await store.events_after("j1", 0, limit=5)] == [1, 2, 3, 4, 5]
    assert await store.events_after("j1", 133) == []


async def test_event_batches_and_failures(store: JobStore) -> None:
    await store.create_job(job("j1"))
    recs = await store.append_events([("j1", "progress", {"p": 0.1}), ("j1", "segment", {"text": "merhaba"})])
    assert [r.seq for r in recs] == [1, 2]
    with pytest.raises(KeyError):
        await store.append_events([("j1", "progress", {}), ("missing", "progress", {})])
    assert await store.last_event_seq("j1") == 2  # the whole batch rolled back
    assert await store.append_events([]) == []

    # one failing call in a commit group fails alone
    results = await asyncio.gather(
        store.append_event("j1", "a", {}), store.append_event("nope", "b", {}), store.append_event("j1", "c", {}),
        return_exceptions=True,
    )
    assert isinstance(results[1], KeyError)
    assert [e.type for e in await store.events_after("j1", 2)] == ["a", "c"]


async def test_cancelled_caller_write_still_lands(store: JobStore) -> None:
    await store.create_job(job("j1"))
    task = asyncio.ensure_future(store.append_event("j1", "progress", {}))
    await asyncio.sleep(0)  # let it submit
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the writer runs calls in order, so once a later write has returned the
    # cancelled one has been committed (reads only see writes that returned)
    await store.clear_windows("j1")
    assert await store.last_event_seq("j1") == 1


async def test_loop_is_not_blocked(store: JobStore) -> None:
    await store.create_job(job("j1"))
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    t = asyncio.create_task(ticker())
    for _ in range(20):
        await store.append_events([("j1", "segment", {"text": "x" * 500})] * 50)
    stop.set()
    await t
    # generous: the 2-core CI box is shared, but a blocking call would show up as
    # one gap covering the whole run
    assert max(gaps) < 0.25


# ------------------------------------------------------------------ windows, exports, cascade


async def test_windows(store: JobStore) -> None:
    await store.create_job(job("j1"))
    await store.save_window("j1", 2, {"segments": [{"text": "b"}]})
    await store.save_window("j1", 0, {"segments": [{"text": "a"}]})
    await store.save_window("j1", 2, {"segments": [{"text": "b2"}]})  # replaces
    assert await store.load_windows("j1") == {0: {"segments": [{"text": "a"}]}, 2: {"segments": [{"text": "b2"}]}}
    with pytest.raises(KeyError):
        await store.save_window("missing", 0, {})
    await store.clear_windows("j1")
    assert await store.load_windows("j1") == {}


async def test_exports(store: JobStore, clock: FakeClock) -> None:
    await store.create_job(job("j1"))
    await store.create_job(job("j2"))
    await store.create_export(export("e2", "j1", created=300.0))
    await store.create_export(export("e1", "j1", created=200.0))
    await store.create_export(export("e3", "j2", status="running"))
    with pytest.raises(KeyError):
        await store.create_export(export("e9", "missing"))
    with pytest.raises(ValueError):
        await store.create_export(export("e1", "j1"))

    assert [e.id for e in await store.list_exports("j1")] == ["e1", "e2"]
    assert (await store.get_export("e1", job_id="j1")) == export("e1", "j1")
    assert await store.get_export("e1", job_id="j2") is None
    assert await store.get_export("nope") is None

    clock.now = 5000.0
    done = await store.update_export("e1", status="done", progress=1.0, finished_at=5000.0,
                                     filename="clip.subtitled.mp4", size_bytes=12345)
    assert done.status == "done" and done.size_bytes == 12345 and done.updated_at == 5000.0
    with pytest.raises(TypeError):
        await store.update_export("e1", job_id="j2")
    with pytest.raises(KeyError):
        await store.update_export("nope", progress=0.5)
    assert [e.id for e in await store.exports_with_status(["queued", "running"])] == ["e3", "e2"]


async def test_delete_cascades(store: JobStore) -> None:
    await store.create_job(job("j1"))
    await store.create_job(job("j2"))
    for j in ("j1", "j2"):
        await store.append_event(j, "status", {})
        await store.save_window(j, 0, {})
        await store.create_export(export(f"e-{j}", j))
    await store.delete_job("j1")
    await store.delete_job("j1")  # idempotent
    assert await store.get_job("j1") is None
    assert await store.events_after("j1", 0) == []
    assert await store.load_windows("j1") == {}
    assert await store.get_export("e-j1") is None
    # the other job is untouched
    assert len(await store.events_after("j2", 0)) == 1 and await store.get_export("e-j2") is not None
    assert await store.integrity_check() == ["ok"]


# ------------------------------------------------------------------ lifecycle, schema


async def test_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    s = await JobStore.open(path)
    await s.create_job(job("j1"))
    await s.close()
    await s.close()  # idempotent
    with pytest.raises(RuntimeError):
        await s.get_job("j1")
    s = await JobStore.open(path)
    try:
        assert (await s.get_job("j1")) is not None
    finally:
        await s.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_refuses_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        await JobStore.open(path)


# ------------------------------------------------------------------ crash durability

_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from storage.store import JobRecord, JobStore

    async def main() -> None:
        s = await JobStore.open(Path(sys.argv[1]))
        for j in ("j1", "j2"):
            await s.create_job(JobRecord(j, "o", "running", "transcribe", 0.0, "f.mp4", {}, 1.0, 1.0))
        n = 0
        while True:
            n += 1
            # concurrent appends exercise the group commit; each printed line is
            # a call that has returned, i.e. a committed row
            recs = await asyncio.gather(*(s.append_event("j1" if k % 2 else "j2", "segment",
                                                         {"n": n, "pad": "x" * 300}) for k in range(8)))
            await s.save_window("j1", n, {"n": n})
            await s.update_job("j2", progress=min(1.0, n / 1e6))
            print(" ".join(f"{r.job_id}:{r.seq}" for r in recs), f"w:{n}", flush=True)

    asyncio.run(main())
    """
)


def test_survives_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(db), str(ROOT)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    committed: list[str] = []
    deadline = time.monotonic() + 15
    try:
        while len(committed) < 2000 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            committed += line.split()
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: it is writing as fast as it can
        rest = proc.stdout.read()
        proc.stdout.close()
        proc.wait()
    committed += rest.split()  # printed before the kill, so committed too
    assert proc.returncode == -signal.SIGKILL
    assert len(committed) >= 2000, "the writer did not get going"

    async def check() -> None:
        s = await JobStore.open(db)
        try:
            assert await s.integrity_check() == ["ok"]
            windows = await s.load_windows("j1")
            for tag in committed:
                kind, num = tag.split(":")
                if kind == "w":
                    assert int(num) in windows
                else:
                    assert await s.last_event_seq(kind) >= int(num)
            for j in ("j1", "j2"):
                events = await s.events_after(j, 0, limit=1_000_000)
                # no holes: every seq from 1 to the last is there
                assert [e.seq for e in events] == list(range(1, len(events) + 1))
            # and the store still takes writes
            rec = await s.append_event("j1", "done", {})
            assert rec.seq == await s.last_event_seq("j1")
        finally:
            await s.close()

    asyncio.run(check())
