"""Fair slots of the ffmpeg pool: reads before renders, owners in turn, a slot kept for reads.

The first tests drive :class:`FairSlots` alone; the next run fake ffmpeg
processes (a shell script that logs its start and waits to be let go) through
the real pool; the last one is a live server with real ffmpeg, where one key's
burn exports must not hold up another key's upload.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Callable

import pytest

from app.media.ffmpeg import FfmpegPool
from app.media.ffmpeg_slots import FairSlots, Kind
from tests.conftest import LiveServer, add_keys, bearer, settle, wait_done
from tests.media import make_video_with_speech, speak


class Runner:
    """Tasks that take a slot, log it, and hold it until released by label."""

    def __init__(self, slots: FairSlots) -> None:
        self.slots = slots
        self.started: list[str] = []
        self.go: dict[str, asyncio.Event] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def submit(self, label: str, kind: Kind, owner: str) -> None:
        self.go[label] = asyncio.Event()

        async def work() -> None:
            await self.slots.acquire(kind, owner)
            try:
                self.started.append(label)
                await self.go[label].wait()
            finally:
                self.slots.release(kind)

        self.tasks[label] = asyncio.create_task(work())

    async def finish(self, label: str) -> None:
        self.go[label].set()
        await self.tasks[label]
        await settle()


async def test_reads_first_renders_in_turn_by_owner() -> None:
    run = Runner(FairSlots(2))  # renders get 1 slot of 2
    for label in ("a1", "a2", "a3"):
        run.submit(label, "render", "A")
    await settle()
    run.submit("b1", "render", "B")  # B asks after A queued three
    run.submit("x1", "read", "C")
    run.submit("x2", "read", "D")
    await settle()
    assert run.started == ["a1", "x1"]  # the second slot was kept for reads
    await run.finish("x1")
    assert run.started[-1] == "x2"  # a read goes before every queued render
    await run.finish("a1")
    assert run.started[-1] == "b1"  # B's turn, although A's a2 waited longer
    await run.finish("b1")
    await run.finish("x2")
    await run.finish("a2")
    await run.finish("a3")
    assert run.started == ["a1", "x1", "x2", "b1", "a2", "a3"]
    assert run.slots.busy == 0 and run.slots.waiting == 0


async def test_round_robin_over_three_owners() -> None:
    run = Runner(FairSlots(1, render_slots=1))
    run.submit("hold", "read", "Z")
    await settle()
    for owner, n in (("A", 3), ("B", 2), ("C", 1)):
        for i in range(n):
            run.submit(f"{owner}{i}", "render", owner)
    await settle()
    order = ["A0", "B0", "C0", "A1", "B1", "A2"]
    await run.finish("hold")
    for label in order:
        await run.finish(label)
    assert run.started == ["hold", *order]


async def test_cancelled_waiter_leaves_no_trace() -> None:
    run = Runner(FairSlots(1))
    run.submit("a", "render", "A")
    run.submit("b", "render", "B")
    run.submit("c", "render", "C")
    await settle()
    run.tasks["b"].cancel()
    await settle()
    assert run.slots.waiting == 1
    await run.finish("a")
    assert run.started == ["a", "c"]
    await run.finish("c")
    assert run.slots.busy == 0 and run.slots.waiting == 0


async def test_granted_then_cancelled_gives_the_slot_back() -> None:
    slots = FairSlots(1)
    await slots.acquire("read", "A")
    waiter = asyncio.create_task(slots.acquire("read", "B"))
    await settle()
    slots.release("read")  # grants B's future ...
    waiter.cancel()  # ... whose task is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert slots.busy == 0
    await asyncio.wait_for(slots.acquire("read", "C"), 1)


def test_render_slots_are_checked() -> None:
    assert FairSlots(1).render_slots == 1
    assert FairSlots(4).render_slots == 3
    assert FairSlots(4, render_slots=4).render_slots == 4
    with pytest.raises(ValueError):
        FairSlots(2, render_slots=3)


def test_render_processes_config_is_checked() -> None:
    from app.config import ConfigError, load_config

    assert load_config(environ={}).ffmpeg.max_render_processes == 0
    with pytest.raises(ConfigError, match="ffmpeg.max_render_processes = 3"):
        load_config(environ={}, overrides={"ffmpeg.max_processes": 2, "ffmpeg.max_render_processes": 3})
    with pytest.raises(ConfigError, match="limits.max_exports_per_key = 0"):
        load_config(environ={}, overrides={"limits.max_exports_per_key": 0})
    with pytest.raises(ValueError):
        FfmpegPool(max_processes=2, render_processes=3)


# -- the real pool, with fake ffmpeg processes ----------------------------------------


@pytest.fixture
def fake_ffmpeg(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in ffmpeg: logs its last argument (the output) and waits for a file named after it."""
    log = tmp_path / "started.log"
    script = tmp_path / "ffmpeg"
    script.write_text(
        "#!/bin/sh\n"
        'for last; do :; done\n'
        f'echo "$last" >> "{log}"\n'
        f'while [ ! -e "{tmp_path}/go-$last" ]; do sleep 0.01; done\n'
    )
    script.chmod(0o755)
    return script, log


