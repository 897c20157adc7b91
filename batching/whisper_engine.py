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

from batching.batcher import BatcherOptions, BatcherStats, MicroBatcher
from batching.types import EngineStats, WindowRequest, WindowResult
from batching.whisper_runner import (
    Attempt,
    Fallback,
    ModelInfo,
    PreparedBatch,
    WhisperRunner,
    best_attempt,
)

log = logging.getLogger(__name__)

# The batch size for batching.max_batch_size = 0, by device. On a CPU the encoder
# costs as much or more per window in a batch (tiny.en int8, 2 cores: 0.21 s
# alone, 0.26 s in batches of 8), so it runs one window at a time
# (CPU_ENCODE_BATCH) and only the decoder sees the batch, which is where batching
# pays there: 16 jobs at once ran 1.14x / 1.24x / 1.47x faster than one window at
# a time with batches of 4 / 8 / 16 (bench/batching.py, README). Encoding one
# window at a time also keeps a big batch's memory small. On a GPU the encoder
# batches well, and bigger batches are the point.
CPU_BATCH_SIZE = 16
CUDA_BATCH_SIZE = 16
CPU_ENCODE_BATCH = 1


def on_gpu(device: str) -> bool:
    """Whether ``device`` means a GPU (``auto`` asks CTranslate2 whether one is there)."""
    if device == "auto":
        import ctranslate2

        return bool(ctranslate2.get_cuda_device_count() > 0)
    return device == "cuda"


def default_batch_size(device: str) -> int:
    """The batch size for ``device``."""
    return CUDA_BATCH_SIZE if on_gpu(device) else CPU_BATCH_SIZE


def default_batch_rows(device: str, batch_size: int) -> int:
    """Decoder rows per batch for ``device``: on a GPU twice the batch size, so a
    batch of beam-5 or fallback windows holds fewer windows instead of running
    out of memory; on a CPU no limit (memory is not what runs out there)."""
    return 2 * batch_size if on_gpu(device) else 0


def default_encode_batch(device: str) -> int:
    """Windows per encoder call: one on a CPU; a GPU encodes a whole group at once."""
    return CPU_ENCODE_BATCH if not on_gpu(device) else CUDA_BATCH_SIZE


class WhisperEngine:
    """Transcribes windows of many concurrent jobs on one Whisper model."""

    def __init__(
        self,
        runner_or_model_args: WhisperRunner | str | Mapping[str, Any],
        *,
        options: BatcherOptions,
        clock: Any = None,
    ) -> None:
        if isinstance(runner_or_model_args, WhisperRunner):
            self.runner = runner_or_model_args
        elif isinstance(runner_or_model_args, str):
            self.runner = WhisperRunner(runner_or_model_args)
        else:
            self.runner = WhisperRunner(**dict(runner_or_model_args))
        self._batcher: MicroBatcher[WindowRequest, PreparedBatch, Any] = (
            MicroBatcher(
                self.runner.run_model,
                prepare=self.runner.prepare,
                finish=self.runner.finish,
                options=options,
                weight_of=self.runner.decoder_rows,
                clock=clock,
                name="whisper",
            )
        )
        self._started = False
        self._fallbacks = 0

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
            # A retry goes ahead of its job's later windows: the job announces its
            # windows in media order, so a retry at the back of a long job's queue
            # would hold back every segment after it until the job's last window.
            out = await self._batcher.submit(current, first=bool(attempts))
            if isinstance(out, WindowResult):
                return out
            if not isinstance(out, Fallback):  # a contract break, not a user error
                raise TypeError(f"the whisper runner returned {type(out).__name__}")
            attempts.append(out.attempt)
            if not out.retry:
                # Every temperature failed the checks: keep faster-whisper's pick.
                threshold = window.options.compression_ratio_threshold
                return best_attempt(attempts, threshold).result
            self._fallbacks += 1
            current = dataclasses.replace(current, temperature_index=current.temperature_index + 1)

    def cancel_job(self, job_id: str) -> int:
        self.runner.encoder_cache.discard_job(job_id)
        return self._batcher.cancel_job(job_id)

    def queue_position(self, job_id: str) -> int | None:
        return self._batcher.queue_position(job_id)

    @property
    def stats(self) -> EngineStats:
        batcher = self._batcher.stats  # one snapshot: each read builds a new one
        fields = {f.name: getattr(batcher, f.name) for f in dataclasses.fields(BatcherStats)}
        return EngineStats(
            **fields,
            fallbacks=self._fallbacks,
            encoder_cache_hits=self.runner.encoder_cache.stats.hits,
        )

    async def drain(self, timeout: float) -> bool:
        return await self._batcher.drain(timeout)

    @property
    def model_info(self) -> ModelInfo:
        """Name, device, compute type and whether the model is multilingual (after start)."""
        return self.runner.info

    @property
    def ready(self) -> bool:
        return self._started
