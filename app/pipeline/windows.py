"""Cut a job's audio into windows of at most 30 s for the batcher.

Input is the raw 16 kHz mono s16le PCM the job pipeline extracted. With VAD on,
Silero VAD (the copy shipped in faster-whisper) finds speech, and neighbouring
speech is packed greedily into contiguous windows: a window runs from its first
speech start to its last speech end and keeps the pauses inside it, so Whisper
hears the audio as it was (nothing is spliced) and the window's offset maps its
timestamps straight back to the media. Silence between windows is never decoded.

Memory: the file is read one block at a time (60 s by default). Silero's ONNX
run over a block costs about 0.3-0.6 MB per second of block (measured), so the
block size bounds peak memory (about 35-40 MB above the loaded model, measured
on 30 and 120 minute files) whatever the file's length; only the list of speech
spans grows with the file. Speech that runs into the end of a block is not cut
there: that last span is dropped and the next block starts at its start, so it
is analysed again, whole, in the next block (the VAD's state is not carried
between blocks; each block starts fresh, at the start of a speech span or a
block boundary in silence).

Call :func:`plan_windows` from a worker thread; it is CPU-bound (about 1.5 ms
per second of audio on one core) and blocking.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from faster_whisper.vad import VadOptions, get_speech_timestamps, get_vad_model

from batching.types import SAMPLE_RATE, WINDOW_SECONDS, AudioRef

__all__ = ["WindowSpan", "load_vad_model", "plan_windows"]

BYTES_PER_SAMPLE = 2  # s16le
VAD_THRESHOLD = 0.5
# faster-whisper's BatchedInferencePipeline uses 160 ms: short pauses give the
# packer many places to end a window, so windows fill up close to 30 s.
MIN_SILENCE_MS = 160
# Context either side of speech: Whisper misses the first word without it.
SPEECH_PAD_MS = 400
# A fixed window shorter than this holds no word; decoding it costs a full
# 30 s encoder pass for nothing.
MIN_WINDOW_S = 0.1
_VAD_FRAME = 512  # samples per Silero frame

_model_lock = threading.Lock()


@dataclass(frozen=True)
class WindowSpan:
    """A window of the job's PCM file, in samples."""

    start_sample: int
    num_samples: int

    @property
    def end_sample(self) -> int:
        return self.start_sample + self.num_samples

    @property
    def offset(self) -> float:
        """Seconds from the start of the media to the window's start."""
        return self.start_sample / SAMPLE_RATE

    @property
    def duration(self) -> float:
        return self.num_samples / SAMPLE_RATE

    def audio_ref(self, pcm_path: str | Path) -> AudioRef:
        return AudioRef(path=str(pcm_path), start_sample=self.start_sample, num_samples=self.num_samples)


def load_vad_model() -> None:
    """Load the Silero model now (e.g. at start-up, in a thread), not on the first job.

    faster-whisper caches one model per process (``functools.lru_cache``); the
    lock only keeps two first callers from both building it. One instance is
    shared by all threads: ONNX Runtime's ``InferenceSession.run`` is
    thread-safe and the wrapper keeps its recurrent state in locals. Each run
    uses one core, so concurrency is bounded by the caller's thread limiter.
    """
    with _model_lock:
        get_vad_model()


def plan_windows(
    pcm_path: str | Path,
    *,
    vad: bool = True,
    max_window_s: float = WINDOW_SECONDS,
    block_s: float = 60.0,
) -> list[WindowSpan]:
    """Windows of at most ``max_window_s`` covering the speech (or, without VAD, all) of the file.

    Windows are in order and do not overlap. Silence-only audio gives no windows.
    """
    if not 1.0 <= max_window_s <= WINDOW_SECONDS:
        raise ValueError(f"max_window_s must be between 1 and {WINDOW_SECONDS:g}, not {max_window_s!r}")
    # The carry-over below needs a block to hold a whole max-length speech span
    # and still move forward.
    if vad and block_s < 2 * max_window_s:
        raise ValueError(f"block_s must be at least twice max_window_s ({2 * max_window_s:g}), not {block_s!r}")

    total = os.path.getsize(pcm_path) // BYTES_PER_SAMPLE
    max_samples = int(max_window_s * SAMPLE_RATE)
    if not vad:
        return _fixed_windows(total, max_samples)
    spans = _speech_spans(Path(pcm_path), total, max_window_s, int(block_s * SAMPLE_RATE))
    return _pack(spans, max_samples)


