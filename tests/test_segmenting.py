"""batching.segmenting: every way a window's tokens can end, with synthetic tokens."""

from __future__ import annotations

import pytest

from batching.segmenting import MIN_PROGRESS_S, MIN_REMAINDER_S, split_tokens

TB = 50_000  # timestamp_begin: token ids from here on are timestamps


def t(seconds: float) -> int:
    return TB + round(seconds / 0.02)


A, B, C, D = 101, 102, 103, 104  # text tokens


def split(tokens: list[int], *, offset: float = 100.0, duration: float = 30.0, cut: bool = False):
    return split_tokens(tokens, timestamp_begin=TB, offset=offset, duration=duration, ends_in_speech=cut)


def spans(result) -> list[tuple[float, float, tuple[int, ...]]]:
    return [(round(s.start, 2), round(s.end, 2), tuple(x for x in s.tokens if x < TB)) for s in result.segments]


def test_all_segments_closed_single_timestamp_ending():
    r = split([t(0), A, t(2.4), t(2.4), B, t(5)], cut=True)
    assert spans(r) == [(100.0, 102.4, (A,)), (102.4, 105.0, (B,))]
    # The model says nothing follows 5 s; 25 s are left, so that is checked.
    assert r.covered_until == 105.0 and not r.dropped_tail
    # Closed near the end of a window that ends in a pause: done.
    near = split([t(0), A, t(2.4), t(2.4), B, t(29.5)], cut=False)
    assert near.covered_until == 130.0


@pytest.mark.parametrize("cut", [True, False])
def test_stopping_after_a_pair_goes_on_from_there(cut: bool):
    # Seen on recordings: the model closed a segment at 20 s of a 28-s window
    # full of speech and stopped; the rest of the window is decoded again.
    r = split([t(0), A, t(2.4), t(2.4), B, t(20), t(20)], duration=28.0, cut=cut)
    assert spans(r) == [(100.0, 102.4, (A,)), (102.4, 120.0, (B,))]
    assert r.covered_until == pytest.approx(120.0) and not r.dropped_tail


@pytest.mark.parametrize("cut", [True, False])
def test_unfinished_tail_is_dropped_and_decoded_again_from_its_start(cut: bool):
    # The bug this module exists for: "C D" used to vanish from the transcript.
    r = split([t(0), A, t(2.4), t(2.4), B, t(5), t(5), C, D], cut=cut)
    assert spans(r) == [(100.0, 102.4, (A,)), (102.4, 105.0, (B,))]
    assert r.dropped_tail
    assert r.covered_until == pytest.approx(105.0)


def test_a_pause_ended_window_keeps_a_tail_that_lies_in_its_padding():
    end = 30.0 - MIN_REMAINDER_S / 2
    r = split([t(0), A, t(end), t(end), B], cut=False)
    assert spans(r) == [(100.0, round(100 + end, 2), (A,)), (round(100 + end, 2), 130.0, (B,))]
    assert r.covered_until == 130.0 and not r.dropped_tail
    # At a hard cut the same tail is decoded again with the next window.
    assert split([t(0), A, t(end), t(end), B], cut=True).covered_until == pytest.approx(100 + end)


def test_no_timestamp_pair_is_one_segment_over_the_window():
    r = split([t(0), A, B], duration=12.0, cut=True)
    assert spans(r) == [(100.0, 112.0, (A, B))]
    assert r.covered_until == 112.0  # Whisper's rule: nothing to seek back to


def test_single_segment_closed_ends_at_its_timestamp():
    r = split([t(0.4), A, B, t(7.0)], duration=12.0)
    assert spans(r) == [(100.4, 107.0, (A, B))]
    assert r.covered_until == 107.0  # 5 s are left: decoded again
    assert split([t(0.4), A, B, t(11.5)], duration=12.0).covered_until == 112.0


def test_only_timestamps_or_nothing_gives_no_segment():
    assert split([]).segments == ()
    assert split([t(0)]).segments == ()
    assert split([t(0), t(0)]).segments == ()


def test_a_cut_that_would_not_move_forward_keeps_the_whole_window():
    # The last closed segment ends before MIN_PROGRESS_S: seeking there would
    # decode almost the same audio again, so the tail is kept instead.
    early = MIN_PROGRESS_S / 2
    r = split([t(0), A, t(early), t(early), B, C], cut=True)
    assert spans(r) == [(100.0, round(100 + early, 2), (A,)), (round(100 + early, 2), 130.0, (B, C))]
    assert not r.dropped_tail and r.covered_until == 130.0


def test_vad_hard_split_window_shorter_than_30s():
    # Silero split 28 s of speech without a pause: the window is cut, and the
    # model's open last segment is decoded again with the next window.
    r = split([t(0), A, t(10), t(10), B, t(20), t(20), C], offset=60.0, duration=28.0, cut=True)
    assert [s.end for s in r.segments] == [pytest.approx(70.0), pytest.approx(80.0)]
    assert r.covered_until == pytest.approx(80.0)
