"""app.api.uploads: small uploads first (IngestGate), and the sink's last write."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from app.api.uploads import IngestGate, _Sink

MB = 1 << 20


async def _stream(gate: IngestGate, declared: str | None, chunks: int, log: list[str], name: str) -> None:
    lane = gate.lane(declared)
    try:
        for i in range(chunks):
            await lane.turn(i * 64 * 1024)
            log.append(name)
            await asyncio.sleep(0.01)
    finally:
        lane.close()


async def test_a_large_upload_waits_while_a_small_one_streams() -> None:
    gate = IngestGate(small_bytes=8 * MB, max_pause_s=5.0, min_run_s=5.0)
    log: list[str] = []
    small = asyncio.create_task(_stream(gate, str(2 * MB), 10, log, "s"))
    await asyncio.sleep(0)  # the small one has its lane
    large = asyncio.create_task(_stream(gate, str(500 * MB), 10, log, "L"))
    await asyncio.gather(small, large)
    # the large one took no chunk until the small one was answered
    assert log == ["s"] * 10 + ["L"] * 10
    assert (gate.small, gate.paused) == (0, 0)


async def test_a_large_upload_pauses_at_most_max_pause_then_streams() -> None:
    gate = IngestGate(small_bytes=8 * MB, max_pause_s=0.1, min_run_s=0.3)
    held = gate.lane(str(MB))  # a small upload that never ends
    try:
        lane = gate.lane(str(100 * MB))
        t0 = time.monotonic()
        await lane.turn(0)  # waits max_pause_s
        waited = time.monotonic() - t0
        assert 0.09 <= waited < 0.5
        t0 = time.monotonic()
        await lane.turn(64 * 1024)  # within min_run_s of its last pause: no wait
        assert time.monotonic() - t0 < 0.05
        lane.close()
    finally:
        held.close()
    assert gate.small == 0


async def test_with_no_small_upload_nothing_waits() -> None:
    gate = IngestGate(max_pause_s=5.0)
    lane = gate.lane(str(1000 * MB))
    t0 = time.monotonic()
    for i in range(1000):
        await lane.turn(i)
    assert time.monotonic() - t0 < 0.5 and not lane.small
    lane.close()


async def test_a_chunked_body_is_small_until_it_grows_past_the_bound() -> None:
    gate = IngestGate(small_bytes=MB)
    lane = gate.lane(None)  # no Content-Length
    assert lane.small and gate.small == 1
    await lane.turn(MB // 2)
    assert gate.small == 1
    await lane.turn(MB + 1)
    assert not lane.small and gate.small == 0
    lane.close()
    lane.close()  # idempotent
    assert gate.small == 0
    assert gate.lane("garbage").small  # an unreadable length counts as unknown


async def test_the_sink_writes_its_last_chunks_and_fsyncs_in_one_step(tmp_path: Path) -> None:
    sink = _Sink(tmp_path / "up.partial", max_bytes=10 * MB)
    data = b"x" * 1000
    sink.add(data)
    sink.add(memoryview(b"0123456789")[2:5])
    await sink.close()
    assert (tmp_path / "up.partial").read_bytes() == data + b"234"
    assert sink.size == 1003