def _fixed_windows(total: int, max_samples: int) -> list[WindowSpan]:
    min_samples = int(MIN_WINDOW_S * SAMPLE_RATE)
    return [
        WindowSpan(start, min(max_samples, total - start))
        for start in range(0, total, max_samples)
        if total - start >= min_samples
    ]


def _speech_spans(path: Path, total: int, max_window_s: float, block: int) -> list[tuple[int, int]]:
    """Padded speech spans ``(start, end)`` in samples, in order, none longer than ``max_window_s``."""
    options = VadOptions(
        threshold=VAD_THRESHOLD,
        min_silence_duration_ms=MIN_SILENCE_MS,
        speech_pad_ms=SPEECH_PAD_MS,
        # Silero splits longer runs itself, at a pause where it finds one; the
        # limit already includes the padding on both sides.
        max_speech_duration_s=max_window_s,
    )
    # A span ending this close to a block's end may be speech cut by the block.
    margin = (SPEECH_PAD_MS + MIN_SILENCE_MS) * SAMPLE_RATE // 1000 + _VAD_FRAME
    load_vad_model()

    spans: list[tuple[int, int]] = []
    pos = 0
    with open(path, "rb") as f:
        while pos < total:
            n = min(block, total - pos)
            # A plain read, not np.memmap: mapped pages stay in the process's
            # RSS once touched, which for a 2 h file would look like 230 MB.
            f.seek(pos * BYTES_PER_SAMPLE)
            audio = np.fromfile(f, dtype="<i2", count=n).astype(np.float32)
            audio /= 32768.0
            found = get_speech_timestamps(audio, options, sampling_rate=SAMPLE_RATE)
            del audio
            next_pos = pos + n
            last_block = next_pos >= total
            # The start >= n // 4 test guarantees progress; with block_s >=
            # 2 * max_window_s a span touching the end always starts later.
            if found and not last_block and found[-1]["end"] >= n - margin and found[-1]["start"] >= n // 4:
                next_pos = pos + found.pop()["start"]
            spans.extend((pos + s["start"], pos + s["end"]) for s in found if s["end"] > s["start"])
            pos = next_pos
            _trim_heap()
    return spans


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


def _trim_heap() -> None:
    # Each block frees ~20 MB of ONNX and numpy buffers, but glibc's growing
    # mmap threshold puts them on the heap, where freed memory stays in the
    # process: without a trim RSS creeps up to ~80 MB per VAD thread (measured)
    # instead of ~35 MB. A trim per minute of audio costs well under a ms.
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _pack(spans: list[tuple[int, int]], max_samples: int) -> list[WindowSpan]:
    """Merge speech spans greedily into contiguous windows of at most ``max_samples``."""
    windows: list[WindowSpan] = []
    cur: tuple[int, int] | None = None
    for start, end in spans:
        # Silero's own limit keeps spans short enough; this split is a backstop
        # so a window can never exceed the limit whatever the VAD answers.
        pieces = [(s, min(s + max_samples, end)) for s in range(start, end, max_samples)]
        for s, e in pieces:
            if cur is None:
                cur = (s, e)
            elif e - cur[0] <= max_samples:
                cur = (cur[0], max(cur[1], e))
            else:
                windows.append(WindowSpan(cur[0], cur[1] - cur[0]))
                cur = (s, e)
    if cur is not None and cur[1] > cur[0]:
        windows.append(WindowSpan(cur[0], cur[1] - cur[0]))
    return windows
