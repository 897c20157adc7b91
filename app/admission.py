"""Which queued job starts next: a bounded number run at once, picked round-robin by owner.

A job "runs" from probing to its last window. Bounding how many run at once
bounds the disk used by extracted audio and the threads used for VAD, while
the batcher still sees the windows of many jobs. Picking round-robin by owner
means one person's fifty uploads do not push everybody else's back.
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

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    async def acquire(self, owner: str, job_id: str) -> None:
        """Wait until the job may run. Cancelling the wait withdraws it."""
        if len(self._running) < self.max_running and not self._waiting:
            self._running.add(job_id)
            return
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._gates[job_id] = gate
        self._waiting.setdefault(owner, deque()).append(job_id)
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
        self._running.discard(job_id)
        self._admit_next()

    def position(self, job_id: str) -> int | None:
        """1-based place in the start order, or None if not waiting."""
        if job_id not in self._gates:
            return None
        for place, candidate in enumerate(self._fair_order(), start=1):
            if candidate == job_id:
                return place
        return None

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
            owner, queue = next(iter(self._waiting.items()))
            job_id = queue.popleft()
            # The owner goes to the back of the line, behind the others.
            self._waiting.pop(owner)
            if queue:
                self._waiting[owner] = queue
            gate = self._gates.get(job_id)
            if gate is None or gate.done():
                continue
            self._running.add(job_id)
            gate.set_result(None)
