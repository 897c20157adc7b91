"""Speech clips for the load test, built once into a cache folder and reused.

Clips are made from the English recordings of ``../shared/data/speech`` (read
there, never copied into the project) concatenated with short pauses and cut
to length; where that folder is absent, from espeak-ng sentences. Every clip is
16 kHz mono FLAC, which is what a phone or a screen recorder would hand over
after a lossless export, and cheap for the load generator to hold in memory.

The "long" clips of the memory test are mostly silence with a few seconds of
speech every ``speech_every_s``: they make the server read, window and VAD
the whole file while keeping the model work small.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.media import SHARED_SPEECH, manifest, speak

SAMPLE_RATE = 16_000
PAUSE_S = 0.4
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "We are going to the market tomorrow morning to buy fresh bread and cheese.",
    "Seven green apples were sitting on the kitchen table next to the window.",
    "The meeting has been moved to Thursday afternoon because of the holiday.",
    "She opened the old wooden door and stepped out into the cold rain.",
]

# Distinct lengths (seconds) of the default mix: mostly 10 to 60 s, and a few
# of several minutes (see ``assign``).
SHORT_LENGTHS = (10, 12, 15, 18, 20, 25, 30, 40, 50, 60)
LONG_LENGTHS = (150, 240)
LONG_EVERY = 33  # one user in 33 gets a long clip: 3 of 100


@dataclass(frozen=True)
class Clip:
    path: Path
    seconds: float

    @property
    def bucket(self) -> str:
        return bucket_of(self.seconds)


def bucket_of(seconds: float) -> str:
    if seconds <= 30:
        return "<=30s"
    if seconds <= 60:
        return "30-60s"
    return ">60s"


BUCKETS = ("<=30s", "30-60s", ">60s")


def _ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise RuntimeError("ffmpeg is not on PATH; install it (Debian: apt-get install ffmpeg)")
    return exe


def _decode(path: Path) -> np.ndarray:
    """Any media to 16 kHz mono int16 samples."""
    proc = subprocess.run(
        [_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path),
         "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "s16le", "-acodec", "pcm_s16le", "-"],
        capture_output=True, check=False, timeout=120,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg could not decode {path}: {proc.stderr.decode('utf-8', 'replace')[-500:]}")
    return np.frombuffer(proc.stdout, dtype="<i2")


def _encode_flac(samples: np.ndarray, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial.flac")
    proc = subprocess.run(
        [_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
         "-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", "1", "-i", "-", "-c:a", "flac", str(tmp)],
        input=samples.astype("<i2").tobytes(), capture_output=True, check=False, timeout=300,
    )  # fmt: skip
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg could not write {dest}: {proc.stderr.decode('utf-8', 'replace')[-500:]}")
    tmp.replace(dest)


class SpeechSource:
    """The pieces clips are cut from: recordings when present, else espeak-ng sentences."""

    def __init__(self, work: Path) -> None:
        self.kind = "recorded"
        rows = [r for r in manifest() if r.get("language") == "en" and (SHARED_SPEECH / r["file"]).is_file()]
        if rows:
            names = sorted(r["file"] for r in rows)
            self.pieces = [_decode(SHARED_SPEECH / n) for n in names]
            self.names = names
        else:
            self.kind = "espeak-ng"
            self.names = SENTENCES
            self.pieces = []
            for i, text in enumerate(SENTENCES):
                wav = speak(text, work / f"sentence{i}.wav")
                self.pieces.append(_decode(wav))
                wav.unlink(missing_ok=True)

    def fingerprint(self) -> str:
        return hashlib.sha256(("\n".join([self.kind, *self.names])).encode()).hexdigest()[:12]

    def speech(self, seconds: float, variant: int) -> np.ndarray:
        """``seconds`` of pieces back to back with short pauses, starting at a piece chosen by ``variant``."""
        target = int(round(seconds * SAMPLE_RATE))
        pause = np.zeros(int(PAUSE_S * SAMPLE_RATE), dtype="<i2")
        out: list[np.ndarray] = [pause[: SAMPLE_RATE // 4]]
        length = len(out[0])
        i = variant
        while length < target:
            piece = self.pieces[i % len(self.pieces)]
            out += [piece, pause]
            length += len(piece) + len(pause)
            i += 1
        return np.concatenate(out)[:target]


def _cache_dir(cache: Path, source: SpeechSource) -> Path:
    return cache / f"{source.kind}-{source.fingerprint()}"


def build_clips(cache: Path, lengths: tuple[int | float, ...]) -> dict[float, Clip]:
    """One FLAC clip per length in ``cache``; existing files are reused as they are."""
    cache.mkdir(parents=True, exist_ok=True)
    source = SpeechSource(cache)
    folder = _cache_dir(cache, source)
    clips: dict[float, Clip] = {}
    for variant, seconds in enumerate(sorted(set(lengths))):
        path = folder / f"speech-{float(seconds):07.1f}s.flac"
        if not path.exists():
            _encode_flac(source.speech(seconds, variant * 5), path)
        clips[float(seconds)] = Clip(path, float(seconds))
    return clips


def build_long_clip(cache: Path, seconds: float, *, speech_every_s: float = 200.0, speech_s: float = 8.0) -> Clip:
    """``seconds`` of silence with ``speech_s`` of speech at the start and every ``speech_every_s``."""
    cache.mkdir(parents=True, exist_ok=True)
    source = SpeechSource(cache)
    folder = _cache_dir(cache, source)
    path = folder / f"long-{float(seconds):07.1f}s-every{speech_every_s:g}-{speech_s:g}s.flac"
    if not path.exists():
        total = int(round(seconds * SAMPLE_RATE))
        audio = np.zeros(total, dtype="<i2")
        start = 0.5
        variant = 0
        while start + speech_s <= seconds:
            chunk = source.speech(speech_s, variant)
            a = int(start * SAMPLE_RATE)
            audio[a : a + len(chunk)] = chunk
            start += speech_every_s
            variant += 3
        _encode_flac(audio, path)
    return Clip(path, float(seconds))


def assign(users: int, clips: dict[float, Clip], *, long_every: int = LONG_EVERY) -> list[Clip]:
    """The clip of each user: short ones in turn, and every ``long_every``-th user a long one."""
    longs = [clips[s] for s in sorted(clips) if s > 60]
    shorts = [clips[s] for s in sorted(clips) if s <= 60]
    if not shorts:
        shorts, longs = longs, []
    out: list[Clip] = []
    n_long = 0
    for i in range(users):
        if longs and long_every > 0 and i % long_every == long_every - 1:
            out.append(longs[n_long % len(longs)])
            n_long += 1
        else:
            out.append(shorts[(i - n_long) % len(shorts)])
    return out
