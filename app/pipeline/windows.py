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
on 30 and 120 minute files) whatever the file's length, and windows are yielded
as each block is analysed, so a long file's first windows are decoded while the
VAD is still reading. Speech that runs into the end of a block is not cut
there: that last span is dropped and the next block starts at its start, so it
is analysed again, whole, in the next block (the VAD's state is not carried
between blocks; each block starts fresh, at the start of a speech span or a
block boundary in silence).

Without VAD nothing is left out: windows of at most 30 s follow each other,
each ending in a pause of its last seconds found by level alone (see
:func:`_pause_cut`), or at 30 s where there is none.

Window edges: a window ends either in a pause (VAD found silence there, the
level found one without VAD, or the file ends) or mid-speech
(``ends_in_speech``: without VAD where no pause was found, and where Silero
had to split more than 30 s of speech without a pause). The pipeline
treats the second kind as a chain: the next window starts where the model's
last finished segment ended, never at the cut (see batching/segmenting.py).

Iterate :func:`iter_windows` from a worker thread; it is CPU-bound (about 1.5 ms
per second of audio on one core) and blocking.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from faster_whisper.vad import VadOptions, get_speech_timestamps, get_vad_model

from batching.types import SAMPLE_RATE, WINDOW_SECONDS, AudioRef

__all__ = ["WindowSpan", "iter_windows", "load_vad_model", "plan_windows"]

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
# Two speech spans closer than this (unpadded) were split by Silero inside
# speech, not at a pause: its pause splits need at least 98 ms of silence, a
# hard split leaves one frame (32 ms).
HARD_CUT_GAP = 2 * _VAD_FRAME

_model_lock = threading.Lock()


@dataclass(frozen=True)
class WindowSpan:
    """A window of the job's PCM file, in samples."""

    start_sample: int
    num_samples: int
    # True when the window ends mid-speech and the next window starts right at
    # its end: a hard cut (a window without VAD that found no pause to end in,
    # and speech that VAD had to split without a pause). Such a window's unfinished last segment is
    # decoded again as part of the next window (see batching/segmenting.py).
    ends_in_speech: bool = False

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
    """All of :func:`iter_windows` at once (tests, benchmarks)."""
    return list(iter_windows(pcm_path, vad=vad, max_window_s=max_window_s, block_s=block_s))


