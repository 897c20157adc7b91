"""The async face of the Whisper engine: a :class:`batching.types.Engine`.

Every job's windows go through one :class:`~batching.batcher.MicroBatcher` onto
one resident model, so windows of different jobs share encoder and decoder
batches (continuous batching across requests). Feature extraction runs in the
batcher's CPU pool ahead of the model; the model runs in the batcher's single
model thread; the event loop only awaits.

Temperature fallback is done here, not in the model thread: a window that decodes
badly comes back as a :class:`~batching.whisper_runner.Fallback` and is queued
again one temperature warmer, so one hard window never holds a whole batch for
six sequential decodes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from batching.batcher import MicroBatcher
from batching.types import WindowRequest, WindowResult
from batching.whisper_runner import (
    Attempt,
    Fallback,
    ModelInfo,
    PreparedBatch,
    WhisperRunner,
    best_attempt,
)

log = logging.getLogger(__name__)

# Measured on 2 CPU cores with tiny.en int8 (bench/batching.py): the encoder costs
# the same per window at any batch size there, and batches past 8 only add
# latency; on a GPU, raise max_batch_size to 16-32.
DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_MAX_WAIT_S = 0.01
DEFAULT_PREPARE_THREADS = 1


class WhisperEngine:
    """Transcribes windows of many concurrent jobs on one Whisper model."""

    def __init__(
        self,
        runner_or_model_args: WhisperRunner | str | Mapping[str, Any],
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        prepare_threads: int = DEFAULT_PREPARE_THREADS,
        clock: Any = None,
    ) -> None:
        if isinstance(runner_or_model_args, WhisperRunner):
            self.runner = runner_or_model_args
        elif isinstance(runner_or_model_args, str):
            self.runner = WhisperRunner(runner_or_model_args)
        else:
            self.runner = WhisperRunner(**dict(runner_or_model_args))
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, not {max_batch_size!r}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must not be negative, not {max_wait_s!r}")
        self._batcher: MicroBatcher[WindowRequest, PreparedBatch, WindowResult | Fallback] = (
            MicroBatcher(
                self.runner.run,
                prepare=self.runner.prepare,
                max_batch_size=max_batch_size,
                max_wait_s=max_wait_s,
                clock=clock,
                prepare_threads=prepare_threads,
                name="whisper",
            )
        )
        self._started = False

    async def start(self) -> None:
        """Load the model in a thread (seconds), then start batching."""
        if self._started:
            return
        # Loading reads hundreds of MB and builds the model: never on the loop.
        await asyncio.to_thread(self.runner.load)
        await self._batcher.start()
        self._started = True
        log.info("whisper engine ready: %s", self.runner.info)

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        await self._batcher.stop()

    async def transcribe(self, window: WindowRequest) -> WindowResult:
        attempts: list[Attempt] = []
        current = window
        while True:
            out = await self._batcher.submit(current)
            if isinstance(out, WindowResult):
                return out
            if not isinstance(out, Fallback):  # a contract break, not a user error
                raise TypeError(f"the whisper runner returned {type(out).__name__}")
            attempts.append(out.attempt)
            if not out.retry:
                # Every temperature failed the checks: keep faster-whisper's pick.
                threshold = window.options.compression_ratio_threshold
                return best_attempt(attempts, threshold).result
            current = dataclasses.replace(current, temperature_index=current.temperature_index + 1)

    def cancel_job(self, job_id: str) -> int:
        return self._batcher.cancel_job(job_id)

    def queue_position(self, job_id: str) -> int | None:
        return self._batcher.queue_position(job_id)

    @property
    def stats(self) -> Any:
        return self._batcher.stats

    @property
    def model_info(self) -> ModelInfo:
        """Name, device, compute type and whether the model is multilingual (after start)."""
        return self.runner.info

    @property
    def ready(self) -> bool:
        return self._started
