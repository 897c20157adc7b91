"""Long media with a known transcript, made from the recorded speech in ``../shared/data/speech``.

A *mix* is the English clips that have a human reference, in a shuffled order
(seeded), with short pauses between them, repeated until the wanted length,
then muxed with a small, slow video track into MP4 with AAC audio: what a user
uploads, minutes long, and with every sentence's place known. The reference
transcript of a mix is its clips' references in order, so a transcript can be
scored as a whole (WER), clip by clip (was a sentence dropped?) and stretch by
stretch (which words are missing, and about when they were spoken): :func:`align`.

The recordings are read where they lie, never copied into the project. Built
media and their references are cached in a folder chosen by the caller
(``bench/out/...``, git-ignored) under a name that changes when anything that
shapes them changes.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bench.clips import SAMPLE_RATE, _decode, _ffmpeg
from tests.media import SHARED_SPEECH, _video_codec, manifest
from tests.wer import normalize

__all__ = ["Alignment", "Clip", "Gap", "Mix", "Placed", "align", "aligned_hits", "build_mix", "reference_clips"]

# Files whose "reference" is not a human transcript of one English voice: a
# model's output (multilingual), a partial hint (hotwords), two speakers on two
# channels (stereo).
NOT_TRUTH = frozenset({"fw_multilingual.mp3", "fw_hotwords.mp3", "fw_stereo_diarization.wav"})

# Bump when the way a mix is made changes, so cached files are not reused.
MIX_VERSION = 1
LEAD_S = 0.5  # silence before the first clip
TAIL_S = 1.0  # and after the last
PAUSE_S = (0.3, 1.5)  # a pause between clips is drawn from this range...
BACK_TO_BACK_S = 0.1  # ...except for some clips that follow at once,
BACK_TO_BACK_P = 0.2  # this often: speech running up to a window's edge is the case to test
VIDEO = "color=c=0x1d3557:s=160x90:r=2"  # small and slow: encoding costs little next to decoding


@dataclass(frozen=True)
class Clip:
    file: str
    text: str
    samples: np.ndarray = field(repr=False, compare=False)

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def reference_clips(folder: Path = SHARED_SPEECH) -> list[Clip]:
    """The English recordings with a human reference, decoded to 16 kHz mono int16, by file name.

    Empty where the shared folder is absent.
    """
    rows = [
        r
        for r in manifest()
        if r.get("language") == "en" and r["file"] not in NOT_TRUTH and (folder / r["file"]).is_file()
    ]
    return [Clip(r["file"], r["reference_text"].strip(), _decode(folder / r["file"])) for r in sorted(rows, key=lambda r: r["file"])]


@dataclass(frozen=True)
class Placed:
    """One clip's place in a mix, in seconds from the start of the media."""

    file: str
    text: str
    start_s: float
    end_s: float


@dataclass
class Mix:
    path: Path
    seconds: float
    placed: list[Placed]

    @property
    def reference(self) -> str:
        return " ".join(p.text for p in self.placed)

    def save(self, dest: Path) -> None:
        data = {"media": self.path.name, "seconds": self.seconds, "reference": self.reference, "clips": [asdict(p) for p in self.placed]}
        tmp = dest.with_name(dest.name + ".partial")
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
        tmp.replace(dest)

    @classmethod
    def load(cls, meta: Path) -> Mix:
        data = json.loads(meta.read_text(encoding="utf-8"))
        return cls(meta.with_name(data["media"]), float(data["seconds"]), [Placed(**p) for p in data["clips"]])


def _plan(clips: list[Clip], seconds: float, rng: random.Random) -> list[tuple[int, float]]:
    """(clip index, pause before it) until the speech reaches ``seconds``; every pass a new order."""
    order: list[tuple[int, float]] = []
    total = LEAD_S
    last = -1
    while total < seconds - TAIL_S:
        perm = list(range(len(clips)))
        rng.shuffle(perm)
        if perm[0] == last and len(perm) > 1:  # the same clip twice in a row reads as a stutter
            perm[0], perm[-1] = perm[-1], perm[0]
        for i in perm:
            if total >= seconds - TAIL_S:
                break
            pause = 0.0 if not order else BACK_TO_BACK_S if rng.random() < BACK_TO_BACK_P else rng.uniform(*PAUSE_S)
            order.append((i, round(pause, 3)))
            total += pause + clips[i].seconds
            last = i
    return order


def _key(clips: list[Clip], seconds: float, seed: int, index: int) -> str:
    recipe = {
        "v": MIX_VERSION, "seconds": seconds, "seed": seed, "index": index,
        "clips": [(c.file, len(c.samples)) for c in clips],
        "lead": LEAD_S, "tail": TAIL_S, "pause": PAUSE_S, "b2b": (BACK_TO_BACK_S, BACK_TO_BACK_P), "video": VIDEO,
    }  # fmt: skip
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]


