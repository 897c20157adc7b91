"""Peaks of a job's audio, small enough to send to the page whole.

The page draws the waveform under the player to show where speech is. It needs
one number per bucket of audio, not the audio: the loudest sample of each
bucket, as a byte (0 silent, 255 full scale). Buckets are ``PEAKS_PER_SECOND``
a second up to ``MAX_PEAKS`` buckets in all; longer audio gets wider buckets, so
an hour stays at 12,000 bytes (16 kB as base64 JSON) and a minute has ten
peaks a second. Computed once from the 16 kHz PCM the pipeline extracts, in a
worker thread (a chunk of the file at a time, so an hour never sits in memory).
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000
PEAKS_PER_SECOND = 10
MAX_PEAKS = 12_000
_CHUNK_SAMPLES = SAMPLE_RATE * 60


@dataclass(frozen=True)
class Waveform:
    peaks: bytes
    peaks_per_second: float
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "peaks_per_second": self.peaks_per_second,
            "duration_s": round(self.duration_s, 3),
            "count": len(self.peaks),
            "encoding": "base64-uint8",
            "peaks": base64.b64encode(self.peaks).decode("ascii"),
        }


def bucket_samples(total_samples: int, *, per_second: int = PEAKS_PER_SECOND, max_peaks: int = MAX_PEAKS) -> int:
    """Samples per peak: 1/``per_second`` of a second, wider when that would pass ``max_peaks``."""
    base = SAMPLE_RATE // per_second
    return max(base, math.ceil(total_samples / max_peaks)) if total_samples else base


def peaks_from_pcm(pcm: Path, *, per_second: int = PEAKS_PER_SECOND, max_peaks: int = MAX_PEAKS) -> Waveform:
    """The peaks of a 16 kHz mono s16le file; blocking (run it in a thread)."""
    total = Path(pcm).stat().st_size // 2
    bucket = bucket_samples(total, per_second=per_second, max_peaks=max_peaks)
    out = bytearray()
    # Whole buckets per chunk, so no bucket straddles two reads.
    chunk = max(1, _CHUNK_SAMPLES // bucket) * bucket
    with open(pcm, "rb") as fh:
        while True:
            raw = fh.read(chunk * 2)
            if len(raw) < 2:
                break
            samples = np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<i2").astype(np.int32)
            pad = (-len(samples)) % bucket
            if pad:
                samples = np.concatenate([samples, np.zeros(pad, dtype=np.int32)])
            loudest = np.abs(samples).reshape(-1, bucket).max(axis=1)
            out += np.minimum(255, (loudest * 255 + 16383) // 32768).astype(np.uint8).tobytes()
    return Waveform(peaks=bytes(out), peaks_per_second=SAMPLE_RATE / bucket, duration_s=total / SAMPLE_RATE)
