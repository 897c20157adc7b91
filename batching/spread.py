"""Several engines behind one: a resident model and batcher per GPU, jobs spread across them.

``model.device_index = [0, 1]`` starts one :class:`~batching.whisper_engine.WhisperEngine`
per listed GPU. Each keeps its own batches (a batch cannot span devices), so
this only decides where a job's windows go:

- a job's windows stay on one engine while any of them is in flight there (its
  retries and its encoder-cache entries live there; its chain is decoded in
  order anyway);
- a job with nothing in flight goes to the engine with the fewest windows in
  flight, the first listed on a tie, so a lone job does not hop between devices
  and a burst of jobs fills every device.

It is itself an :class:`~batching.types.Engine`, so the pipeline cannot tell.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

from batching.types import Engine, EngineStats, WindowRequest, WindowResult


class SpreadEngine:
    """Routes each job's windows to one of several engines (one per device)."""

    def __init__(self, engines: Sequence[Engine]) -> None:
        if not engines:
            raise ValueError("SpreadEngine needs at least one engine")
        self.engines = list(engines)
        self._in_flight = [0] * len(self.engines)  # windows awaiting, per engine
        self._jobs: dict[str, tuple[int, int]] = {}  # job id -> (engine, windows in flight)

    async def start(self) -> None:
        # One at a time: loading several models at once only contends for disk and CPU.
        for engine in self.engines:
            await engine.start()

    async def stop(self) -> None:
        await asyncio.gather(*(e.stop() for e in self.engines))

    def engine_for(self, job_id: str) -> int:
        """Which engine the job's next window goes to (see the module doc)."""
        held = self._jobs.get(job_id)
        if held is not None:
            return held[0]
        return min(range(len(self.engines)), key=lambda i: (self._in_flight[i], i))

    async def transcribe(self, window: WindowRequest) -> WindowResult:
        i = self.engine_for(window.job_id)
        _, count = self._jobs.get(window.job_id, (i, 0))
        self._jobs[window.job_id] = (i, count + 1)
        self._in_flight[i] += 1
        try:
            return await self.engines[i].transcribe(window)
        finally:
            self._in_flight[i] -= 1
            _, count = self._jobs[window.job_id]
            if count <= 1:
                del self._jobs[window.job_id]
            else:
                self._jobs[window.job_id] = (i, count - 1)

    def cancel_job(self, job_id: str) -> int:
        return sum(e.cancel_job(job_id) for e in self.engines)

    def queue_position(self, job_id: str) -> int | None:
        held = self._jobs.get(job_id)
        if held is None:
            return None
        position: Any = getattr(self.engines[held[0]], "queue_position", None)
        return position(job_id) if callable(position) else None

    @property
    def stats(self) -> EngineStats:
        """The engines' counters added up (the histogram merged, caps by the smallest)."""
        parts = [e.stats for e in self.engines]
        total: dict[str, Any] = {}
        for f in dataclasses.fields(EngineStats):
            values = [getattr(p, f.name) for p in parts]
            if f.name == "batch_size_histogram":
                merged: dict[int, int] = {}
                for h in values:
                    for size, n in h.items():
                        merged[size] = merged.get(size, 0) + n
                total[f.name] = merged
            elif f.name == "oom_cap":
                total[f.name] = min((v for v in values if v), default=0)
            elif f.name == "last_batch_size":
                total[f.name] = max(values)
            else:
                total[f.name] = sum(values)
        return EngineStats(**total)

    async def drain(self, timeout: float) -> bool:
        results = await asyncio.gather(*(e.drain(timeout) for e in self.engines))
        return all(results)

    @property
    def model_info(self) -> Any:
        return getattr(self.engines[0], "model_info", None)

    @property
    def ready(self) -> bool:
        return all(getattr(e, "ready", True) for e in self.engines)
