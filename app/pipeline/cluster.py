"""One node of a cluster: it pulls whole jobs from the shared queue and keeps its leases.

The single box spawns a job's task when the upload is accepted. A node of a
cluster instead claims jobs from the database (storage.pg_store.PgJobStore)
while it holds fewer than ``max_jobs`` and its batcher has no backlog beyond
them, so batching stays local and a busy node leaves work to the others. A
heartbeat every third of the lease renews the leases of the jobs it holds;
a job whose lease it could not renew (another node claimed it after this one
was paused or cut off, a cancel or delete from any node) is dropped at once,
and its later writes are fenced anyway. A node that stops cleanly gives its
jobs back to the queue; one that dies leaves them to be claimed when their
leases run out, and they resume after their last stored window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol

from app.pipeline.jobs import JobManager
from storage.claims import Claim, StoreUnavailable
from storage.store import JobRecord

log = logging.getLogger("altyazi.cluster")


class JobQueue(Protocol):
    """What a node needs of the shared store (storage.pg_store.PgJobStore implements it)."""

    async def claim(self, node: str, lease_s: float, limit: int = 1) -> list[tuple[JobRecord, Claim]]: ...

    async def heartbeat(self, node: str, lease_s: float, claims: Sequence[Claim]) -> set[str]: ...

    async def release(self, claim: Claim) -> None: ...

    async def expire_node(self, node: str) -> int: ...


class ClusterNode:
    def __init__(self, manager: JobManager, queue: JobQueue, *, node: str, lease_s: float, poll_s: float, max_jobs: int) -> None:
        self.manager = manager
        self.queue = queue
        self.node = node
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.max_jobs = max_jobs
        self.claimed = 0  # jobs claimed since start (metrics, tests)
        self.dropped = 0  # jobs given up because the claim was lost
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        manager.shared_queue = self.wake

    def wake(self) -> None:
        """A job was queued (here, or announced by the database): look now rather than at the next poll."""
        self._wake.set()

    def room(self) -> int:
        """Jobs this node may still claim: below ``max_jobs``, and none while its batcher holds a backlog."""
        free = self.max_jobs - self.manager.active
        if free <= 0 or self.manager.engine.stats.queue_depth > self.max_jobs * 4:
            return 0
        return free

    async def start(self) -> None:
        # Jobs this node held before a restart need no lease to run out first.
        freed = await self.queue.expire_node(self.node)
        if freed:
            log.info("node %s: %d job(s) of its previous run are free to claim", self.node, freed)
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="cluster-claims"),
            asyncio.create_task(self._heartbeat_loop(), name="cluster-heartbeat"),
        ]

    async def stop(self) -> None:
        """Stop claiming, stop the jobs (their windows saved), and give them back to the queue."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        held = list(self.manager.claims.values())  # read before the tasks end and forget them
        await self.manager.stop_claimed()
        for claim in held:
            try:
                await self.queue.release(claim)
            except StoreUnavailable:
                break  # their leases run out instead

    async def _claim_loop(self) -> None:
        while True:
            self._wake.clear()
            room = self.room()
            claimed: list[tuple[JobRecord, Claim]] = []
            if room:
                try:
                    claimed = await self.queue.claim(self.node, self.lease_s, room)
                except StoreUnavailable as exc:
                    log.warning("node %s: cannot claim jobs: %s", self.node, exc)
                except Exception:  # a bug must not stop this node from ever claiming again
                    log.exception("node %s: claiming failed", self.node)
            for job, claim in claimed:
                self.claimed += 1
                log.info("node %s claimed job %s (epoch %d)", self.node, job.id, claim.epoch)
                self.manager.spawn(job, claim)
            if claimed and len(claimed) == room:
                continue  # there may be more, and room for them once these start
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            held = dict(self.manager.claims)
            if not held:
                continue
            try:
                alive = await self.queue.heartbeat(self.node, self.lease_s, list(held.values()))
            except StoreUnavailable as exc:
                # The leases may run out meanwhile; then the writes are fenced and the jobs dropped.
                log.warning("node %s: heartbeat failed: %s", self.node, exc)
                continue
            except Exception:
                log.exception("node %s: heartbeat failed", self.node)
                continue
            for job_id, claim in held.items():
                if job_id not in alive and self.manager.claims.get(job_id) == claim:
                    self.dropped += 1
                    log.warning("node %s lost job %s (epoch %d): cancelled, deleted or claimed by another node; dropping it", self.node, job_id, claim.epoch)
                    await self.manager.drop(job_id)
            if len(held) > len(alive):
                self.wake()  # room again
