"""A stand-in :class:`batching.types.Engine` for fast tests of the job pipeline.

It never loads a model: every window answers one segment ``"window {index}"``
spanning the window, in the window's language (or ``"en"``). Tests steer it:
``delay`` (awaited through an injectable ``sleep``), ``fail`` (raise for chosen
windows), ``hold`` (an :class:`asyncio.Event` every call waits on), and read
``calls`` / ``completed`` / ``cancelled`` afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from batching.clock import wait_set
from batching.types import EngineStats, Segment, WindowRequest, WindowResult, Word

Sleep = Callable[[float], Awaitable[None]]
Key = tuple[str, int]  # (job_id, window index)


class FakeEngineError(RuntimeError):
    """What a window configured to fail raises."""


@dataclass
class _Counts:
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    queued: int = 0
    running: int = 0  # windows past ``hold``, being "decoded"


@dataclass(frozen=True)
class FakeStats(EngineStats):
    """The engine's counters (each window is a batch of one), plus the fake's own names."""

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    queued: int = 0


@dataclass
class FakeEngine:
    delay: float | Callable[[WindowRequest], float] = 0.0
    sleep: Sleep = asyncio.sleep
    hold: asyncio.Event | None = None
    fail: set[Key] = field(default_factory=set)  # windows that raise FakeEngineError
    calls: list[WindowRequest] = field(default_factory=list)
    completed: list[WindowRequest] = field(default_factory=list)
    started: bool = False
    stopped: bool = False

    def __post_init__(self) -> None:
        self._counts = _Counts()
        self._idle = asyncio.Event()  # set while no window is being decoded
        self._idle.set()
        self._called = asyncio.Event()  # set at each call, for wait_for_calls
        # windows waiting (on hold or delay), per job, for cancel_job / queue_position
        self._waiting: dict[str, dict[int, asyncio.Task[WindowResult]]] = {}

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True
        for tasks in list(self._waiting.values()):
            for task in tasks.values():
                task.cancel()

    def fail_window(self, job_id: str, index: int) -> None:
        self.fail.add((job_id, index))

    async def transcribe(self, window: WindowRequest) -> WindowResult:
        if not self.started or self.stopped:
            raise RuntimeError("the engine is not running")
        self.calls.append(window)
        self._called.set()
        self._counts.submitted += 1
        self._counts.queued += 1
        # A task per window, so cancel_job can withdraw it as the real batcher does.
        task = asyncio.ensure_future(self._work(window))
        self._waiting.setdefault(window.job_id, {})[id(task)] = task
        try:
            return await task
        except asyncio.CancelledError:
            task.cancel()
            self._counts.cancelled += 1
            raise
        finally:
            self._counts.queued -= 1
            jobs = self._waiting.get(window.job_id)
            if jobs is not None:
                jobs.pop(id(task), None)
                if not jobs:
                    del self._waiting[window.job_id]

    async def _work(self, window: WindowRequest) -> WindowResult:
        if self.hold is not None:
            await self.hold.wait()
        self._counts.running += 1
        self._idle.clear()
        try:
            delay = self.delay(window) if callable(self.delay) else self.delay
            if delay > 0:
                await self.sleep(delay)
            if (window.job_id, window.index) in self.fail:
                self._counts.failed += 1
                raise FakeEngineError(f"window {window.index} of job {window.job_id} failed")
            self.completed.append(window)
            self._counts.completed += 1
            return self.result_for(window)
        finally:
            self._counts.running -= 1
            if self._counts.running == 0:
                self._idle.set()

    @property
    def stats(self) -> FakeStats:
        c = self._counts
        return FakeStats(
            batches_run=c.completed + c.failed,
            items_run=c.completed + c.failed,
            items_failed=c.failed,
            items_cancelled=c.cancelled,
            queue_depth=c.queued - c.running,
            running=c.running,
            batch_size_histogram={1: c.completed + c.failed} if c.completed + c.failed else {},
            submitted=c.submitted,
            completed=c.completed,
            failed=c.failed,
            cancelled=c.cancelled,
            queued=c.queued,
        )

    async def wait_for_calls(self, count: int) -> None:
        """Return once ``count`` windows have reached the engine: tests wait on this, not on time."""
        while len(self.calls) < count:
            self._called.clear()
            await self._called.wait()

    async def drain(self, timeout: float) -> bool:
        return await wait_set(self._idle, timeout)

    @staticmethod
    def result_for(window: WindowRequest) -> WindowResult:
        """What a window answers: deterministic, so tests can compute it too."""
        start, end = window.offset, window.offset + window.duration
        text = f"window {window.index}"
        words = None
        if window.options.word_timestamps:
            mid = (start + end) / 2
            words = (Word(start, mid, "window", 1.0), Word(mid, end, f" {window.index}", 1.0))
        # Scores a test can compute: a later window looks a little less likely.
        segment = Segment(
            start=round(start, 3), end=round(end, 3), text=text, words=words,
            avg_logprob=-0.25 - 0.01 * window.index, no_speech_prob=0.05,
            temperature=window.options.temperatures[window.temperature_index],
        )
        return WindowResult(
            segments=(segment,), language=window.options.language or "en", language_probability=1.0
        )

    def cancel_job(self, job_id: str) -> int:
        tasks = self._waiting.pop(job_id, {})
        for task in tasks.values():
            task.cancel()
        return len(tasks)

    def queue_position(self, job_id: str) -> int | None:
        """0 when the job has windows waiting first in line, None when it has none."""
        for position, job in enumerate(self._waiting):
            if job == job_id:
                return position
        return None
