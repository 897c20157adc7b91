"""Per-job event log: committed to the store first, then fanned out to live subscribers.

Each event gets the job's next sequence number, which is also its SSE ``id``; a
client that reconnects with ``Last-Event-ID`` gets the backlog from the store
and then the live tail. Subscribers have their own queues, so a slow client
never holds up the job that produces the events.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from storage.store import EventRecord, JobStore

log = logging.getLogger("altyazi.events")

FINAL_EVENTS = frozenset({"done", "failed", "cancelled"})
# Events after which a finished job's stream may end, once no export is running.
EXPORT_FINAL_EVENTS = frozenset({"export_done", "export_failed"})


@dataclass(frozen=True)
class Shutdown:
    """Sentinel for subscribers: the server is stopping, end the stream now."""


@dataclass(frozen=True)
class CaughtUp:
    """Sentinel: the stored backlog has been sent; what follows is live."""


class EventHub:
    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._subscribers: dict[str, set[asyncio.Queue[EventRecord | Shutdown]]] = defaultdict(set)
        self._closing = False
        # Appends of one job are serialised so that sequence numbers reach
        # subscribers in the order they were committed. A job's lock lives
        # while someone publishes for it (counted), so idle jobs hold none.
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        # Called with (job_id, type, data) after each committed event (metrics count them).
        self.listeners: list[Callable[[str, str, dict[str, Any]], None]] = []

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    async def publish(self, job_id: str, type: str, data: dict[str, Any]) -> EventRecord:
        lock, users = self._locks.get(job_id) or (asyncio.Lock(), 0)
        self._locks[job_id] = (lock, users + 1)
        try:
            async with lock:
                record = await self._store.append_event(job_id, type, data)
                for queue in self._subscribers.get(job_id, ()):
                    queue.put_nowait(record)
            for listener in self.listeners:
                try:
                    listener(job_id, type, data)
                except Exception:  # a counter must never fail a job
                    log.exception("event listener failed on %s", type)
        finally:
            lock, users = self._locks[job_id]
            if users == 1:
                del self._locks[job_id]
            else:
                self._locks[job_id] = (lock, users - 1)
        return record

    def close(self) -> None:
        """Tell every open stream to finish (graceful shutdown)."""
        self._closing = True
        for queues in self._subscribers.values():
            for queue in queues:
                queue.put_nowait(Shutdown())

    async def stream(self, job_id: str, after_seq: int = 0) -> AsyncIterator[EventRecord | CaughtUp | Shutdown]:
        """The job's events after ``after_seq``: the backlog, ``CaughtUp``, then live ones.

        The caller decides when the stream is over (it knows whether exports
        are still running); a ``Shutdown`` is always the last item.
        """
        queue: asyncio.Queue[EventRecord | Shutdown] = asyncio.Queue()
        # Subscribe before reading the backlog so nothing published in between is lost;
        # duplicates are skipped by sequence number.
        self._subscribers[job_id].add(queue)
        try:
            if self._closing:
                yield Shutdown()
                return
            last = after_seq
            while True:
                backlog = await self._store.events_after(job_id, last)
                if not backlog:
                    break
                for record in backlog:
                    last = record.seq
                    yield record
            yield CaughtUp()
            while True:
                item = await queue.get()
                if isinstance(item, Shutdown):
                    yield item
                    return
                if item.seq <= last:
                    continue
                last = item.seq
                yield item
        finally:
            subs = self._subscribers.get(job_id)
            if subs is not None:
                subs.discard(queue)
                if not subs:
                    self._subscribers.pop(job_id, None)


def format_sse(record: EventRecord) -> str:
    data = json.dumps(record.data, ensure_ascii=False, separators=(",", ":"))
    return f"id: {record.seq}\nevent: {record.type}\ndata: {data}\n\n"


def format_sse_unnumbered(type: str, data: dict[str, Any]) -> str:
    # No id: the client's Last-Event-ID stays at the last real event, so a
    # reconnect after this resumes exactly where the log left off.
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {type}\ndata: {payload}\n\n"