def iter_windows(
    pcm_path: str | Path,
    *,
    vad: bool = True,
    max_window_s: float = WINDOW_SECONDS,
    block_s: float = 60.0,
    gate: Callable[[], AbstractContextManager[Any]] | None = None,
) -> Iterator[WindowSpan]:
    """Windows of at most ``max_window_s`` covering the speech (or, without VAD, all) of the file.

    Windows come in order, as the VAD finds them (one block of ``block_s`` at a
    time), so the first ones can be decoded while the rest of a long file is
    still being analysed. They do not overlap. Silence-only audio gives none.
    ``gate`` is entered around each block's analysis: the job pipeline passes a
    semaphore shared by every job, so VAD workers are taken one block at a
    time and a 2-hour file never holds a short one's analysis back.
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
        return _fixed_windows(pcm_path, total, max_samples)
    raw = _raw_speech_spans(Path(pcm_path), total, max_window_s, int(block_s * SAMPLE_RATE), gate or nullcontext)
    return _pack(_pad(raw, total), max_samples)


def _fixed_windows(pcm_path: str | Path, total: int, max_samples: int) -> Iterator[WindowSpan]:
    """Consecutive windows of at most ``max_samples`` covering all the audio.

    Each ends in the quietest pause of its last seconds when there is one
    (:func:`_pause_cut`), else where the length ran out: mid-speech, as far as
    anybody knows. A window that ends in a pause is decoded on its own, so a
    job's windows share batches; cut mid-speech they form one chain, decoded
    in order.
    """
    min_samples = int(MIN_WINDOW_S * SAMPLE_RATE)
    start = 0
    # Read, not mapped: a mapping of the whole file would count its pages in
    # the process's RSS while the plan is made.
    with open(pcm_path, "rb") as f:
        while total - start >= min_samples:
            # The file's last window; a tail under MIN_WINDOW_S after it is not worth a decode.
            if total - start - max_samples < min_samples:
                yield WindowSpan(start, min(max_samples, total - start), ends_in_speech=False)
                return
            f.seek(start * BYTES_PER_SAMPLE)
            cut = _pause_cut(np.fromfile(f, dtype="<i2", count=max_samples))
            yield WindowSpan(start, cut or max_samples, ends_in_speech=cut is None)
            start += cut or max_samples


# Without VAD a window still ends in a pause where its last PAUSE_SEARCH_S
# seconds have one: PAUSE_S of audio at least PAUSE_DB quieter than the
# window's loud parts (its 90th-percentile 20-ms level). Speech has such
# pauses every few seconds; music and noise rarely do, and keep the hard cut.
PAUSE_SEARCH_S = 10.0
PAUSE_S = 0.3
PAUSE_DB = 20.0
_LEVEL_FRAME = SAMPLE_RATE // 50  # 20 ms
_SILENT_LEVEL = 1e-4 * 32768  # about -80 dBFS: digital silence has no loud parts to compare with


def _pause_cut(samples: np.ndarray) -> int | None:
    """Where (samples from the start) to end a full-length window: the middle
    of the quietest pause in its last seconds, or None when there is none."""
    n = len(samples) // _LEVEL_FRAME
    frames = np.asarray(samples[: n * _LEVEL_FRAME], dtype=np.float32).reshape(n, _LEVEL_FRAME)
    level = np.sqrt(np.mean(frames * frames, axis=1))
    loud = float(np.percentile(level, 90))
    if loud < _SILENT_LEVEL:
        return None
    k = int(PAUSE_S * 50)
    first = max(0, n - int(PAUSE_SEARCH_S * 50))
    if n - first < k:
        return None
    # the loudest frame of each k-frame stretch that starts in the search region
    stretches = np.lib.stride_tricks.sliding_window_view(level[first:], k).max(axis=1)
    # the latest of the quietest, so windows stay long
    best = len(stretches) - 1 - int(np.argmin(stretches[::-1]))
    if stretches[best] > loud * 10 ** (-PAUSE_DB / 20):
        return None
    return (first + best + k // 2) * _LEVEL_FRAME


def _raw_speech_spans(
    path: Path, total: int, max_window_s: float, block: int, gate: Callable[[], AbstractContextManager[Any]]
) -> Iterator[tuple[int, int]]:
    """Speech spans ``(start, end)`` in samples, in order, before padding.

    Padding is added by :func:`_pad`, not by Silero: the unpadded gap between two
    spans is what tells a pause (at least ``MIN_SILENCE_MS``, or 98 ms where
    Silero split a long run at a short pause) from a hard cut inside speech
    (one frame).
    """
    options = VadOptions(
        threshold=VAD_THRESHOLD,
        min_silence_duration_ms=MIN_SILENCE_MS,
        speech_pad_ms=0,
        # Silero splits longer runs itself, at a pause where it finds one. Its
        # limit counts the padding on both sides, which is added later here, so
        # the padding comes off the limit: the same split points as with padding.
        max_speech_duration_s=max_window_s - 2 * SPEECH_PAD_MS / 1000,
    )
    # A span ending this close to a block's end may be speech cut by the block.
    margin = (SPEECH_PAD_MS + MIN_SILENCE_MS) * SAMPLE_RATE // 1000 + _VAD_FRAME
    load_vad_model()

    pos = 0
    with open(path, "rb") as f:
        while pos < total:
            n = min(block, total - pos)
            # A plain read, not np.memmap: mapped pages stay in the process's
            # RSS once touched, which for a 2 h file would look like 230 MB.
            f.seek(pos * BYTES_PER_SAMPLE)
            audio = np.fromfile(f, dtype="<i2", count=n).astype(np.float32)
            audio /= 32768.0
            with gate():
                found = get_speech_timestamps(audio, options, sampling_rate=SAMPLE_RATE)
            del audio
            next_pos = pos + n
            last_block = next_pos >= total
            # The start >= n // 4 test guarantees progress; with block_s >=
            # 2 * max_window_s a span touching the end always starts later.
            if found and not last_block and found[-1]["end"] >= n - margin and found[-1]["start"] >= n // 4:
                next_pos = pos + found.pop()["start"]
            _trim_heap()
            for s in found:
                if s["end"] > s["start"]:
                    yield pos + s["start"], pos + s["end"]
            pos = next_pos


def _pad(raw: Iterator[tuple[int, int]], total: int) -> Iterator[tuple[int, int, bool]]:
    """Silero's padding, applied across blocks, one span behind the VAD.

    Yields ``(start, end, cut)``: ``cut`` is True when the next span follows
    without a pause (a hard split of long speech). Like Silero, two spans closer
    than twice the padding meet in the middle of the gap between them.
    """
    pad = SPEECH_PAD_MS * SAMPLE_RATE // 1000
    prev: tuple[int, int] | None = None  # the last span, start already padded
    for start, end in raw:
        if prev is None:
            prev = (max(0, start - pad), end)
            continue
        p_start, p_end = prev
        start = max(start, p_end)  # a span found again after a block carry-over
        gap = start - p_end
        if gap < 2 * pad:
            half = max(0, gap) // 2
            yield p_start, p_end + half, gap < HARD_CUT_GAP
            prev = (start - half, end)
        else:
            yield p_start, min(total, p_end + pad), False
            prev = (max(0, start - pad), end)
    if prev is not None:
        yield prev[0], min(total, prev[1] + pad), False


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


def _pack(spans: Iterable[tuple[int, int, bool]], max_samples: int) -> Iterator[WindowSpan]:
    """Merge speech spans greedily into contiguous windows of at most ``max_samples``.

    A window ends where its last span ends; it ends in speech when that span
    was cut (``cut``) or split here.
    """
    cur: tuple[int, int, bool] | None = None
    for start, end, cut in spans:
        # Silero's own limit keeps spans short enough; this split is a backstop
        # so a window can never exceed the limit whatever the VAD answers.
        pieces = [
            (s, min(s + max_samples, end), cut or s + max_samples < end) for s in range(start, end, max_samples)
        ]
        for s, e, c in pieces:
            if cur is None:
                cur = (s, e, c)
            elif e - cur[0] <= max_samples:
                cur = (cur[0], max(cur[1], e), c)
            else:
                yield WindowSpan(cur[0], cur[1] - cur[0], ends_in_speech=cur[2])
                cur = (s, e, c)
    if cur is not None and cur[1] > cur[0]:
        # The file's last window: nothing follows, so nothing is cut.
        yield WindowSpan(cur[0], cur[1] - cur[0])
