"""app.api.uploads: small uploads first and in turns (IngestGate), and the sink's writes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from app.api.uploads import IngestGate, IngestLane, _Sink

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


async def _take(lane_gate: IngestGate, declared: str, chunks: int, log: list[str], name: str, pause: float = 0.01) -> None:
    lane = lane_gate.lane(declared)
    try:
        for i in range(chunks):
            await lane.turn(i * 64 * 1024)
            assert len(lane_gate.streaming) <= lane_gate.max_streams
            log.append(name)
            await asyncio.sleep(pause)
        lane.body_done()
    finally:
        lane.close()


async def test_at_most_max_streams_take_chunks_and_turns_rotate() -> None:
    gate = IngestGate(max_streams=2, slice_s=0.05, idle_s=1.0)
    log: list[str] = []
    await asyncio.gather(*(_take(gate, str(100 * MB), 20, log, name) for name in "ABCD"))
    assert sorted(log) == sorted("ABCD" * 20)
    # C and D did not wait for A and B to finish: turns of 50 ms went round
    first_c = log.index("C")
    assert "A" in log[first_c:] and "B" in log[first_c:]
    assert not gate.streaming and gate.waiting == 0


async def test_small_uploads_are_served_before_large_ones_in_line() -> None:
    gate = IngestGate(small_bytes=8 * MB, max_pause_s=0.5, min_run_s=10.0, max_streams=1, slice_s=0.05, idle_s=1.0)
    log: list[str] = []
    holder = asyncio.create_task(_take(gate, str(100 * MB), 10, log, "H"))
    await asyncio.sleep(0.02)  # H holds the only turn
    large = asyncio.create_task(_take(gate, str(100 * MB), 3, log, "L"))
    await asyncio.sleep(0.005)
    small = asyncio.create_task(_take(gate, str(MB), 3, log, "s"))
    await asyncio.gather(holder, large, small)
    # the small upload came after the large one but got the next turn
    assert log.index("s") < log.index("L")


async def test_an_idle_holder_loses_its_turn_to_the_next_in_line() -> None:
    gate = IngestGate(max_streams=1, slice_s=10.0, idle_s=0.05)
    idle = gate.lane(str(100 * MB))
    await idle.turn(0)  # holds the turn, then sends nothing
    other = gate.lane(str(100 * MB))
    t0 = time.monotonic()
    await other.turn(0)
    assert 0.04 <= time.monotonic() - t0 < 1.0
    assert gate.streaming == {other}
    # the idle one is back in line at its next chunk, behind the one streaming
    waiting = asyncio.create_task(idle.turn(64 * 1024))
    await asyncio.sleep(0.01)
    assert not waiting.done() and gate.waiting == 1
    other.body_done()
    await asyncio.wait_for(waiting, 1.0)
    assert gate.streaming == {idle}
    idle.close(), other.close()
    assert not gate.streaming


async def _holder_and_one_that_gave_up(gate: IngestGate) -> tuple[IngestLane, IngestLane]:
    """One upload holding the only turn, and one whose request ended while it waited in line."""
    holder = gate.lane(str(100 * MB))
    await holder.turn(0)
    gone = gate.lane(str(100 * MB))
    task = asyncio.create_task(gone.turn(0))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return holder, gone


async def test_a_request_that_ends_while_waiting_leaves_no_trace() -> None:
    gate = IngestGate(max_streams=1, slice_s=10.0, idle_s=10.0)
    holder, waiter = await _holder_and_one_that_gave_up(gate)
    waiter.close()
    holder.close()
    assert not gate.streaming and gate.waiting == 0
    third = gate.lane(str(100 * MB))
    await asyncio.wait_for(third.turn(0), 0.5)  # the line is free
    third.close()


async def test_without_a_bound_nothing_waits_for_a_turn() -> None:
    gate = IngestGate(max_streams=0)
    lanes = [gate.lane(str(100 * MB)) for _ in range(50)]
    for lane in lanes:
        await asyncio.wait_for(lane.turn(0), 0.1)
    assert not gate.streaming


async def test_the_sink_writes_while_the_next_chunks_arrive_in_order(tmp_path: Path) -> None:
    sink = _Sink(tmp_path / "up.partial", max_bytes=100 * MB)
    parts = [bytes([65 + i]) * (3 * MB) for i in range(6)]
    for part in parts:
        sink.add(part)
        if sink.should_flush:
            await sink.flush()
    await sink.close()
    assert (tmp_path / "up.partial").read_bytes() == b"".join(parts)


async def test_discarding_the_sink_waits_for_its_write_in_flight(tmp_path: Path) -> None:
    sink = _Sink(tmp_path / "up.partial", max_bytes=100 * MB)
    sink.add(b"x" * (5 * MB))
    await sink.flush()  # a write now in flight in a thread
    await sink.discard()
    assert not (tmp_path / "up.partial").exists()


async def test_a_free_turn_is_taken_at_once_even_behind_requests_that_ended() -> None:
    gate = IngestGate(max_streams=1, slice_s=0.0, idle_s=10.0)
    holder, gone = await _holder_and_one_that_gave_up(gate)  # a stale place in line
    # the holder's turn is up (slice 0) with someone apparently in line: it
    # rotates, finds the line empty of live requests and goes on without waiting
    await asyncio.wait_for(holder.turn(64 * 1024), 0.1)
    assert gate.streaming == {holder}
    holder.close(), gone.close()


async def test_a_steady_stream_of_small_uploads_does_not_stall_a_large_one() -> None:
    gate = IngestGate(small_bytes=8 * MB, max_pause_s=0.1, min_run_s=0.0, max_streams=1, slice_s=0.02, idle_s=1.0)
    log: list[str] = []
    stop = asyncio.Event()

    async def smalls() -> None:
        n = 0
        while not stop.is_set():  # one small upload always streaming or in line
            await _take(gate, str(MB), 3, log, f"s{n}")
            n += 1

    feeders = [asyncio.create_task(smalls()) for _ in range(2)]
    await asyncio.sleep(0.02)
    t0 = time.monotonic()
    await asyncio.wait_for(_take(gate, str(100 * MB), 3, log, "L"), 2.0)
    waited = time.monotonic() - t0
    stop.set()
    await asyncio.gather(*feeders)
    assert waited < 1.0 and log.count("L") == 3
