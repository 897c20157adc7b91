"""The job store seam (storage.seams.JobRepository): one contract for every implementation.

Only the protocol's methods are used, so a second implementation (the cluster's
database) joins by adding its factory to IMPLEMENTATIONS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from storage.seams import JobRepository
from storage.states import Stage, Status
from storage.store import ExportRecord, JobRecord, JobStore, KeyExists


async def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> JobRepository:
    return await JobStore.open(tmp_path / "altyazi.db")


async def _postgresql(request: pytest.FixtureRequest, tmp_path: Path) -> JobRepository:
    from storage.pg_store import PgJobStore

    # a fresh database on the session's real PostgreSQL (tests/cluster_servers.py)
    return await PgJobStore.open(request.getfixturevalue("postgres").new_database())


IMPLEMENTATIONS: dict[str, Callable[[pytest.FixtureRequest, Path], Awaitable[JobRepository]]] = {"sqlite": _sqlite, "postgresql": _postgresql}


@pytest.fixture(params=[pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.cluster)])
async def repo(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobRepository]:
    store = await IMPLEMENTATIONS[request.param](request, tmp_path)
    yield store
    await store.close()


def job(job_id: str, owner: str = "alice", *, created: float = 100.0, status: str = Status.QUEUED) -> JobRecord:
    return JobRecord(
        id=job_id, owner=owner, status=status, stage=Stage.QUEUED, progress=0.0, filename=f"{job_id}.mp4",
        options={"language": None}, created_at=created, updated_at=created,
    )


def export(export_id: str, job_id: str, *, status: str = Status.QUEUED) -> ExportRecord:
    return ExportRecord(
        id=export_id, job_id=job_id, owner="alice", status=status, progress=0.0,
        options={"mode": "soft"}, created_at=200.0, updated_at=200.0,
    )


async def test_a_job_reads_back_as_written_and_only_for_its_owner(repo: JobRepository) -> None:
    await repo.create_job(job("j1"))
    got = await repo.get_job("j1")
    assert got is not None and got.owner == "alice" and got.options == {"language": None}
    assert got.status == "queued" and got.stage == "queued"
    assert await repo.get_job("j1", owner="alice") is not None
    assert await repo.get_job("j1", owner="bob") is None
    assert await repo.get_job("nope") is None


async def test_update_answers_the_new_record_and_refuses_unknown_ids(repo: JobRepository) -> None:
    await repo.create_job(job("j1"))
    updated = await repo.update_job("j1", status=Status.RUNNING, stage=Stage.TRANSCRIBING, progress=0.5)
    assert (updated.status, updated.stage, updated.progress) == ("running", "transcribing", 0.5)
    assert (await repo.get_job("j1")) == updated
    with pytest.raises(KeyError):
        await repo.update_job("nope", progress=1.0)
    with pytest.raises(ValueError):
        await repo.update_job("j1", status="sleeping")


async def test_listing_is_newest_first_per_owner_with_a_cursor(repo: JobRepository) -> None:
    for i in range(5):
        await repo.create_job(job(f"j{i}", created=100.0 + i))
    await repo.create_job(job("other", owner="bob", created=200.0))
    first = await repo.list_jobs("alice", limit=2)
    assert [j.id for j in first] == ["j4", "j3"]
    rest = await repo.list_jobs("alice", limit=10, before=first[-1].id)
    assert [j.id for j in rest] == ["j2", "j1", "j0"]
    assert [j.id for j in await repo.list_jobs(None, limit=1)] == ["other"]


async def test_status_queries(repo: JobRepository) -> None:
    await repo.create_job(job("q", created=1.0))
    await repo.create_job(job("r", created=2.0, status=Status.RUNNING))
    await repo.create_job(job("d", owner="bob", created=3.0, status=Status.DONE))
    await repo.update_job("d", finished_at=50.0)
    assert [j.id for j in await repo.jobs_with_status((Status.QUEUED, Status.RUNNING))] == ["q", "r"]  # oldest first
    assert await repo.count_jobs((Status.QUEUED, Status.RUNNING)) == 2
    assert await repo.count_jobs((Status.DONE,), owner="alice") == 0
    assert [j.id for j in await repo.finished_before(60.0)] == ["d"]
    assert await repo.finished_before(40.0) == []


async def test_events_are_numbered_per_job_from_one(repo: JobRepository) -> None:
    await repo.create_job(job("a"))
    await repo.create_job(job("b"))
    e1 = await repo.append_event("a", "status", {"status": "queued"})
    e2 = await repo.append_event("a", "segment", {"text": "hi"})
    f1 = await repo.append_event("b", "status", {})
    assert (e1.seq, e2.seq, f1.seq) == (1, 2, 1)
    assert [e.seq for e in await repo.events_after("a", 0)] == [1, 2]
    after = await repo.events_after("a", 1)
    assert [(e.type, e.data) for e in after] == [("segment", {"text": "hi"})]
    assert await repo.events_after("a", 2) == []
    assert [e.seq for e in await repo.events_after("a", 0, limit=1)] == [1]
    with pytest.raises(KeyError):
        await repo.append_event("nope", "status", {})


async def test_windows_are_kept_until_cleared(repo: JobRepository) -> None:
    await repo.create_job(job("j"))
    await repo.save_window("j", 1, {"segments": ["b"]})
    await repo.save_window("j", 0, {"segments": ["a"]})
    await repo.save_window("j", 1, {"segments": ["b2"]})  # a window decoded again replaces itself
    assert await repo.load_windows("j") == {0: {"segments": ["a"]}, 1: {"segments": ["b2"]}}
    await repo.clear_windows("j")
    assert await repo.load_windows("j") == {}


async def test_exports_belong_to_their_job(repo: JobRepository) -> None:
    await repo.create_job(job("j"))
    await repo.create_export(export("e1", "j"))
    await repo.create_export(export("e2", "j", status=Status.RUNNING))
    assert (await repo.update_export("e1", status=Status.DONE, size_bytes=10)).size_bytes == 10
    assert [e.id for e in await repo.list_exports("j")] == ["e1", "e2"]
    assert [e.id for e in await repo.exports_with_status((Status.RUNNING,))] == ["e2"]
    assert await repo.get_export("e1", job_id="other") is None
    await repo.delete_export("e2")
    assert await repo.get_export("e2") is None
    with pytest.raises(KeyError):
        await repo.create_export(export("e3", "no-such-job"))


async def test_deleting_a_job_takes_its_exports_events_and_windows(repo: JobRepository) -> None:
    await repo.create_job(job("j"))
    await repo.create_export(export("e", "j"))
    await repo.append_event("j", "status", {})
    await repo.save_window("j", 0, {})
    await repo.delete_job("j")
    assert await repo.get_job("j") is None
    assert await repo.get_export("e") is None
    assert await repo.events_after("j", 0) == []
    assert await repo.load_windows("j") == {}


async def test_an_idempotency_key_names_one_job_per_owner(repo: JobRepository) -> None:
    await repo.create_job(job("j1"), idempotency_key="k")
    await repo.create_job(job("j2", owner="bob"), idempotency_key="k")  # another owner's key is another key
    await repo.create_job(job("j3"))  # no key: never a clash
    await repo.create_job(job("j4"))
    with pytest.raises(KeyExists):
        await repo.create_job(job("j5"), idempotency_key="k")
    found = await repo.job_for_idempotency_key("alice", "k")
    assert found is not None and found.id == "j1"
    assert await repo.job_for_idempotency_key("alice", "other") is None
    assert await repo.get_job("j5") is None
