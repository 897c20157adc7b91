"""Failed API keys, limited per key id and per client address before any hashing.

A key's secret is checked with scrypt (about 50 ms of a core, on purpose), so
without a limit anybody who knows a key id — it is in every key — keeps the
CPUs busy by sending wrong secrets. Each check that needs the hash first
takes one token from two buckets, the key id's and the client address's;
an empty bucket answers 429 with ``Retry-After`` and hashes nothing. A
check that succeeds gives its tokens back, so only failures use them up.

A key that was verified recently is answered from the cache and never comes
here, so somebody hammering a key id does not lock out its owner while the
owner keeps using it (``auth.cache_ttl_s``). Behind a reverse proxy every
client has the proxy's address: that bucket is then shared, which makes the
limit stricter, never looser.
"""

from __future__ import annotations

import time
from typing import Callable

from app.api.ratelimit import RateLimiter


class AuthFailureLimiter:
    def __init__(self, per_minute: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._by_key = RateLimiter(per_minute, burst, clock=clock)
        self._by_client = RateLimiter(per_minute, burst, clock=clock)

    def take(self, key_id: str, client: str) -> float:
        """Take a token from both buckets: 0.0 when the check may run, else seconds to wait.

        Nothing is taken when either bucket is empty.
        """
        wait = self._by_key.take(key_id)
        if wait > 0:
            return wait
        wait = self._by_client.take(client)
        if wait > 0:
            self._by_key.give_back(key_id)
            return wait
        return 0.0

    def give_back(self, key_id: str, client: str) -> None:
        """The check succeeded: it was not a failure."""
        self._by_key.give_back(key_id)
        self._by_client.give_back(client)