async def test_pool_runs_processes_in_fair_order(fake_ffmpeg: tuple[Path, Path], tmp_path: Path) -> None:
    script, log = fake_ffmpeg
    pool = FfmpegPool(ffmpeg=str(script), max_processes=2)

    def started() -> list[str]:
        return log.read_text().split() if log.exists() else []

    async def wait_started(n: int) -> None:
        deadline = time.monotonic() + 10
        while len(started()) < n:
            assert time.monotonic() < deadline, started()
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # room for a process that should not start

    tasks = {}

    def submit(label: str, kind: Kind, owner: str) -> None:
        tasks[label] = asyncio.create_task(pool.run(["-i", "file:/dev/null", label], kind=kind, owner=owner))

    def let_go(label: str) -> None:
        (tmp_path / f"go-{label}").touch()

    for label in ("a1", "a2", "a3"):
        submit(label, "render", "A")
    await wait_started(1)
    submit("b1", "render", "B")
    submit("x1", "read", "C")
    await wait_started(2)
    submit("x2", "read", "D")
    await asyncio.sleep(0.1)
    assert started() == ["a1", "x1"] and pool.busy == 2 and pool.waiting == 4
    for label, expect in (("x1", "x2"), ("a1", "b1"), ("b1", "a2"), ("a2", "a3")):
        before = len(started())
        let_go(label)
        await tasks[label]
        await wait_started(before + 1)
        assert started()[-1] == expect, started()
    for label in ("x2", "a3"):
        let_go(label)
        await tasks[label]
    assert started() == ["a1", "x1", "x2", "b1", "a2", "a3"]
    assert pool.busy == 0 and pool.waiting == 0


# -- a live server with real ffmpeg ----------------------------------------------------------


def test_one_keys_burn_exports_do_not_hold_up_another_keys_upload(make_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    # Before: one FIFO for everything, so B's extraction waited behind every queued render.
    clip = make_video_with_speech("a video to burn subtitles into", tmp_path / "talk.mp4", size="640x360")
    short = speak("just a short clip", tmp_path / "short.wav")
    data = tmp_path / "data"
    keys = add_keys(data, "alice", max_exports=8)
    keys.update(add_keys(data, "bob"))
    live = make_server(data_dir=data, **{"auth.enabled": True, "auth.rate_limit_per_minute": 0, "ffmpeg.max_processes": 2})
    with live.client(headers=bearer(keys["alice"])) as client, live.client(headers=bearer(keys["bob"])) as b_client:
        with open(clip, "rb") as fh:
            job = client.post("/v1/jobs", files={"file": ("talk.mp4", fh)}).json()
        assert wait_done(client, job["id"])["status"] == "done"
        exports = []
        for _ in range(8):
            r = client.post(f"/v1/jobs/{job['id']}/exports", json={"mode": "burn", "preset": "medium"})
            assert r.status_code == 202, r.text
            exports.append(r.json()["id"])
        t0 = time.monotonic()
        with open(short, "rb") as fh:
            b_job = b_client.post("/v1/jobs", files={"file": ("short.wav", fh)}).json()
        assert wait_done(b_client, b_job["id"])["status"] == "done"
        b_seconds = time.monotonic() - t0
        pending = [e for e in exports if client.get(f"/v1/jobs/{job['id']}/exports/{e}").json()["status"] != "done"]
        print(f"B's clip done in {b_seconds:.2f} s with {len(pending)} of A's 8 burn exports not done")
        assert len(pending) >= 5, (b_seconds, len(pending))  # before: 1 left, after 8.25 s
        client.delete(f"/v1/jobs/{job['id']}")
