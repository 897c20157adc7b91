"""The running tasks of one kind (jobs, exports), by id: each one owned from start to stop.

A task leaves the registry when it ends, whatever the reason; ``on_done`` lets
the owner forget what it kept beside it. Cancelling waits for the task, so its
``finally`` blocks (ffmpeg killed, files closed) have run when ``cancel`` returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

log = logging.getLogger("altyazi.tasks")


class TaskRegistry:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.stopping = False  # set by stop(): tasks ending now were interrupted, not cancelled by a user
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, key: object) -> bool:
        return key in self._tasks

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._tasks))

    def spawn(self, key: str, work: Coroutine[Any, Any, None], *, on_done: Callable[[], None] | None = None) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=f"{self.kind}-{key}")
        self._tasks[key] = task

        def forget(t: asyncio.Task[None]) -> None:
            if self._tasks.get(key) is t:
                del self._tasks[key]
            if on_done is not None:
                on_done()
            if not t.cancelled() and t.exception() is not None:  # the work reports its own failures; this is a bug
                log.error("%s task %s failed", self.kind, key, exc_info=t.exception())

        task.add_done_callback(forget)
        return task

    async def cancel(self, key: str) -> bool:
        """Cancel the task and wait for it to end; False when none runs under ``key``."""
        task = self._tasks.pop(key, None)
        if task is None:
            return False
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return True

    async def stop(self, timeout: float = 10.0) -> None:
        """Shutdown: cancel every task and wait for them, at most ``timeout`` seconds."""
        self.stopping = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
