"""Encoder outputs kept for windows that will be decoded again, one temperature warmer.

A window that fails Whisper's compression-ratio or log-prob check is queued again
at the next temperature (``batching.whisper_engine``). Its audio has not changed,
so neither has its encoder output: keeping that output (host memory) saves the
retry a feature extraction and an encoder pass, the larger part of a window's
cost on a CPU. The cache is bounded in bytes and forgets the least recently
stored entry first; a miss only costs the encoder pass it would have cost anyway.

Both the prepare threads (lookups) and the model thread (stores) use it, so
every method takes the lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable

import numpy as np


@dataclass(frozen=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    stored: int = 0
    evicted: int = 0
    entries: int = 0  # now
    bytes: int = 0  # now


class EncoderCache:
    """A byte-bounded LRU of encoder outputs keyed by window identity."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._hits = self._misses = self._stored = self._evicted = 0

    def put(self, key: Hashable, value: np.ndarray) -> bool:
        """Keep a copy of ``value``; False when it alone exceeds the bound."""
        size = int(value.nbytes)
        if size > self.max_bytes:
            return False
        copy = np.array(value, copy=True)  # never alias a buffer the model will reuse
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._items[key] = copy
            self._bytes += size
            self._stored += 1
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.nbytes
                self._evicted += 1
        return True

    def take(self, key: Hashable) -> np.ndarray | None:
        """Remove and answer the entry (a retry consumes it), or None."""
        with self._lock:
            value = self._items.pop(key, None)
            if value is None:
                self._misses += 1
                return None
            self._bytes -= value.nbytes
            self._hits += 1
            return value

    def peek(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def discard_job(self, job_id: str) -> int:
        """Forget a cancelled job's entries (keys are tuples starting with the job id)."""
        with self._lock:
            keys = [k for k in self._items if isinstance(k, tuple) and k and k[0] == job_id]
            for k in keys:
                self._bytes -= self._items.pop(k).nbytes
            return len(keys)

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                stored=self._stored,
                evicted=self._evicted,
                entries=len(self._items),
                bytes=self._bytes,
            )
