"""The fake engine the job-pipeline tests stand on: deterministic, steerable, cancellable."""

from __future__ import annotations

import asyncio

import pytest

from batching.fake_engine import FakeEngine, FakeEngineError
from batching.types import AudioRef, DecodeOptions, Engine, WindowRequest


def win(job: str, index: int, *, seconds: float = 30.0, **options: object) -> WindowRequest:
    return WindowRequest(
        owner="o",
        job_id=job,
        index=index,
        offset=30.0 * index,
        audio=AudioRef("/nonexistent.pcm", 0, int(16_000 * seconds)),
        options=DecodeOptions(**options),  # type: ignore[arg-type]
    )


async def test_is_an_engine_with_deterministic_segments() -> None:
    engine = FakeEngine()
    assert isinstance(engine, Engine)
    await engine.start()
    res = await engine.transcribe(win("j", 2, seconds=12.5, language="de", word_timestamps=True))
    (seg,) = res.segments
    assert (seg.start, seg.end, seg.text) == (60.0, 72.5, "window 2")
    assert res.language == "de"
    assert seg.words is not None and seg.words[0].start == 60.0 and seg.words[-1].end == 72.5
    assert [w.index for w in engine.calls] == [2]


async def test_fails_chosen_windows_only() -> None:
    engine = FakeEngine()
    engine.fail_window("j", 1)
    await engine.start()
    out = await asyncio.gather(*(engine.transcribe(win("j", i)) for i in range(3)), return_exceptions=True)
    assert isinstance(out[1], FakeEngineError)
    assert [s.text for r in (out[0], out[2]) for s in r.segments] == ["window 0", "window 2"]  # type: ignore[union-attr]


async def test_delay_goes_through_the_injected_sleep() -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    engine = FakeEngine(delay=lambda w: w.index + 0.5, sleep=fake_sleep)
    await engine.start()
    await asyncio.gather(engine.transcribe(win("j", 0)), engine.transcribe(win("j", 3)))
    assert sorted(slept) == [0.5, 3.5]


async def test_hold_and_cancel_job() -> None:
    hold = asyncio.Event()
    engine = FakeEngine(hold=hold)
    await engine.start()
    a = [asyncio.ensure_future(engine.transcribe(win("a", i))) for i in range(3)]
    b = asyncio.ensure_future(engine.transcribe(win("b", 0)))
    while len(engine.calls) < 4:
        await asyncio.sleep(0)
    assert engine.queue_position("a") == 0 and engine.queue_position("b") == 1
    assert engine.cancel_job("a") == 3
    hold.set()
    assert (await b).segments[0].text == "window 0"
    for task in a:
        with pytest.raises(asyncio.CancelledError):
            await task
    assert engine.queue_position("a") is None
    assert engine.stats.cancelled == 3 and engine.stats.completed == 1
    await engine.stop()
