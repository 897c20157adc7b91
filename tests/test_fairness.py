"""Fair share with the real model: one key's backlog does not hold back another key's few jobs.

Key A queues 20 short clips, then key B queues 2. Two layers keep B ahead of
most of A's backlog: admission runs at most a key's ``max_active_jobs`` (4 by
default) at once and starts queued jobs round-robin by owner
(app/pipeline/admission.py), so A's backlog waits there rather than in the FIFO
stages before the batcher (extraction, VAD); the batcher then fills each batch
round-robin by owner (batching/fair.py). Both the default server limits and a
server that runs only two jobs at once are tested.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import httpx
import pytest

from tests.conftest import LiveServer, add_keys, bearer, tiny_engine_factory
from tests.media import speak

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speak("the quick brown fox jumps over the lazy dog", tmp_path_factory.mktemp("m") / "fox.wav")


def finished_at(job: dict) -> float:  # type: ignore[type-arg]
    return datetime.fromisoformat(job["finished_at"].replace("Z", "+00:00")).timestamp()


def all_done(client: httpx.Client, n: int, timeout: float) -> list[dict]:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while True:
        jobs = client.get("/v1/jobs", params={"limit": 200}).json()["jobs"]
        if len(jobs) == n and all(j["status"] in ("done", "failed", "cancelled") for j in jobs):
            return jobs  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, [j["status"] for j in jobs]
        time.sleep(0.2)


@pytest.mark.parametrize("max_running", [64, 2], ids=["default-limits", "two-running"])
def test_small_owner_is_not_stuck_behind_a_backlog(
    make_server: Callable[..., LiveServer], tmp_path: Path, clip: Path, max_running: int
) -> None:
    keys = add_keys(tmp_path / "data", "a", "b", rate_per_minute=0)
    live = make_server(
        engine_factory=tiny_engine_factory,
        **{"auth.enabled": True, "limits.max_running_jobs": max_running, "batching.max_batch_size": 4, "model.name": "tiny.en"},
    )
    data = clip.read_bytes()
    with live.client(headers=bearer(keys["a"])) as a, live.client(headers=bearer(keys["b"])) as b:
        t0 = time.time()
        for _ in range(20):
            assert a.post("/v1/jobs", files={"file": (clip.name, data)}, data={"language": "en"}).status_code == 202
        t_a = time.time()
        for _ in range(2):
            assert b.post("/v1/jobs", files={"file": (clip.name, data)}, data={"language": "en"}).status_code == 202
        t_b = time.time()  # B's jobs are queued
        b_jobs = all_done(b, 2, timeout=60)
        a_jobs = all_done(a, 20, timeout=60)
    assert all(j["status"] == "done" for j in a_jobs + b_jobs)
    a_done = sorted(finished_at(j) for j in a_jobs)
    b_last = max(finished_at(j) for j in b_jobs)
    # A's uploads take seconds and the model works meanwhile, so count from B's arrival:
    # what B waits for is the part of A's backlog still pending when B queued.
    pending = [t for t in a_done if t > t_b]
    ahead = sum(t < b_last for t in pending)
    print(
        f"\nmax_running={max_running}: A queued 20 in {t_a - t0:.2f} s, B 2 in {t_b - t_a:.2f} s, {len(pending)} still pending when B queued; "
        f"B's last job done {b_last - t_b:.2f} s after B queued, after {ahead} of A's pending jobs; "
        f"A's last done {a_done[-1] - t_b:.2f} s after B queued"
    )
    assert len(pending) >= 8, "the backlog must still be there when B arrives, or the test shows nothing"
    # When B arrives, A already has its quota of jobs running (max_active_jobs, 4);
    # they are not pre-empted. B's windows join the very next batch, which may
    # also carry (and finish) A's fifth job; anything later would be unfair.
    assert ahead <= 5, f"B's jobs finished after {ahead} of A's pending jobs; fair share allows at most 5"
