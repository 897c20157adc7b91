"""A token bucket per API key: a steady request rate with a bounded burst.

Each key's bucket holds up to ``burst`` tokens and refills at ``rate_per_minute
/ 60`` tokens a second; a request takes one token or is refused with the time
until the next token, which becomes the ``Retry-After`` of the 429. Buckets
that have refilled completely carry no information and are dropped, so memory
follows the keys active in the last minute or so, not every key ever seen.
A cluster takes the tokens from one bucket per key in its database instead
(storage.pg_store.PgJobStore.take_token, called by app/api/auth.py) and uses
these only while the database cannot be reached.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class _Bucket:
    tokens: float
    updated: float
    per_s: float


class RateLimiter:
    """Token buckets keyed by an id; ``clock`` is injected so tests never sleep."""

    def __init__(self, rate_per_minute: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_minute < 0:
            raise ValueError(f"rate_per_minute must be >= 0, got {rate_per_minute!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        self.rate_per_minute = rate_per_minute
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._last_sweep = clock()

    def take(self, key: str, *, rate_per_minute: float | None = None) -> float:
        """Take one token for ``key``: 0.0 when allowed, else seconds until a token is due.

        ``rate_per_minute`` overrides the default for this key (a key's own
        limit); 0 means unlimited.
        """
        rate = self.rate_per_minute if rate_per_minute is None else rate_per_minute
        if rate <= 0:
            return 0.0
        per_s = rate / 60.0
        now = self._clock()
        self._sweep(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now, per_s)
        else:
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * per_s)
            bucket.updated = now
            bucket.per_s = per_s
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / per_s

    def give_back(self, key: str) -> None:
        """Return a token taken by ``take`` (the request turned out not to count)."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.tokens = min(float(self.burst), bucket.tokens + 1.0)

    def _sweep(self, now: float) -> None:
        # A bucket idle for a full refill is the same as no bucket at all.
        if now - self._last_sweep < 60:
            return
        self._last_sweep = now
        for key in [k for k, b in self._buckets.items() if (now - b.updated) * b.per_s >= self.burst]:
            del self._buckets[key]
