"""Test media made on the spot: speech from espeak-ng, video and tones from ffmpeg.

Not a test module: other tests import these helpers (``from tests.media import
speak``). Every tool runs as a subprocess without a shell; a missing tool
raises :class:`ToolMissing`, which a test can turn into a skip.

Recorded speech with reference transcripts may lie beside the checkout in
``../shared/data/speech`` (:data:`SHARED_SPEECH`); it is read from there, never
copied into the project.
"""

from __future__ import annotations

import csv
import functools
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

__all__ = [
    "SHARED_SPEECH",
    "ToolMissing",
    "have_tool",
    "make_long_speech",
    "make_silence",
    "make_tone",
    "make_video_with_speech",
    "manifest",
    "shared_clip",
    "speak",
    "to_pcm",
]

SHARED_SPEECH: Path = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech"

_INSTALL_HINT = {
    "espeak-ng": "apt-get install espeak-ng",
    "ffmpeg": "apt-get install ffmpeg",
    "ffprobe": "apt-get install ffmpeg",
}


class ToolMissing(RuntimeError):
    """A command-line tool the helper needs is not on PATH."""


def have_tool(name: str) -> bool:
    return shutil.which(name) is not None


def _run(args: list[str], *, input: bytes | None = None, timeout: float = 120) -> None:
    tool = args[0]
    exe = shutil.which(tool)
    if exe is None:
        hint = _INSTALL_HINT.get(tool, f"install {tool}")
        raise ToolMissing(f"{tool} is not on PATH; {hint}, or skip tests that need it")
    proc = subprocess.run(
        [exe, *args[1:]],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()[-2000:]
        raise RuntimeError(f"{tool} failed with exit status {proc.returncode}: {err}")


def _ffmpeg(*args: str) -> None:
    _run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args])


