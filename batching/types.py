"""The contract between the job pipeline and a transcription engine.

The job pipeline (in ``app/``) cuts a job's audio into windows of at most
30 seconds and hands each one to an :class:`Engine`. The engine may batch the
windows of many jobs together; the pipeline only awaits one result per window.
Nothing here knows about HTTP, and nothing here imports CTranslate2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from batching.batcher import BatcherStats


@dataclass(frozen=True)
class EngineStats(BatcherStats):
    """What an engine reports, read by /metrics: the counters of the batcher in
    front of its model (a fake engine fills in the same ones), and its own."""

    fallbacks: int = 0  # windows queued again one temperature warmer
    encoder_cache_hits: int = 0  # of those, how many reused their encoder output

SAMPLE_RATE = 16_000
WINDOW_SECONDS = 30.0
WINDOW_SAMPLES = int(SAMPLE_RATE * WINDOW_SECONDS)

# Whisper's usual fallback schedule: a window whose greedy result looks like a
# hallucination (too repetitive, too unlikely) is decoded again, warmer.
DEFAULT_TEMPERATURES: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class DecodeOptions:
    """Per-job decoding choices; every window of a job carries the same ones."""

    language: str | None = None  # None: detect per window
    task: str = "transcribe"  # or "translate" (to English)
    initial_prompt: str | None = None
    word_timestamps: bool = False
    beam_size: int = 1
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    compression_ratio_threshold: float | None = 2.4
    log_prob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6


@dataclass(frozen=True)
class AudioRef:
    """A span of 16 kHz mono signed 16-bit little-endian PCM in a file on disk.

    Windows refer to audio instead of holding it, so a queued window costs a
    few bytes; the samples are read (memory-mapped) only when a batch is built.
    """

    path: str
    start_sample: int
    num_samples: int

    def read(self) -> np.ndarray:
        """The samples as float32 in [-1, 1)."""
        pcm = np.memmap(self.path, dtype="<i2", mode="r")
        chunk = np.asarray(pcm[self.start_sample : self.start_sample + self.num_samples])
        return chunk.astype(np.float32) / 32768.0


@dataclass(frozen=True)
class WindowRequest:
    """One window of one job: the unit the batcher schedules."""

    owner: str
    job_id: str
    index: int  # position of the window in its job, from 0
    offset: float  # seconds from the start of the media to the window's start
    audio: AudioRef
    options: DecodeOptions = field(default_factory=DecodeOptions)
    temperature_index: int = 0  # which entry of options.temperatures to decode with
    # True when the audio goes on, mid-speech, past the window's end (a hard
    # cut): an unfinished last segment is then dropped and the result's
    # ``covered_until`` says where to decode again from. False when the window
    # ends in a pause or at the end of the file: an unfinished last segment is
    # whole, and kept.
    ends_in_speech: bool = False
    # Tokens (timestamps included) decoded just before this window, given to
    # the model as context (``condition_on_previous_text``); empty: none.
    previous_tokens: tuple[int, ...] = ()
    # True when the media is short enough to fit one window (a clip, an
    # OpenAI-style request): the engine may encode it at a shorter input than
    # 30 s (WhisperRunner.encoder_frames). Windows cut from long media are
    # always padded to 30 s: trimming them cost 0.3 WER points there.
    short_media: bool = False

    @property
    def duration(self) -> float:
        return self.audio.num_samples / SAMPLE_RATE


@dataclass(frozen=True)
class Word:
    start: float  # seconds, absolute in the media
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class Segment:
    start: float  # seconds, absolute in the media
    end: float
    text: str
    words: tuple[Word, ...] | None = None
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    temperature: float = 0.0  # the decoding temperature that produced it


@dataclass(frozen=True)
class WindowResult:
    segments: tuple[Segment, ...]
    language: str
    language_probability: float
    # Seconds (absolute) up to which the segments account for the audio, when
    # that is short of the window's end: the window ended mid-speech and the
    # model left its last segment unfinished, so the rest must be decoded again
    # from here. None: the whole window is accounted for.
    covered_until: float | None = None
    temperature: float = 0.0  # the decoding temperature of the kept attempt
    # The kept segments' tokens, timestamps included: context for the next window.
    tokens: tuple[int, ...] = ()


@runtime_checkable
class Engine(Protocol):
    """What the job pipeline needs from transcription.

    ``transcribe`` may be called concurrently from many jobs; cancelling the
    awaiting task withdraws the window if it has not started running.
    """

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def transcribe(self, window: WindowRequest) -> WindowResult: ...

    def cancel_job(self, job_id: str) -> int:
        """Drop the job's queued windows; answer how many were dropped."""
        ...

    @property
    def stats(self) -> EngineStats:
        """A snapshot of the engine's counters."""
        ...

    async def drain(self, timeout: float) -> bool:
        """Wait until no window is on the model, at most ``timeout`` seconds; True if none is.

        Shutdown calls it after withdrawing the queued windows, so the batch on
        the model can finish and its results be saved.
        """
        ...