def build_mix(folder: Path, clips: list[Clip], *, seconds: float, seed: int, index: int) -> Mix:
    """The ``index``-th mix of about ``seconds`` (a little more: the last clip is whole), cached in ``folder``."""
    if not clips:
        raise RuntimeError(f"no English recordings with a reference in {SHARED_SPEECH}")
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"mix{index}-{seconds / 60:g}min-seed{seed}-{_key(clips, seconds, seed, index)}"
    meta, media = folder / f"{stem}.json", folder / f"{stem}.mp4"
    if meta.is_file() and media.is_file():
        return Mix.load(meta)

    # Each mix its own stream of choices, so mix 2 is the same whatever --n is.
    rng = random.Random(f"{seed}/{index}")
    parts = [np.zeros(int(LEAD_S * SAMPLE_RATE), dtype="<i2")]
    length = len(parts[0])
    placed = []
    for i, pause in _plan(clips, seconds, rng):
        gap = np.zeros(int(round(pause * SAMPLE_RATE)), dtype="<i2")
        clip = clips[i]
        start = length + len(gap)
        parts += [gap, clip.samples]
        length = start + len(clip.samples)
        placed.append(Placed(clip.file, clip.text, round(start / SAMPLE_RATE, 3), round(length / SAMPLE_RATE, 3)))
    parts.append(np.zeros(int(TAIL_S * SAMPLE_RATE), dtype="<i2"))
    audio = np.concatenate(parts)
    total_s = len(audio) / SAMPLE_RATE

    tmp = media.with_name(media.stem + ".partial.mp4")
    proc = subprocess.run(
        [_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", VIDEO,
         "-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", "1", "-i", "-",
         "-map", "0:v", "-map", "1:a", "-t", f"{total_s:.3f}",
         "-c:v", _video_codec(), *(["-preset", "ultrafast"] if _video_codec() == "libx264" else []), "-pix_fmt", "yuv420p",
         # 44.1 kHz AAC as a camera or an editor writes it: the server resamples, as it must for uploads.
         "-c:a", "aac", "-b:a", "96k", "-ar", "44100", "-movflags", "+faststart", str(tmp)],
        input=audio.tobytes(), capture_output=True, check=False, timeout=600,
    )  # fmt: skip
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg could not write {media}: {proc.stderr.decode('utf-8', 'replace')[-800:]}")
    tmp.replace(media)
    mix = Mix(media, total_s, placed)
    mix.save(meta)
    return mix


# ---------------------------------------------------------------- scoring clip by clip


def aligned_hits(ref: list[str], hyp: list[str]) -> tuple[int, list[bool]]:
    """Word-level edit distance of ``hyp`` to ``ref`` and, for each reference word, whether the
    alignment matched it to the same word of the hypothesis (in order: an alignment is monotonic).

    Same costs as tests/wer.py (substitution, insertion, deletion: 1 each), so the
    distance equals its ``wer() * len(ref)``. Ties prefer a match, then a substitution.
    """
    n, m = len(ref), len(hyp)
    # Full table of back-pointers (one byte a cell: a 1,000 x 1,000 file pair is 1 MB).
    back = [bytearray(m + 1) for _ in range(n + 1)]
    DIAG, UP, LEFT = 0, 1, 2  # UP: reference word deleted; LEFT: hypothesis word inserted
    for j in range(1, m + 1):
        back[0][j] = LEFT
    prev = list(range(m + 1))
    for i in range(1, n + 1):
        r = ref[i - 1]
        cur = [i] + [0] * m
        row = back[i]
        row[0] = UP
        for j in range(1, m + 1):
            best = prev[j - 1] + (r != hyp[j - 1])
            how = DIAG
            if prev[j] + 1 < best:
                best, how = prev[j] + 1, UP
            if cur[j - 1] + 1 < best:
                best, how = cur[j - 1] + 1, LEFT
            cur[j] = best
            row[j] = how
        prev = cur
    hits = [False] * n
    i, j = n, m
    while i > 0 or j > 0:
        how = back[i][j]
        if how == DIAG:
            hits[i - 1] = ref[i - 1] == hyp[j - 1]
            i, j = i - 1, j - 1
        elif how == UP:
            i -= 1
        else:
            j -= 1
    return prev[m], hits


@dataclass(frozen=True)
class Gap:
    """A run of consecutive reference words the hypothesis does not have (deleted or replaced).

    Times are estimates: a clip's words spread evenly over the clip.
    """

    start_s: float
    end_s: float
    words: int
    text: str


@dataclass
class Alignment:
    edits: int  # word-level edit distance, as tests/wer.py counts it
    words: int  # reference words
    coverage: list[float]  # per placed clip: the fraction of its words found, in order
    gaps: list[Gap]


def align(mix: Mix, hypothesis: str, *, min_gap_words: int = 4) -> Alignment:
    """Score ``hypothesis`` against the mix's reference, clip by clip and gap by gap."""
    clip_words = [normalize(p.text) for p in mix.placed]
    ref: list[str] = []
    when: list[tuple[float, float]] = []  # each reference word's estimated span
    for p, ws in zip(mix.placed, clip_words):
        step = (p.end_s - p.start_s) / max(1, len(ws))
        when += [(p.start_s + i * step, p.start_s + (i + 1) * step) for i in range(len(ws))]
        ref += ws
    edits, hits = aligned_hits(ref, normalize(hypothesis))
    coverage, k = [], 0
    for ws in clip_words:
        coverage.append(sum(hits[k : k + len(ws)]) / len(ws) if ws else 1.0)
        k += len(ws)
    gaps, i = [], 0
    while i < len(ref):
        if hits[i]:
            i += 1
            continue
        j = i
        while j < len(ref) and not hits[j]:
            j += 1
        if j - i >= min_gap_words:
            gaps.append(Gap(round(when[i][0], 2), round(when[j - 1][1], 2), j - i, " ".join(ref[i:j])))
        i = j
    return Alignment(edits, len(ref), coverage, gaps)
