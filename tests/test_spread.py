"""SpreadEngine: one engine per GPU, each job's windows kept on one of them."""

from __future__ import annotations

import asyncio

import pytest

from batching.fake_engine import FakeEngine
from batching.spread import SpreadEngine
from batching.types import AudioRef, DecodeOptions, Engine, EngineStats, WindowRequest

GUARD_S = 5.0


def window(job: str, index: int = 0) -> WindowRequest:
    return WindowRequest(
        owner="o", job_id=job, index=index, offset=float(index),
        audio=AudioRef("/nonexistent.pcm", 0, 16000), options=DecodeOptions(language="en"),
    )  # fmt: skip


async def spread(n: int) -> tuple[SpreadEngine, list[FakeEngine], asyncio.Event]:
    hold = asyncio.Event()
    fakes = [FakeEngine(hold=hold) for _ in range(n)]
    engine = SpreadEngine(fakes)
    await engine.start()
    return engine, fakes, hold


async def test_it_is_an_engine_and_starts_every_device() -> None:
    engine, fakes, _ = await spread(2)
    assert isinstance(engine, Engine)
    assert all(f.started for f in fakes)
    await engine.stop()
    assert all(f.stopped for f in fakes)


async def test_jobs_fill_every_device_and_a_job_stays_on_one() -> None:
    engine, fakes, hold = await spread(2)
    tasks = [asyncio.create_task(engine.transcribe(window(job, i))) for job in ("a", "b") for i in range(3)]
    tasks.append(asyncio.create_task(engine.transcribe(window("c"))))
    await asyncio.sleep(0)
    hold.set()
    await asyncio.wait_for(asyncio.gather(*tasks), GUARD_S)
    where = {w.job_id: {i for i, f in enumerate(fakes) if w in f.calls} for f in fakes for w in f.calls}
    assert where["a"] == {0} and where["b"] == {1}  # the second job went to the idle device
    assert len(where["c"]) == 1
    assert len(fakes[0].calls) + len(fakes[1].calls) == 7
    stats = engine.stats
    assert isinstance(stats, EngineStats) and stats.items_run == 7
    assert stats.batch_size_histogram == {1: 7}
    await engine.stop()


async def test_a_lone_job_does_not_hop_between_devices() -> None:
    engine, fakes, hold = await spread(3)
    hold.set()
    for i in range(4):
        await asyncio.wait_for(engine.transcribe(window("solo", i)), GUARD_S)
    assert [len(f.calls) for f in fakes] == [4, 0, 0]
    await engine.stop()


async def test_cancel_reaches_the_device_holding_the_job() -> None:
    engine, fakes, hold = await spread(2)
    tasks = [asyncio.create_task(engine.transcribe(window("a", i))) for i in range(2)]
    await asyncio.wait_for(fakes[0].wait_for_calls(2), GUARD_S)
    assert engine.queue_position("a") == 0
    assert engine.cancel_job("a") == 2
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), GUARD_S)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert engine.queue_position("a") is None
    hold.set()
    await engine.stop()


def test_no_engines_is_refused() -> None:
    with pytest.raises(ValueError):
        SpreadEngine([])
