"""Event-loop lag: how late a periodic timer wakes up.

A task sleeps ``interval_s`` and measures ``actual - expected`` wake time. Any
blocking call on the loop (a model call, file hashing, a large JSON dump) shows
up as lag, which is why habit 1 of the style guide ("the loop never blocks") can
be checked from the outside: /metrics exposes the histogram and the maximum.

It keeps its own counters (no prometheus dependency here); ``app.api.metrics``
turns a :meth:`LoopLagMonitor.snapshot` into Prometheus families.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("altyazi.looplag")

# Upper bounds in seconds; a healthy loop stays in the first two buckets.
BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DEFAULT_INTERVAL_S = 0.05
RECENT_SAMPLES = 1200  # one minute at the default interval: the window of p99 and recent_max
WARN_LAG_S = 0.5


@dataclass(frozen=True)
class LagSnapshot:
    count: int
    sum_s: float
    max_s: float  # since start
    recent_max_s: float  # over the last RECENT_SAMPLES samples
    p99_s: float  # over the last RECENT_SAMPLES samples
    buckets: tuple[tuple[float, int], ...]  # (upper bound, cumulative count), without +Inf


class LoopLagMonitor:
    """A periodic task on the running loop; ``start`` and ``stop`` it in the lifespan."""

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S, *, clock: Callable[[], float] = time.monotonic) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self.interval_s = interval_s
        self._clock = clock
        self._counts = [0] * len(BUCKETS)  # per bucket, not cumulative
        self._count = 0
        self._sum = 0.0
        self._max = 0.0
        self._recent: deque[float] = deque(maxlen=RECENT_SAMPLES)
        self._task: asyncio.Task[None] | None = None

    def record(self, lag_s: float) -> None:
        lag_s = max(0.0, lag_s)
        self._count += 1
        self._sum += lag_s
        self._max = max(self._max, lag_s)
        self._recent.append(lag_s)
        i = bisect.bisect_left(BUCKETS, lag_s)
        if i < len(BUCKETS):
            self._counts[i] += 1

    def snapshot(self) -> LagSnapshot:
        cumulative, running = [], 0
        for bound, n in zip(BUCKETS, self._counts):
            running += n
            cumulative.append((bound, running))
        recent = sorted(self._recent)
        p99 = recent[min(len(recent) - 1, int(len(recent) * 0.99))] if recent else 0.0
        return LagSnapshot(
            count=self._count,
            sum_s=self._sum,
            max_s=self._max,
            recent_max_s=recent[-1] if recent else 0.0,
            p99_s=p99,
            buckets=tuple(cumulative),
        )

    async def run(self) -> None:
        last_warn = 0.0
        while True:
            expected = self._clock() + self.interval_s
            await asyncio.sleep(self.interval_s)
            now = self._clock()
            lag = now - expected
            self.record(lag)
            if lag >= WARN_LAG_S and now - last_warn > 10:
                # Rate-limited: a stalled loop must not also flood the log.
                last_warn = now
                log.warning("event loop blocked for %.3f s", lag, extra={"lag_s": round(lag, 3)})

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("loop lag monitor already started")
        self._task = asyncio.create_task(self.run(), name="looplag")
        self._task.add_done_callback(_log_failure)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("loop lag monitor stopped", exc_info=task.exception())
