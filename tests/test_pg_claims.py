"""The cluster's queue on a real PostgreSQL: claims, leases from the database clock, epoch fencing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from storage.claims import CURRENT, Claim, Fenced, StoreUnavailable
from storage.pg_store import LISTENER_NAME, PgJobStore, PgListener
from storage.states import Stage, Status
from storage.store import JobRecord

pytestmark = pytest.mark.cluster


@pytest.fixture
async def store(postgres: Any) -> AsyncIterator[PgJobStore]:
    s = await PgJobStore.open(postgres.new_database())
    yield s
    await s.close()


def job(job_id: str, owner: str = "alice", created: float = 100.0) -> JobRecord:
    return JobRecord(id=job_id, owner=owner, status=Status.QUEUED, stage=Stage.QUEUED, progress=0.0, filename="a.wav",
                     options={}, created_at=created, updated_at=created)  # fmt: skip


async def test_a_claim_takes_each_job_once_and_fairly(store: PgJobStore) -> None:
    await store.create_job(job("a1", created=1))
    await store.create_job(job("a2", created=2))
    await store.create_job(job("b1", "bob", created=3))
    first = await store.claim("n1", 10, 1)
    assert [j.id for j, _ in first] == ["a1"] and first[0][1] == Claim("a1", 1, "n1")
    # alice has one running now: bob's job goes before her second
    assert [j.id for j, _ in await store.claim("n2", 10, 5)] == ["b1", "a2"]
    assert await store.claim("n3", 10, 5) == []
    got = await store.get_job("a1")
    assert got is not None and got.status == Status.RUNNING
    node, epoch, left = await store.lease_of("a1")
    assert (node, epoch) == ("n1", 1) and left is not None and 9 < left <= 10


async def test_concurrent_claims_never_share_a_job(store: PgJobStore) -> None:
    for i in range(20):
        await store.create_job(job(f"j{i}", created=i))
    batches = await asyncio.gather(*(store.claim(f"n{k}", 10, 3) for k in range(8)))
    ids = [j.id for batch in batches for j, _ in batch]
    assert sorted(ids) == sorted(f"j{i}" for i in range(20))


async def test_a_stale_owner_is_fenced_once_another_claims_the_job(store: PgJobStore) -> None:
    await store.create_job(job("j"))
    [(_, old)] = await store.claim("n1", 1, 1)
    token = CURRENT.set(old)
    try:
        await store.save_window("j", 0, {"next": 1})
        await store.append_event("j", "segment", {"id": 0})
        assert (await store.update_job("j", progress=0.5)).progress == 0.5
    finally:
        CURRENT.reset(token)
    assert await store.claim("n2", 10, 1) == []  # the lease holds
    await asyncio.sleep(1.1)
    [(_, new)] = await store.claim("n2", 10, 1)  # the lease ran out (by the database's clock)
    assert new == Claim("j", 2, "n2")
    assert await store.heartbeat("n1", 10, [old]) == set()  # the old owner learns it lost the job
    token = CURRENT.set(old)
    try:
        with pytest.raises(Fenced):
            await store.save_window("j", 1, {"next": 2})
        with pytest.raises(Fenced):
            await store.append_event("j", "segment", {"id": 1})
        with pytest.raises(Fenced):
            await store.update_job("j", progress=0.9)
    finally:
        CURRENT.reset(token)
    assert await store.load_windows("j") == {0: {"next": 1}}
    assert [e.data for e in await store.events_after("j", 0)] == [{"id": 0}]
    assert await store.heartbeat("n2", 10, [new]) == {"j"}


async def test_a_cancel_from_anywhere_ends_the_claim(store: PgJobStore) -> None:
    await store.create_job(job("j"))
    [(_, claim)] = await store.claim("n1", 10, 1)
    await store.update_job("j", status=Status.CANCELLED)  # another node, no claim of its own
    assert await store.heartbeat("n1", 10, [claim]) == set()
    token = CURRENT.set(claim)
    try:
        with pytest.raises(Fenced):
            await store.update_job("j", status=Status.DONE)
    finally:
        CURRENT.reset(token)


async def test_a_delete_from_another_node_fences_every_write_of_the_owner(store: PgJobStore) -> None:
    await store.create_job(job("j"))
    [(_, claim)] = await store.claim("n1", 10, 1)
    await store.delete_job("j")  # DELETE on another node: the row is gone
    token = CURRENT.set(claim)
    try:
        with pytest.raises(Fenced):
            await store.update_job("j", stage=Stage.TRANSCRIBING)
        with pytest.raises(Fenced):
            await store.append_event("j", "progress", {"progress": 0.5})
        with pytest.raises(Fenced):
            await store.save_window("j", 0, {"segments": []})
    finally:
        CURRENT.reset(token)
    with pytest.raises(KeyError):  # without a claim it is simply unknown
        await store.update_job("j", stage=Stage.TRANSCRIBING)


async def test_a_connection_broken_mid_operation_is_store_unavailable(store: PgJobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # asyncpg reports a connection lost between a query and the pool's reset of
    # it as InternalClientError ("cannot switch to state 15; another operation is
    # in progress"): the database went away, not a bug of the job.
    async def broken(*args: Any, **kw: Any) -> None:
        raise asyncpg.InternalClientError("cannot switch to state 15; another operation (2) is in progress")

    monkeypatch.setattr(asyncpg.Connection, "fetch", broken)
    with pytest.raises(StoreUnavailable):
        await store.get_job("j")


async def test_released_and_expired_jobs_are_claimable_at_once(store: PgJobStore) -> None:
    await store.create_job(job("j1", created=1))
    await store.create_job(job("j2", created=2))
    claims = await store.claim("n1", 60, 2)
    await store.release(claims[0][1])
    assert [j.id for j, _ in await store.claim("n2", 60, 5)] == ["j1"]
    assert await store.expire_node("n1") == 1  # n1 restarted: its other job is free
    [(again, claim)] = await store.claim("n2", 60, 5)
    assert again.id == "j2" and claim.epoch == 2


async def test_the_listener_hears_committed_events_and_new_jobs_and_comes_back(store: PgJobStore, postgres: Any) -> None:
    events: list[str] = []
    jobs: list[bool] = []
    connects: list[bool] = []
    listener = PgListener(store.dsn, on_event=events.append, on_job=lambda: jobs.append(True), on_connect=lambda: connects.append(True), check_s=0.2)
    task = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(listener.connected.wait(), 10)
        await store.create_job(job("j"))
        await store.append_event("j", "status", {})
        for _ in range(100):
            if events and jobs:
                break
            await asyncio.sleep(0.02)
        assert events == ["j"] and jobs
        # the server ends the listening session (as a restart or failover would): it reconnects
        conn = await asyncpg.connect(store.dsn)
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()", LISTENER_NAME
            )
        finally:
            await conn.close()
        for _ in range(200):
            if len(connects) >= 2:
                break
            await asyncio.sleep(0.02)
        assert len(connects) >= 2 and listener.reconnects >= 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
