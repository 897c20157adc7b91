"""How long a job has left: measured throughput and the work ahead of it.

The model's throughput is measured in audio seconds decoded per wall second,
only over time when there was work (an idle night does not make the next job's
estimate pessimistic), over the last minute, and smoothed so one large batch
arriving at once does not swing it. A running job shares the model with the
other running jobs (the batcher is fair between them), so it is done when it
and every job with less left are, plus its share with the ones with more left:
the sum of ``min(left_k, left_j)`` over the running jobs, at the measured rate.
A queued job waits for everything running and queued ahead of it first.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable

# Seconds of busy time the rate is measured over, and the least it needs.
WINDOW_S = 60.0
MIN_SPAN_S = 1.0
# Weight of a new measurement in the smoothed rate.
SMOOTHING = 0.3


class Throughput:
    """Audio seconds decoded per wall second while busy, smoothed; None until measured."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._busy_since: float | None = None
        self._events: deque[tuple[float, float]] = deque()
        self.rate: float | None = None  # kept across idle periods: the best guess for the next job

    def busy(self) -> None:
        """Work started (a no-op while already busy)."""
        if self._busy_since is None:
            self._busy_since = self._clock()

    def idle(self) -> None:
        """No work left: time from now on does not count until the next :meth:`busy`."""
        self._busy_since = None
        self._events.clear()

    def add(self, audio_s: float) -> None:
        """``audio_s`` seconds of audio were just decoded."""
        now = self._clock()
        self.busy()
        assert self._busy_since is not None
        self._events.append((now, audio_s))
        start = max(self._busy_since, now - WINDOW_S)
        while self._events and self._events[0][0] < start:
            self._events.popleft()
        span = now - start
        if span < MIN_SPAN_S:
            return  # a first result a moment after the start says little yet
        sample = sum(s for _, s in self._events) / span
        self.rate = sample if self.rate is None else self.rate + SMOOTHING * (sample - self.rate)


def running_eta(left_s: float, others_left_s: Iterable[float], rate: float | None) -> float | None:
    """Seconds until a running job with ``left_s`` of audio left is done, sharing the model fairly."""
    if rate is None or rate <= 0:
        return None
    return (left_s + sum(min(o, left_s) for o in others_left_s)) / rate


def queued_eta(left_s: float, ahead_left_s: Iterable[float], rate: float | None) -> float | None:
    """Seconds until a queued job is done: everything ahead of it first, then its own audio."""
    if rate is None or rate <= 0:
        return None
    return (left_s + sum(ahead_left_s)) / rate
