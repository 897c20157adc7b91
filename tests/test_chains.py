"""app.pipeline.chains: windows joined by hard cuts are decoded in sequence, and resume right."""

from __future__ import annotations

import asyncio

from app.pipeline.chains import Chain, Piece, ResumePoint
from app.pipeline.windows import WindowSpan
from batching.types import SAMPLE_RATE, Segment, WindowResult

S = SAMPLE_RATE


class Decoder:
    """Answers each window with one segment; ``leave`` seconds unfinished at a cut."""

    def __init__(self, leave: float = 0.0, temperature: float = 0.0) -> None:
        self.leave = leave
        self.temperature = temperature
        self.calls: list[tuple[int, int, bool, tuple[int, ...]]] = []

    async def __call__(self, start: int, stop: int, cut: bool, previous: tuple[int, ...]) -> WindowResult:
        self.calls.append((start, stop, cut, previous))
        end = stop / S - (self.leave if cut else 0.0)
        covered = end if cut and self.leave else None
        n = len(self.calls)
        seg = Segment(start=start / S, end=end, text=f"w{n}")
        return WindowResult((seg,), "en", 1.0, covered_until=covered, temperature=self.temperature, tokens=(n, n))


async def run(chain: Chain, spans: list[WindowSpan]) -> list[Piece]:
    task = asyncio.create_task(chain.run())
    for span in spans:
        chain.add(span)
    chain.close()
    pieces = [p async for p in chain.pieces()]
    await task
    return pieces


async def test_windows_ending_in_pauses_decode_as_planned():
    dec = Decoder(leave=2.0)
    pieces = await run(Chain(dec, conditioned=False), [WindowSpan(0, 20 * S)])
    assert dec.calls == [(0, 20 * S, False, ())]
    assert [(p.start, p.stop, p.next, p.carry) for p in pieces] == [(0, 20 * S, 20 * S, False)]


async def test_a_cut_window_hands_its_unfinished_tail_to_the_next():
    dec = Decoder(leave=3.0)
    spans = [WindowSpan(0, 30 * S, ends_in_speech=True), WindowSpan(30 * S, 20 * S)]
    pieces = await run(Chain(dec, conditioned=False), spans)
    # The second window starts where the first one's finished text ends (27 s),
    # not at the cut (30 s): nothing between them is lost or decoded twice.
    assert dec.calls == [(0, 30 * S, True, ()), (27 * S, 50 * S, False, ())]
    assert [(p.start, p.next, p.carry) for p in pieces] == [(0, 27 * S, True), (27 * S, 50 * S, False)]


async def test_a_carried_tail_longer_than_30_s_is_split_again():
    dec = Decoder(leave=5.0)
    spans = [WindowSpan(0, 30 * S, ends_in_speech=True), WindowSpan(30 * S, 30 * S)]
    pieces = await run(Chain(dec, conditioned=False), spans)
    assert dec.calls[0] == (0, 30 * S, True, ())
    assert dec.calls[1] == (25 * S, 55 * S, True, ())  # 35 s left: 30 s now, cut
    assert dec.calls[2] == (50 * S, 60 * S, False, ())
    assert pieces[-1].next == 60 * S
    # Every sample from 0 to 60 s is decoded by exactly one kept piece.
    assert [(p.start, p.next) for p in pieces] == [(0, 25 * S), (25 * S, 50 * S), (50 * S, 60 * S)]


async def test_conditioned_windows_hear_the_tokens_before_them_unless_they_were_warm():
    dec = Decoder()
    spans = [WindowSpan(0, 10 * S), WindowSpan(12 * S, 10 * S), WindowSpan(24 * S, 10 * S)]
    await run(Chain(dec, conditioned=True), spans)
    assert [c[3] for c in dec.calls] == [(), (1, 1), (1, 1, 2, 2)]
    warm = Decoder(temperature=0.8)
    await run(Chain(warm, conditioned=True), spans)
    assert [c[3] for c in warm.calls] == [(), (), ()]


async def test_a_window_the_model_stopped_early_in_is_decoded_again_from_there():
    calls: list[tuple[int, int]] = []

    async def stops_at_12s_once(start: int, stop: int, cut: bool, previous: tuple[int, ...]) -> WindowResult:
        calls.append((start, stop))
        covered = 12.0 if len(calls) == 1 else None
        seg = Segment(start=start / S, end=(covered or stop / S), text=f"w{len(calls)}")
        return WindowResult((seg,), "en", 1.0, covered_until=covered)

    pieces = await run(Chain(stops_at_12s_once, conditioned=False), [WindowSpan(0, 25 * S)])
    assert calls == [(0, 25 * S), (12 * S, 25 * S)]
    assert [(p.start, p.next, p.carry) for p in pieces] == [(0, 12 * S, False), (12 * S, 25 * S, False)]


async def test_unconditioned_chains_send_no_context():
    dec = Decoder(leave=2.0)
    spans = [WindowSpan(0, 30 * S, ends_in_speech=True), WindowSpan(30 * S, 10 * S)]
    await run(Chain(dec, conditioned=False), spans)
    assert all(c[3] == () for c in dec.calls)


def test_resume_point_skips_what_was_saved():
    spans = [WindowSpan(0, 10 * S), WindowSpan(12 * S, 30 * S, ends_in_speech=True), WindowSpan(42 * S, 10 * S)]
    fresh = ResumePoint()
    assert [fresh.remaining(s) for s in spans] == [(True, None)] * 3
    # Saved up to the end of the first window: the rest as planned.
    after_first = ResumePoint(10 * S)
    assert [after_first.remaining(s) for s in spans[:2]] == [(False, None), (True, None)]
    # The cut window's finished part was saved and its tail carried on: the
    # third window starts at the carried position.
    carried = ResumePoint(39 * S, carry=True)
    assert [carried.remaining(s) for s in spans] == [(False, None), (False, None), (True, 39 * S)]
    # Saved halfway through a long window (a piece cut inside it): go on inside it.
    inside = ResumePoint(30 * S)
    assert [inside.remaining(s) for s in spans[:2]] == [(False, None), (True, 30 * S)]


def test_resume_point_from_a_saved_piece():
    point = ResumePoint.after({"next": 480000, "carry": True, "segments": [{"text": " Hello"}]})
    assert point == ResumePoint(480000, True)
