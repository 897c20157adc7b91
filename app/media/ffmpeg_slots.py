"""The process slots of the ffmpeg pool, handed out by kind of work and by owner.

Two kinds of work share the pool. *Reading* an upload (measuring its duration,
extracting its audio) is short and a person waits on it before transcription
can start; *rendering* an export runs as long as the video does. A plain FIFO
let one key's 25 burn exports hold up another key's 4-second clip for seconds,
and a long render would hold it up for as long as the render runs. So:

- reading goes first: a waiting read takes the next free slot, whatever renders
  wait;
- renders never hold every slot: at most ``render_slots`` run at once (by
  default all but one), so a read waits at most for other reads, not renders;
- within a kind, owners take turns (round robin), FIFO within one owner: a key
  with 25 queued exports gets the same share as a key with one.

Waiters are futures resolved on the event loop; a cancelled waiter leaves the
queue, and one cancelled just after being granted gives its slot back.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Literal

Kind = Literal["read", "render"]
KINDS: tuple[Kind, ...] = ("read", "render")  # in order of precedence


class FairSlots:
    def __init__(self, capacity: int, *, render_slots: int | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity!r}")
        if render_slots is None:
            render_slots = max(1, capacity - 1)
        if not 1 <= render_slots <= capacity:
            raise ValueError(f"render_slots must be from 1 to {capacity}, got {render_slots!r}")
        self.capacity = capacity
        self._caps: dict[Kind, int] = {"read": capacity, "render": render_slots}
        self._running: dict[Kind, int] = {kind: 0 for kind in KINDS}
        # Per kind, owner -> that owner's waiters; dict order is the turn order.
        self._queues: dict[Kind, dict[str, deque[asyncio.Future[None]]]] = {kind: {} for kind in KINDS}
        # Who got the last slot of each kind: an owner whose queue ran empty and
        # filled again must not go before an owner who has waited all along.
        self._last: dict[Kind, str | None] = {kind: None for kind in KINDS}

    @property
    def render_slots(self) -> int:
        return self._caps["render"]

    @property
    def busy(self) -> int:
        return sum(self._running.values())

    def running(self, kind: Kind) -> int:
        return self._running[kind]

    @property
    def waiting(self) -> int:
        return sum(len(q) for queues in self._queues.values() for q in queues.values())

    async def acquire(self, kind: Kind, owner: str = "") -> None:
        """Wait for a slot for ``owner``'s work of this kind; pair with :meth:`release`."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues[kind].setdefault(owner, deque()).append(waiter)
        self._dispatch()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(kind)  # granted, but the caller is gone before it could use it
            else:
                self._forget(kind, owner, waiter)
            raise

    def release(self, kind: Kind) -> None:
        if self._running[kind] <= 0:
            raise RuntimeError(f"release({kind!r}) without a matching acquire")
        self._running[kind] -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        while self.busy < self.capacity:
            for kind in KINDS:
                if self._running[kind] >= self._caps[kind]:
                    continue
                waiter = self._next(kind)
                if waiter is not None:
                    self._running[kind] += 1
                    waiter.set_result(None)
                    break
            else:
                return

    def _next(self, kind: Kind) -> asyncio.Future[None] | None:
        queues = self._queues[kind]
        owners = list(queues)
        if len(owners) > 1 and owners[0] == self._last[kind]:
            owners.append(owners.pop(0))
        for owner in owners:
            waiters = queues.pop(owner)
            while waiters and waiters[0].done():  # cancelled while queued
                waiters.popleft()
            if not waiters:
                continue
            waiter = waiters.popleft()
            if waiters:
                queues[owner] = waiters  # back of the line: the next owner goes next
            self._last[kind] = owner
            return waiter
        return None

    def _forget(self, kind: Kind, owner: str, waiter: asyncio.Future[None]) -> None:
        waiters = self._queues[kind].get(owner)
        if waiters is None:
            return
        try:
            waiters.remove(waiter)
        except ValueError:
            pass
        if not waiters:
            del self._queues[kind][owner]
