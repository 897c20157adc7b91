"""app/pipeline/admission.py: which queued job starts next. Pure asyncio, no clock: the
tests step the loop and look at who holds a slot."""

from __future__ import annotations

import asyncio

import pytest

from app.pipeline.admission import Admission
from tests.conftest import settle


class Jobs:
    """Starts acquire() calls and records the order in which jobs get their slot."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.started: list[str] = []
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def queue(self, owner: str, job_id: str, cap: int | None = None) -> None:
        async def run() -> None:
            await self.admission.acquire(owner, job_id, cap)
            self.started.append(job_id)

        self.tasks[job_id] = asyncio.create_task(run())

    def finish(self, job_id: str) -> None:
        self.admission.release(job_id)


async def one_slot_three_jobs() -> Jobs:
    """One owner's a, b, c on one slot: a runs, b and c wait."""
    jobs = Jobs(Admission(1))
    for name in ("a", "b", "c"):
        jobs.queue("o", name)
    await settle()
    return jobs


async def test_at_most_max_running_hold_a_slot() -> None:
    jobs = Jobs(Admission(2))
    for name in ("a", "b", "c"):
        jobs.queue("o", name)
    await settle()
    assert jobs.started == ["a", "b"] and jobs.admission.running == 2 and jobs.admission.waiting == 1
    assert jobs.admission.position("c") == 1 and jobs.admission.position("a") is None
    jobs.finish("a")
    await settle()
    assert jobs.started == ["a", "b", "c"] and jobs.admission.waiting == 0


async def test_owners_take_turns() -> None:
    jobs = Jobs(Admission(1))
    for n in range(4):
        jobs.queue("busy", f"busy{n}")
    await settle()
    jobs.queue("quiet", "quiet0")
    await settle()
    # busy's backlog does not sit in front of quiet's one job: one of busy's, then quiet's
    assert [jobs.admission.position(j) for j in ("busy1", "quiet0", "busy2", "busy3")] == [1, 2, 3, 4]
    for expected in ("busy1", "quiet0", "busy2", "busy3"):
        jobs.finish(jobs.started[-1])
        await settle()
        assert jobs.started[-1] == expected


async def test_an_owner_at_its_cap_waits_while_others_start() -> None:
    jobs = Jobs(Admission(4))
    jobs.queue("capped", "c0", cap=1)
    jobs.queue("capped", "c1", cap=1)
    jobs.queue("free", "f0")
    await settle()
    assert sorted(jobs.started) == ["c0", "f0"] and jobs.admission.position("c1") == 1
    jobs.finish("c0")
    await settle()
    assert jobs.started[-1] == "c1"


async def test_cancelling_a_wait_withdraws_it() -> None:
    jobs = await one_slot_three_jobs()
    jobs.tasks["b"].cancel()
    with pytest.raises(asyncio.CancelledError):
        await jobs.tasks["b"]
    assert jobs.admission.position("b") is None and jobs.admission.position("c") == 1
    jobs.finish("a")
    await settle()
    assert jobs.started == ["a", "c"]


async def test_a_job_admitted_as_it_is_cancelled_gives_its_slot_back() -> None:
    jobs = await one_slot_three_jobs()
    jobs.finish("a")  # b's gate opens ...
    jobs.tasks["b"].cancel()  # ... and b is cancelled before it ran
    await settle()
    assert "b" not in jobs.started and jobs.started[-1] == "c" and jobs.admission.running == 1
