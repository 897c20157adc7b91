"""Per-job event log: committed to the store first, then fanned out to live subscribers.

Each event gets the job's next sequence number, which is also its SSE ``id``; a
client that reconnects with ``Last-Event-ID`` gets the backlog from the store
and then the live tail. Subscribers have their own bounded queues, so a slow
client never holds up the job that produces the events, and one that falls
behind by a whole queue reads on from the store instead of growing it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, AsyncGenerator, AsyncIterator, Callable, Protocol

from storage.seams import JobRepository
from storage.store import EventRecord

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


@dataclass(frozen=True)
class Heartbeat:
    """Sentinel: nothing happened for ``heartbeat_s``; a stream sends a comment to keep the connection."""


Item = EventRecord | CaughtUp | Heartbeat | Shutdown


@dataclass(frozen=True)
class _Wake:
    """Internal: the store holds events this subscriber has not seen; read them from there."""

class EventBus(Protocol):
    """A job's event log with live fan-out: the seam a cluster implements on its database.

    ``publish`` commits the event first and only then shows it to subscribers;
    ``stream`` gives a job's events after a sequence number, a ``CaughtUp`` once
    the stored ones are out, then live ones, in order, each once, and a final
    ``Shutdown`` after ``close``. ``tests/test_seam_event_bus.py`` is the contract.
    """

    @property
    def subscriber_count(self) -> int: ...

    async def publish(self, job_id: str, type: str, data: dict[str, Any]) -> EventRecord: ...

    def close(self) -> None: ...

    def stream(self, job_id: str, after_seq: int = 0, *, heartbeat_s: float | None = None) -> AsyncGenerator[Item, None]: ...


# Live events a subscriber may hold unread. A client slower than its job (a long
# transcript into a stalled connection) is not buffered without limit: once its
# queue is full it reads on from the store, where every event already is.
SUBSCRIBER_QUEUE = 256


class _Subscriber:
    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[EventRecord | Shutdown | _Wake] = asyncio.Queue(maxsize=size)
        self.overflowed = False  # events were left out of the queue: replay from the store

    def offer(self, item: EventRecord | Shutdown | _Wake) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed = True


class EventHub:
    """The EventBus of one process; with ``local_delivery=False`` (a cluster) subscribers
    learn of new events only through :meth:`poke`, called when the database announces
    them, and read them from the store, so events from every node arrive in one order."""

    def __init__(self, store: JobRepository, *, queue_size: int = SUBSCRIBER_QUEUE, local_delivery: bool = True) -> None:
        self._store = store
        self._local_delivery = local_delivery
        self._queue_size = queue_size
        self._subscribers: dict[str, set[_Subscriber]] = defaultdict(set)
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
                if self._local_delivery:
                    for subscriber in self._subscribers.get(job_id, ()):
                        subscriber.offer(record)
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

    def poke(self, job_id: str | None = None) -> None:
        """New events of ``job_id`` (None: of any job, after a lost connection) are in the store."""
        jobs = list(self._subscribers) if job_id is None else [job_id]
        for job in jobs:
            for subscriber in self._subscribers.get(job, ()):
                subscriber.overflowed = True
                subscriber.offer(_Wake())

    def close(self) -> None:
        """Tell every open stream to finish (graceful shutdown)."""
        self._closing = True
        for subscribers in self._subscribers.values():
            for subscriber in subscribers:
                subscriber.offer(Shutdown())

    async def stream(self, job_id: str, after_seq: int = 0, *, heartbeat_s: float | None = None) -> AsyncGenerator[Item, None]:
        """The job's events after ``after_seq``: the backlog, ``CaughtUp``, then live ones.

        The one way to follow a job, for both event-stream routes. The caller
        decides when the stream is over (it knows whether exports are still
        running); a ``Shutdown`` is always the last item. With ``heartbeat_s``,
        a ``Heartbeat`` comes after that long without a live event.
        """
        subscriber = _Subscriber(self._queue_size)
        # Subscribe before reading the backlog so nothing published in between is lost;
        # duplicates are skipped by sequence number.
        self._subscribers[job_id].add(subscriber)
        try:
            if self._closing:
                yield Shutdown()
                return
            last = after_seq
            async for record in self._replay(job_id, last):
                last = record.seq
                yield record
            yield CaughtUp()
            while True:
                if subscriber.overflowed:
                    subscriber.overflowed = False
                    while not subscriber.queue.empty():  # all of it is in the store too
                        subscriber.queue.get_nowait()
                    async for record in self._replay(job_id, last):
                        last = record.seq
                        yield record
                    if self._closing:
                        yield Shutdown()
                        return
                    continue
                try:
                    item = subscriber.queue.get_nowait()
                except asyncio.QueueEmpty:
                    try:
                        item = await asyncio.wait_for(subscriber.queue.get(), timeout=heartbeat_s)
                    except TimeoutError:
                        yield Heartbeat()
                        continue
                if isinstance(item, Shutdown):
                    yield item
                    return
                if isinstance(item, _Wake):
                    continue  # overflowed is set: the top of the loop reads the store
                if item.seq <= last:
                    continue
                last = item.seq
                yield item
        finally:
            subs = self._subscribers.get(job_id)
            if subs is not None:
                subs.discard(subscriber)
                if not subs:
                    self._subscribers.pop(job_id, None)

    async def _replay(self, job_id: str, after_seq: int) -> AsyncIterator[EventRecord]:
        last = after_seq
        while True:
            backlog = await self._store.events_after(job_id, last)
            if not backlog:
                return
            for record in backlog:
                last = record.seq
                yield record


def format_sse(record: EventRecord) -> str:
    data = json.dumps(record.data, ensure_ascii=False, separators=(",", ":"))
    return f"id: {record.seq}\nevent: {record.type}\ndata: {data}\n\n"


def format_sse_unnumbered(type: str, data: dict[str, Any]) -> str:
    # No id: the client's Last-Event-ID stays at the last real event, so a
    # reconnect after this resumes exactly where the log left off.
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {type}\ndata: {payload}\n\n"
