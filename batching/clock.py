"""Time, injected: the batcher asks a clock instead of ``time``/``asyncio``.

Tests drive a :class:`FakeClock` by hand, so "the batch closes at the deadline"
is asserted exactly, without sleeping and without flaky margins.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale (only differences mean anything)."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once ``now() >= deadline``; cancellable."""
        ...


class MonotonicClock:
    """The real clock: ``time.monotonic``, which is also asyncio's loop time."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - time.monotonic()
        # sleep(0) still yields, so a past deadline behaves like a real sleep
        await asyncio.sleep(max(0.0, delay))


class FakeClock:
    """A clock that moves only when a test calls :meth:`advance`.

    ``now()`` may be read from any thread (a float read is atomic); everything
    else must be called on the event loop that the sleepers run on.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        # (deadline, seq, future); seq keeps equal deadlines in arrival order
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._registered: asyncio.Event | None = None

    def now(self) -> float:
        return self._now

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (deadline, next(self._seq), fut)
        heapq.heappush(self._sleepers, entry)
        if self._registered is not None:
            self._registered.set()
        try:
            await fut
        finally:
            # a cancelled sleeper must not show up in ``deadlines`` any more
            if not fut.done() or fut.cancelled():
                self._forget(entry)

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go back: advance({seconds!r})")
        self.advance_to(self._now + seconds)

    def advance_to(self, when: float) -> None:
        """Set time to exactly ``when`` (no float drift from repeated adds)."""
        if when < self._now:
            raise ValueError(f"a clock cannot go back: advance_to({when!r}) at {self._now!r}")
        self._now = when
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    @property
    def deadlines(self) -> list[float]:
        """Deadlines of the coroutines sleeping now, earliest first."""
        return sorted(d for d, _, f in self._sleepers if not f.done())

    async def wait_for_sleeper(self, deadline: float | None = None) -> float:
        """Wait until something sleeps on this clock (until ``deadline`` if given).

        Answers the earliest matching deadline. This is how a test knows the
        code under test has parked on its timer, without sleeping itself.
        """
        while True:
            pending = self.deadlines
            matching = [d for d in pending if deadline is None or d == deadline]
            if matching:
                return matching[0]
            self._registered = asyncio.Event()
            await self._registered.wait()

    def _forget(self, entry: tuple[float, int, asyncio.Future[None]]) -> None:
        try:
            self._sleepers.remove(entry)
        except ValueError:
            return
        heapq.heapify(self._sleepers)


async def wait_set(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set, at most ``timeout`` seconds; True if it is.

    A set event answers at once, also with a timeout of 0 (``asyncio.wait_for``
    alone would time out before the wait ever ran).
    """
    if event.is_set():
        return True
    try:
        await asyncio.wait_for(event.wait(), timeout=max(0.0, timeout))
    except TimeoutError:
        return False
    return True
