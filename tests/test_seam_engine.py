"""The engine seam (batching.types.Engine): one contract, run on the fake engine and on
the real Whisper engine with tiny.en (slow). Nothing here reaches past the protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from batching.batcher import BatcherOptions
from batching.fake_engine import FakeEngine
from batching.types import AudioRef, DecodeOptions, Engine, EngineStats, WindowRequest, WindowResult
from tests.media import have_tool, speak, to_pcm


def _whisper() -> Engine:
    from app.model_files import resolve_model
    from batching.whisper_engine import WhisperEngine

    resolved = resolve_model("tiny.en", Path("data"))  # tiny.en ships in a package; no data dir is read
    return WhisperEngine(
        {"model": resolved.path_or_id, "device": "cpu", "compute_type": "int8", "cpu_threads": 2},
        options=BatcherOptions(max_batch_size=4, max_wait_s=0.0, prepare_threads=1),
    )


IMPLEMENTATIONS: dict[str, Callable[[], Engine]] = {"fake": FakeEngine, "whisper": _whisper}


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (have_tool("ffmpeg") and have_tool("espeak-ng")):
        pytest.skip("ffmpeg and espeak-ng are needed to make test speech")
    root = tmp_path_factory.mktemp("engine-seam")
    return to_pcm(speak("Seven green apples were sitting on the kitchen table.", root / "say.wav"), root / "say.pcm")


@pytest.fixture(params=[pytest.param("fake"), pytest.param("whisper", marks=pytest.mark.slow)])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[Engine]:
    made = IMPLEMENTATIONS[request.param]()
    await made.start()
    try:
        yield made
    finally:
        await made.stop()


def window(pcm: Path, job: str, index: int = 0, *, offset: float = 0.0) -> WindowRequest:
    return WindowRequest(
        owner="o", job_id=job, index=index, offset=offset,
        audio=AudioRef(str(pcm), 0, pcm.stat().st_size // 2), options=DecodeOptions(language="en"),
    )


async def test_it_is_an_engine(engine: Engine) -> None:
    assert isinstance(engine, Engine)
    assert isinstance(engine.stats, EngineStats)


async def test_a_window_comes_back_in_media_time(engine: Engine, speech: Path) -> None:
    w = window(speech, "job", offset=60.0)
    result = await engine.transcribe(w)
    assert isinstance(result, WindowResult) and result.language == "en"
    assert result.segments and "".join(s.text for s in result.segments).strip()
    for seg in result.segments:
        assert 60.0 <= seg.start <= seg.end <= 60.0 + w.duration + 0.5


async def test_windows_of_many_jobs_each_get_their_own_answer(engine: Engine, speech: Path) -> None:
    results = await asyncio.gather(*(engine.transcribe(window(speech, f"job{i}", offset=30.0 * i)) for i in range(3)))
    for i, result in enumerate(results):
        assert result.segments and all(30.0 * i <= s.start for s in result.segments)
    stats = engine.stats
    assert stats.items_run >= 3 and stats.queue_depth == 0 and stats.running == 0


async def test_cancel_job_withdraws_only_that_jobs_windows(engine: Engine, speech: Path) -> None:
    keep = asyncio.ensure_future(engine.transcribe(window(speech, "keep")))
    drop = [asyncio.ensure_future(engine.transcribe(window(speech, "drop", i))) for i in range(6)]
    await asyncio.sleep(0)  # let every call reach the engine's queue
    withdrawn = engine.cancel_job("drop")
    outcomes = await asyncio.gather(*drop, return_exceptions=True)
    cancelled = sum(isinstance(o, asyncio.CancelledError) for o in outcomes)
    assert cancelled == withdrawn  # what ran had already started; the rest was withdrawn
    assert all(isinstance(o, (WindowResult, asyncio.CancelledError)) for o in outcomes)
    assert (await keep).segments
    assert engine.cancel_job("drop") == 0


async def test_drain_waits_for_the_window_on_the_model(engine: Engine, speech: Path) -> None:
    assert await engine.drain(0.0) is True  # idle: nothing to wait for
    running = asyncio.ensure_future(engine.transcribe(window(speech, "job")))
    await asyncio.sleep(0)
    assert await engine.drain(120.0) is True
    await running
    assert engine.stats.running == 0