def speak(text: str, dest: Path, *, voice: str = "en-us", speed: int = 150) -> Path:
    """Speak ``text`` with espeak-ng into the WAV file ``dest`` (22.05 kHz mono)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Text goes in on stdin so a text starting with "-" is not read as an option.
    _run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(dest), "--stdin"],
        input=text.encode("utf-8"),
    )
    return dest


def _wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()


def make_video_with_speech(
    text: str,
    dest: Path,
    *,
    size: str = "320x240",
    rate: int = 25,
    lead_silence_s: float = 0.5,
    tail_silence_s: float = 0.5,
) -> Path:
    """A testsrc2 video with ``text`` spoken as AAC audio; container from the suffix (.mp4, .mkv)."""
    dest = Path(dest)
    speech = speak(text, dest.with_name(dest.stem + ".speech.wav"))
    try:
        total = lead_silence_s + _wav_seconds(speech) + tail_silence_s
        delay_ms = int(round(lead_silence_s * 1000))
        _ffmpeg(
            "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}",
            "-i", str(speech),
            "-filter_complex", f"[1:a]adelay={delay_ms}:all=1,apad[a]",
            "-map", "0:v", "-map", "[a]",
            "-t", f"{total:.3f}",
            "-c:v", _video_codec(), "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-ar", "44100", "-ac", "1",
            str(dest),
        )  # fmt: skip
    finally:
        speech.unlink(missing_ok=True)
    return dest


@functools.cache
def _video_codec() -> str:
    # H.264 where this ffmpeg has it (what users upload); MPEG-4 part 2 is built in.
    exe = shutil.which("ffmpeg")
    if exe is None:
        return "mpeg4"
    out = subprocess.run([exe, "-hide_banner", "-encoders"], capture_output=True, check=False).stdout
    return "libx264" if b"libx264" in out else "mpeg4"


def make_tone(dest: Path, seconds: float, *, freq: int = 440) -> Path:
    """A sine tone; the format follows the suffix (.wav, .mp3, .flac, ...)."""
    dest = Path(dest)
    _ffmpeg("-f", "lavfi", "-i", f"sine=frequency={freq}:sample_rate=16000:duration={seconds}", str(dest))
    return dest


def make_silence(dest: Path, seconds: float) -> Path:
    dest = Path(dest)
    _ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", f"{seconds}", str(dest))
    return dest


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise RuntimeError(f"{path}: expected 16-bit mono WAV from espeak-ng")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate()


# Distinct sentences for long test recordings: Whisper treats a window of the
# same words over and over as a hallucination (compression ratio) and decodes
# it again warmer, which real speech never asks for.
VARIED_SENTENCES = [
    "Please send me the report before the meeting on Monday morning.",
    "The weather today is sunny and warm, and we are going to the park.",
    "My brother bought a new bicycle last week.",
    "We should leave early to avoid the traffic on the bridge.",
    "The library closes at six o'clock in the evening.",
    "She planted tomatoes and peppers in the garden this spring.",
    "Our train was delayed by twenty minutes because of the snow.",
    "Could you turn off the lights when you leave the office?",
    "The children are playing football in the yard.",
    "I would like a cup of coffee with a little milk.",
    "The museum has a new exhibition about ancient ships.",
    "He forgot his umbrella at the restaurant yesterday.",
    "The doctor told me to drink more water every day.",
    "We are planning a trip to the mountains next summer.",
    "The new phone has a much better camera than the old one.",
    "Please remember to water the plants while I am away.",
    "The concert starts at eight, so we have plenty of time.",
    "They painted the kitchen a bright shade of yellow.",
    "The bakery on the corner sells fresh bread every morning.",
    "I have been reading a very interesting book about history.",
]


def make_long_speech(dest: Path, seconds: float, texts: list[str], *, pause_s: float = 1.0) -> Path:
    """Spoken ``texts`` (cycled) with ``pause_s`` between them, cut or padded to ``seconds``.

    Each sentence is spoken once and reused, so a long file costs a few
    espeak-ng runs. A sentence that would not fit whole is left out, so the file
    ends in silence rather than mid-word. Written as WAV, or converted by ffmpeg
    for another suffix.
    """
    if not texts:
        raise ValueError("make_long_speech needs at least one text")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clips: list[np.ndarray] = []
    rate = 0
    for i, text in enumerate(texts):
        tmp = speak(text, dest.with_name(f"{dest.stem}.part{i}.wav"))
        try:
            samples, rate = _read_wav(tmp)
        finally:
            tmp.unlink(missing_ok=True)
        clips.append(samples)

    target = int(round(seconds * rate))
    pause = np.zeros(int(round(pause_s * rate)), dtype="<i2")
    pieces: list[np.ndarray] = [pause[: rate // 4]]  # a little lead-in silence
    length = len(pieces[0])
    i = 0
    while True:
        clip = clips[i % len(clips)]
        if length + len(clip) > target or i >= 100_000:
            break
        pieces += [clip, pause]
        length += len(clip) + len(pause)
        i += 1
    audio = np.concatenate(pieces)[:target]
    audio = np.pad(audio, (0, target - len(audio)))

    wav_path = dest if dest.suffix.lower() == ".wav" else dest.with_name(dest.stem + ".tmp.wav")
    with wave.open(str(wav_path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(audio.astype("<i2").tobytes())
    if wav_path != dest:
        try:
            _ffmpeg("-i", str(wav_path), str(dest))
        finally:
            wav_path.unlink(missing_ok=True)
    return dest


def to_pcm(src: Path, dest: Path) -> Path:
    """Decode any media to raw 16 kHz mono s16le, as the job pipeline does."""
    dest = Path(dest)
    _ffmpeg("-i", str(src), "-vn", "-ac", "1", "-ar", "16000", "-f", "s16le", "-acodec", "pcm_s16le", str(dest))
    return dest


def shared_clip(name: str) -> Path | None:
    """A recorded clip from the shared speech folder, or None where it is absent."""
    path = SHARED_SPEECH / name
    return path if path.is_file() else None


def manifest() -> list[dict[str, str]]:
    """Rows of the shared folder's MANIFEST.tsv (file, duration_seconds, language,
    reference_text, ...), as strings; empty where the folder is absent."""
    path = SHARED_SPEECH / "MANIFEST.tsv"
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", newline="") as f:
        return [dict(row) for row in csv.DictReader(f, delimiter="\t")]
