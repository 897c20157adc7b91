"""Which queued job starts next: a bounded number run at once, picked round-robin by owner.

A job "runs" from probing to its last window. Bounding how many run at once
bounds the disk used by extracted audio and the threads used for VAD, while
the batcher still sees the windows of many jobs. Picking round-robin by owner
means one person's fifty uploads do not push everybody else's back, and an
owner cap (a key's ``max_active_jobs``) keeps them waiting here rather than
in the FIFO stages before the batcher (ffmpeg extraction, VAD), where they
would hold up everybody else's audio.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque


class Admission:
    def __init__(self, max_running: int) -> None:
        self.max_running = max_running
        self._running: set[str] = set()
        self._waiting: OrderedDict[str, deque[str]] = OrderedDict()  # owner -> job ids, FIFO
        self._gates: dict[str, asyncio.Future[None]] = {}
        self._owner_of: dict[str, str] = {}  # running job -> owner
        self._per_owner: dict[str, int] = {}  # owner -> running jobs
        self._caps: dict[str, int | None] = {}  # owner -> its cap, as last given

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    async def acquire(self, owner: str, job_id: str, cap: int | None = None) -> None:
        """Wait until the job may run: a free slot, and fewer than ``cap`` of the
        owner's jobs running (None: no cap). Cancelling the wait withdraws it."""
        self._caps[owner] = cap
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._gates[job_id] = gate
        self._waiting.setdefault(owner, deque()).append(job_id)
        # Let it through at once if there is room: other owners waiting at
        # their caps must not hold this one up.
        self._admit_next()
        try:
            await gate
        except asyncio.CancelledError:
            if gate.done() and not gate.cancelled():
                self.release(job_id)  # admitted in the same tick we were cancelled
            else:
                self._withdraw(owner, job_id)
            raise
        finally:
            self._gates.pop(job_id, None)

    def release(self, job_id: str) -> None:
        if job_id in self._running:
            self._running.discard(job_id)
            owner = self._owner_of.pop(job_id)
            left = self._per_owner[owner] - 1
            if left:
                self._per_owner[owner] = left
            else:
                del self._per_owner[owner]
        self._admit_next()

    def _owner_free(self, owner: str) -> bool:
        cap = self._caps.get(owner)
        return cap is None or self._per_owner.get(owner, 0) < cap

    def _start(self, owner: str, job_id: str) -> None:
        self._running.add(job_id)
        self._owner_of[job_id] = owner
        self._per_owner[owner] = self._per_owner.get(owner, 0) + 1

    def position(self, job_id: str) -> int | None:
        """1-based place in the start order, or None if not waiting."""
        if job_id not in self._gates:
            return None
        for place, candidate in enumerate(self._fair_order(), start=1):
            if candidate == job_id:
                return place
        return None

    def order(self) -> list[str]:
        """The waiting jobs in the order they will be admitted (owners in turn)."""
        return self._fair_order()

    def _fair_order(self) -> list[str]:
        queues = [list(q) for q in self._waiting.values()]
        order: list[str] = []
        depth = 0
        while True:
            row = [q[depth] for q in queues if depth < len(q)]
            if not row:
                return order
            order.extend(row)
            depth += 1

    def _withdraw(self, owner: str, job_id: str) -> None:
        queue = self._waiting.get(owner)
        if queue is not None:
            try:
                queue.remove(job_id)
            except ValueError:
                pass
            if not queue:
                self._waiting.pop(owner, None)

    def _admit_next(self) -> None:
        while len(self._running) < self.max_running and self._waiting:
            # The first owner in turn that is under its cap; owners at their cap
            # keep their place in line.
            owner = next((o for o in self._waiting if self._owner_free(o)), None)
            if owner is None:
                return
            queue = self._waiting.pop(owner)
            job_id = queue.popleft()
            # The owner goes to the back of the line, behind the others.
            if queue:
                self._waiting[owner] = queue
            gate = self._gates.get(job_id)
            if gate is None or gate.done():
                continue
            self._start(owner, job_id)
            gate.set_result(None)
