"""The event bus seam (app.pipeline.events.EventBus): one contract for every implementation,
then what the in-process hub adds (bounded subscriber queues). No sleeps: every
step waits on the bus itself.

The cluster's bus is the same hub on PostgreSQL with ``local_delivery=False``:
its subscribers hear of events only through the node's LISTEN connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from app.pipeline.events import CaughtUp, EventBus, EventHub, Heartbeat, Item, Shutdown
from storage.states import Stage, Status
from storage.store import EventRecord, JobRecord, JobStore

async def add_jobs(s: Any) -> None:
    for job_id in ("j", "other"):
        await s.create_job(JobRecord(
            id=job_id, owner="o", status=Status.QUEUED, stage=Stage.QUEUED, progress=0.0, filename="f.mp4",
            options={}, created_at=1.0, updated_at=1.0,
        ))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[JobStore]:
    s = await JobStore.open(tmp_path / "altyazi.db")
    await add_jobs(s)
    yield s
    await s.close()


@contextlib.asynccontextmanager
async def in_process(request: pytest.FixtureRequest) -> AsyncIterator[EventBus]:
    s = await JobStore.open(request.getfixturevalue("tmp_path") / "altyazi.db")
    await add_jobs(s)
    try:
        yield EventHub(s)
    finally:
        await s.close()


@contextlib.asynccontextmanager
async def postgresql(request: pytest.FixtureRequest) -> AsyncIterator[EventBus]:
    from storage.pg_store import PgJobStore, PgListener

    s = await PgJobStore.open(request.getfixturevalue("postgres").new_database())
    await add_jobs(s)
    hub = EventHub(s, local_delivery=False)
    listener = PgListener(s.dsn, on_event=hub.poke, on_job=lambda: None, on_connect=lambda: hub.poke(None))
    task = asyncio.create_task(listener.run())
    await asyncio.wait_for(listener.connected.wait(), 10)
    try:
        yield hub
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await s.close()


IMPLEMENTATIONS: dict[str, Callable[[pytest.FixtureRequest], contextlib.AbstractAsyncContextManager[EventBus]]] = {
    "in_process": in_process,
    "postgresql": postgresql,
}


@pytest.fixture(params=[pytest.param("in_process"), pytest.param("postgresql", marks=pytest.mark.cluster)])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[EventBus]:
    async with IMPLEMENTATIONS[request.param](request) as b:
        yield b


async def take(stream: AsyncIterator[Item], n: int) -> list[Item]:
    return [await anext(stream) for _ in range(n)]


def kinds(items: list[Item]) -> list[object]:
    return [i.type if isinstance(i, EventRecord) else type(i).__name__ for i in items]


async def test_backlog_then_caught_up_then_live(bus: EventBus) -> None:
    await bus.publish("j", "status", {"status": "queued"})
    await bus.publish("j", "progress", {"progress": 0.1})
    stream = bus.stream("j")
    assert kinds(await take(stream, 3)) == ["status", "progress", "CaughtUp"]
    assert bus.subscriber_count == 1
    live = await bus.publish("j", "segment", {"text": "hi"})
    got = await anext(stream)
    assert isinstance(got, EventRecord) and (got.seq, got.data) == (live.seq, {"text": "hi"})
    await stream.aclose()
    assert bus.subscriber_count == 0


async def test_resume_after_a_sequence_number(bus: EventBus) -> None:
    for i in range(4):
        await bus.publish("j", "progress", {"i": i})
    stream = bus.stream("j", after_seq=2)
    items = await take(stream, 3)
    assert [i.seq for i in items if isinstance(i, EventRecord)] == [3, 4] and isinstance(items[-1], CaughtUp)
    await stream.aclose()


async def test_a_jobs_stream_shows_only_that_job(bus: EventBus) -> None:
    stream = bus.stream("j")
    assert isinstance(await anext(stream), CaughtUp)
    await bus.publish("other", "status", {})
    await bus.publish("j", "done", {})
    got = await anext(stream)
    assert isinstance(got, EventRecord) and (got.job_id, got.type) == ("j", "done")
    await stream.aclose()


async def test_every_event_once_in_order_across_subscribe_and_backlog(bus: EventBus) -> None:
    await bus.publish("j", "a", {})
    stream = bus.stream("j")
    first = await anext(stream)  # subscribed now; the backlog read is under way
    await bus.publish("j", "b", {})
    rest = await take(stream, 2)
    records = [i for i in [first, *rest] if isinstance(i, EventRecord)]
    if len(records) < 2:  # "b" came live, after CaughtUp
        records.append(await anext(stream))  # type: ignore[arg-type]
    assert [r.type for r in records] == ["a", "b"] and [r.seq for r in records] == [1, 2]
    await stream.aclose()


async def test_close_ends_every_stream_with_shutdown(bus: EventBus) -> None:
    one, two = bus.stream("j"), bus.stream("other")
    assert isinstance(await anext(one), CaughtUp) and isinstance(await anext(two), CaughtUp)
    bus.close()
    assert isinstance(await anext(one), Shutdown) and isinstance(await anext(two), Shutdown)
    with pytest.raises(StopAsyncIteration):
        await anext(one)
    late = bus.stream("j")
    assert isinstance(await anext(late), Shutdown)  # a stream opened while stopping ends at once
    for s in (one, two, late):
        await s.aclose()


async def test_heartbeat_when_nothing_happens(bus: EventBus) -> None:
    stream = bus.stream("j", heartbeat_s=0)  # 0: the heartbeat is due at once, no waiting on time
    assert isinstance(await anext(stream), CaughtUp)
    assert isinstance(await anext(stream), Heartbeat)
    await bus.publish("j", "done", {})
    got = await anext(stream)
    while isinstance(got, Heartbeat):
        # Heartbeats are due at once, so more may come before the event does: on
        # PostgreSQL it reaches the stream through a notification, not in-process.
        got = await anext(stream)
    assert isinstance(got, EventRecord) and got.type == "done"
    await stream.aclose()


# ---- the in-process hub -------------------------------------------------------------


async def test_a_slow_subscriber_reads_on_from_the_store_instead_of_growing_its_queue(store: JobStore) -> None:
    hub = EventHub(store, queue_size=2)
    stream = hub.stream("j")
    assert isinstance(await anext(stream), CaughtUp)
    for i in range(10):  # nobody reads: only 2 fit in the queue
        await hub.publish("j", "segment", {"i": i})
    got = await take(stream, 10)
    assert [g.data["i"] for g in got if isinstance(g, EventRecord)] == list(range(10))
    await hub.publish("j", "done", {})
    last = await anext(stream)
    assert isinstance(last, EventRecord) and last.type == "done" and last.seq == 11
    await stream.aclose()


async def test_shutdown_reaches_a_subscriber_whose_queue_is_full(store: JobStore) -> None:
    hub = EventHub(store, queue_size=1)
    stream = hub.stream("j")
    assert isinstance(await anext(stream), CaughtUp)
    await hub.publish("j", "a", {})
    await hub.publish("j", "b", {})
    hub.close()
    items = await take(stream, 3)
    assert kinds(items) == ["a", "b", "Shutdown"]
    await stream.aclose()
