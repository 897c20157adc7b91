"""Minutes of continuous recorded speech: nothing is lost at window edges.

A 4-minute video is assembled from the shared recordings (sentences back to
back or with short pauses, so windows end inside speech too) and transcribed
by altyazi over HTTP and by faster-whisper's own sequential loop with the same
decoding (greedy, no conditioning: altyazi's defaults). altyazi must be as
accurate, and every recorded sentence must be in its transcript.
The 1-point WER target of the engine is measured by bench/longmedia.py on
4 x 6 minutes, where one window layout's word-level luck averages out.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.speechmix import Mix, Placed, aligned_hits, build_mix, reference_clips
from tests.conftest import LiveServer, tiny_engine_factory, wait_done
from tests.media import have_tool
from tests.wer import normalize, wer

CLIPS = reference_clips() if have_tool("ffmpeg") else []

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CLIPS, reason="needs the recordings in ../shared/data/speech"),
    pytest.mark.skipif(not have_tool("ffmpeg"), reason="needs ffmpeg"),
]

MINUTES = 4
# A sentence counts as present when at least this share of its words is in
# the transcript; tiny.en misspells names and numbers, it does not drop half
# of a sentence. Clips of fewer words ("IN EIGHTEEN THIRTEEN", written "In
# 1813") are too short to judge by words.
PRESENT = 0.5
MIN_WORDS = 4


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Mix:
    return build_mix(tmp_path_factory.mktemp("long"), CLIPS, seconds=MINUTES * 60, seed=7, index=0)


@functools.cache
def _reference_model():
    from faster_whisper import WhisperModel

    from app.model_files import resolve_model
    from tests.conftest import REPO, TINY_EN

    resolved = resolve_model(TINY_EN, REPO / "data")
    return WhisperModel(resolved.path_or_id, device="cpu", compute_type="int8")


def faster_whisper_text(path: Path, *, vad: bool) -> str:
    segments, _ = _reference_model().transcribe(
        str(path), beam_size=1, condition_on_previous_text=False, vad_filter=vad, language="en"
    )
    return " ".join(s.text.strip() for s in segments)


def missing_sentences(clips: list[Placed], hypothesis: str) -> list[str]:
    ref_words: list[str] = []
    owner: list[int] = []
    for k, clip in enumerate(clips):
        words = normalize(clip.text)
        ref_words += words
        owner += [k] * len(words)
    _, hits = aligned_hits(ref_words, normalize(hypothesis))
    missing = []
    for k, clip in enumerate(clips):
        mine = [h for h, o in zip(hits, owner) if o == k]
        if len(mine) >= MIN_WORDS and sum(mine) / len(mine) < PRESENT:
            missing.append(f"{clip.start_s:.1f}-{clip.end_s:.1f} s {clip.file}: {clip.text[:60]}")
    return missing


@pytest.mark.parametrize("vad", [True, False], ids=["vad", "no-vad"])
def test_long_video_is_as_accurate_as_faster_whisper_and_loses_no_sentence(
    vad: bool, long_video: Mix, make_server: Callable[..., LiveServer]
) -> None:
    video, clips, reference = long_video.path, long_video.placed, long_video.reference
    live = make_server(engine_factory=tiny_engine_factory)
    with live.client(timeout=60) as client:
        with open(video, "rb") as fh:
            r = client.post("/v1/jobs", files={"file": ("talk.mp4", fh)}, data={"vad": str(vad).lower()})
        assert r.status_code == 202, r.text
        job = wait_done(client, r.json()["id"], timeout=600)
        assert job["status"] == "done", job
        body = client.get(f"/v1/jobs/{job['id']}/transcript?format=json").json()
    segments = body["segments"]
    ours = " ".join(s["text"].strip() for s in segments)
    theirs = faster_whisper_text(video, vad=vad)
    ours_wer, theirs_wer = wer(reference, ours), wer(reference, theirs)
    print(f"vad={vad}: altyazi WER {ours_wer:.2%}, faster-whisper WER {theirs_wer:.2%}, {len(segments)} segments")

    # No sentence is lost that faster-whisper's sequential loop keeps. (tiny.en
    # itself now and then jumps over a sentence inside a window, in either
    # implementation, which is not an edge effect.)
    lost = set(missing_sentences(clips, ours)) - set(missing_sentences(clips, theirs))
    assert len(lost) <= 1, lost
    # Accuracy. One 4-minute file holds about 550 words, and where windows
    # start changes which words tiny.en gets wrong: the same decoding varies by
    # a point or so from one window layout to another (measured). So words
    # are held within 2 % of faster-whisper's, and a lost stretch would show
    # as reference words found by faster-whisper and not by altyazi. The
    # 1-point target is measured on 4 x 6 minutes by bench/longmedia.py.
    ref = normalize(reference)
    found_ours = sum(aligned_hits(ref, normalize(ours))[1])
    found_theirs = sum(aligned_hits(ref, normalize(theirs))[1])
    assert found_ours >= found_theirs - 0.02 * len(ref), (found_ours, found_theirs, len(ref))
    assert ours_wer <= theirs_wer + 0.02
    # Edges read well: ids in order, times never go back.
    assert [s["id"] for s in segments] == list(range(len(segments)))
    for a, b in zip(segments, segments[1:]):
        assert a["start"] <= b["start"] and a["end"] <= b["start"] + 1e-6, (a, b)
    for s in segments:
        assert s["start"] <= s["end"]
