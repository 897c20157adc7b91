"""What the cluster costs and what it gives: claim + checkpoint overhead per job, and 2 nodes vs 1.

    .venv/bin/python bench/cluster.py                  # both parts
    .venv/bin/python bench/cluster.py --overhead-only --jobs 500 --workers 8
    .venv/bin/python bench/cluster.py --throughput-only --clips 12

Part 1, overhead: a real PostgreSQL (Debian's, started in a temp folder as
the tests do, tests/cluster_servers.py) and ``--workers`` simulated nodes on
one asyncio loop, each claiming jobs one at a time and doing what a node does
to the database for a job of ``--windows`` windows: the claim, one fenced
checkpoint (``save_window``) and one fenced segment event per window, a
heartbeat, and the fenced final update. No model, no files: only what the
cluster adds on top of the single box. Reports p50/p99 per job and per call.

Part 2, throughput: the same ``--clips`` short speech clips (espeak-ng) through
one node, then through two nodes (the real tiny.en; PostgreSQL and SeaweedFS
S3 on loopback), wall time from the first upload to the last ``done``. Both
nodes share this machine's cores, so expect about 1x here: the second node
only adds a second model competing for the same CPUs. On separate machines
(one GPU each) it is the way to add capacity.

Writes ``bench/out/cluster.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from storage.claims import CURRENT  # noqa: E402
from storage.pg_store import PgJobStore  # noqa: E402
from storage.states import Stage, Status  # noqa: E402
from storage.store import JobRecord  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def summary(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 3), "p99_ms": round(pct(ms, 0.99), 3), "max_ms": round(max(ms), 3)}


async def overhead(dsn: str, jobs: int, workers: int, windows: int) -> dict[str, Any]:
    store = await PgJobStore.open(dsn, max_connections=workers + 2)
    now = time.time()
    for i in range(jobs):
        await store.create_job(JobRecord(
            id=f"b{i}", owner=f"o{i % 10}", status=Status.QUEUED, stage=Stage.QUEUED, progress=0.0, filename="x.wav",
            options={}, created_at=now + i, updated_at=now + i, duration_s=30.0 * windows,
        ))  # fmt: skip
    calls: dict[str, list[float]] = {"claim": [], "save_window": [], "segment_event": [], "heartbeat": [], "finish": []}
    per_job: list[float] = []

    async def timed(kind: str, coro: Any, spent: list[float]) -> Any:
        t0 = time.perf_counter()
        out = await coro
        ms = (time.perf_counter() - t0) * 1000
        calls[kind].append(ms)
        if kind != "segment_event":  # events are the single box's cost too
            spent[0] += ms
        return out

    async def node(n: int) -> None:
        while True:
            spent = [0.0]  # this job's claim, checkpoints, heartbeat and final update
            got = await timed("claim", store.claim(f"node{n}", 15.0, 1), spent)
            if not got:
                return
            job, claim = got[0]
            token = CURRENT.set(claim)
            try:
                for w in range(windows):
                    await timed("save_window", store.save_window(job.id, w, {"segments": [{"id": w, "text": "x" * 80}], "next": w + 1}), spent)
                    await timed("segment_event", store.append_event(job.id, "segment", {"id": w, "text": "x" * 80}), spent)
                await timed("heartbeat", store.heartbeat(claim.node, 15.0, [claim]), spent)
                await timed("finish", store.update_job(job.id, status=Status.DONE, stage=Stage.DONE, progress=1.0), spent)
            finally:
                CURRENT.reset(token)
            per_job.append(spent[0])

    t0 = time.perf_counter()
    await asyncio.gather(*(node(n) for n in range(workers)))
    wall = time.perf_counter() - t0
    await store.close()
    return {
        "jobs": jobs, "workers": workers, "windows_per_job": windows, "jobs_per_s": round(jobs / wall, 1),
        "per_job": summary(per_job), "calls": {k: summary(v) for k, v in calls.items() if v},
    }


def throughput(clips: int, tmp: Path) -> dict[str, Any]:
    from tests.cluster_servers import PostgresServer, S3Server
    from tests.conftest import wait_done
    from tests.media import speak
    from tests.procserver import ServerProcess

    sentences = ["The quick brown fox jumps over the lazy dog.", "We will meet at the station at nine o'clock tomorrow morning."]
    paths = [speak(sentences[i % 2], tmp / f"clip{i % 2}.wav") for i in range(2)]
    pg, s3 = PostgresServer().start(), S3Server().start()
    out: dict[str, Any] = {"clips": clips}
    try:
        for count in (1, 2):
            url = pg.new_database()
            env = {**s3.env(), "ALTYAZI_STORE_URL": url, "ALTYAZI_FILES_URL": f"s3://{s3.bucket}/{uuid.uuid4().hex}"}
            nodes = [ServerProcess(tmp / f"n{count}-{i}", env={**env, "ALTYAZI_CLUSTER_NODE_ID": f"n{i}"}).start() for i in range(count)]
            try:
                t0 = time.perf_counter()
                ids = []
                with nodes[0].client() as client:
                    for i in range(clips):
                        path = paths[i % 2]
                        ids.append(client.post("/v1/jobs", files={"file": (path.name, path.read_bytes())}).json()["id"])
                    for job_id in ids:
                        assert wait_done(client, job_id, timeout=600)["status"] == "done"
                wall = time.perf_counter() - t0
                out[f"{count}_node"] = {"wall_s": round(wall, 2), "jobs_per_min": round(clips / wall * 60, 1)}
                print(f"{count} node(s): {clips} jobs in {wall:.1f} s", flush=True)
            finally:
                for node in nodes:
                    node.stop()
        out["speedup"] = round(out["1_node"]["wall_s"] / out["2_node"]["wall_s"], 2)
    finally:
        pg.close()
        s3.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--workers", type=int, default=4, help="simulated nodes claiming at once")
    ap.add_argument("--windows", type=int, default=4, help="windows (checkpoints) per job")
    ap.add_argument("--clips", type=int, default=10)
    ap.add_argument("--overhead-only", action="store_true")
    ap.add_argument("--throughput-only", action="store_true")
    args = ap.parse_args()
    import tempfile

    from tests.cluster_servers import PostgresServer

    result: dict[str, Any] = {}
    if not args.throughput_only:
        pg = PostgresServer().start()
        try:
            result["overhead"] = asyncio.run(overhead(pg.new_database(), args.jobs, args.workers, args.windows))
        finally:
            pg.close()
        print(json.dumps(result["overhead"], indent=2), flush=True)
    if not args.overhead_only:
        with tempfile.TemporaryDirectory() as tmp:
            result["throughput"] = throughput(args.clips, Path(tmp))
        print(json.dumps(result["throughput"], indent=2))
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "cluster.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
