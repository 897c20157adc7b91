"""Several real altyazi nodes on a real PostgreSQL and a real S3 server (SeaweedFS), with the real tiny.en.

Every scenario of the cluster's promises, with real processes and real
failures: kill -9 and SIGSTOP of a node, PostgreSQL restarted fast and
killed, the S3 server killed, a cancel sent to another node, a repeated
Idempotency-Key. Leases are 3 s here (15 s by default) so the failovers fit in
the suite's time. Deselect with ``-m 'not cluster'``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import wait_done, wait_export
from tests.media import make_long_speech, speak
from tests.procserver import ServerProcess

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

LEASE_S = 5.0
POLL_S = 0.5
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "We will meet at the station at nine o'clock tomorrow morning.",
]


def db(url: str, sql: str, *args: Any) -> list[Any]:
    """One query on the cluster's database, from the test."""

    async def run() -> list[Any]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


@dataclass
class Cluster:
    url: str
    s3: Any
    root: Path
    prefix: str = field(default_factory=lambda: uuid.uuid4().hex)
    nodes: dict[str, ServerProcess] = field(default_factory=dict)

    def env(self, name: str) -> dict[str, str]:
        return {
            **self.s3.env(),
            "ALTYAZI_STORE_URL": self.url,
            "ALTYAZI_FILES_URL": f"s3://{self.s3.bucket}/{self.prefix}",
            "ALTYAZI_CLUSTER_NODE_ID": name,
            "ALTYAZI_CLUSTER_LEASE_S": str(LEASE_S),
            "ALTYAZI_CLUSTER_POLL_S": str(POLL_S),
            "ALTYAZI_MODEL_CPU_THREADS": "1",
            # one window per model call: a job's segments then arrive window by window, so a
            # test that acts after the first one (kill, pause, cancel) finds the job still
            # running however fast the machine is; a batch of all its windows would finish them
            # together, with nothing left to interrupt
            "ALTYAZI_BATCHING_MAX_BATCH_SIZE": "1",
            "ALTYAZI_SERVER_SHUTDOWN_TIMEOUT_S": "2",
        }

    def node(self, name: str) -> ServerProcess:
        """The running node ``name``, started (again, after a kill) when need be."""
        proc = self.nodes.get(name)
        if proc is None or proc.proc is None or proc.proc.poll() is not None:
            if proc is not None:
                proc.stop()  # reaped, log closed
            proc = ServerProcess(self.root / name, env=self.env(name), log=self.root / f"{name}.log").start()
            self.nodes[name] = proc
        return proc

    def owner_of(self, job_id: str, timeout: float = 30) -> tuple[str, int]:
        """(node, epoch) of a running job, once a node has claimed it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = db(self.url, "SELECT node, epoch, status FROM jobs WHERE id = $1", job_id)
            if rows and rows[0]["node"] and rows[0]["status"] == "running":
                return rows[0]["node"], rows[0]["epoch"]
            time.sleep(0.05)
        raise AssertionError(f"no node claimed job {job_id}")

    def stop(self) -> None:
        for proc in self.nodes.values():  # all at once: each takes a moment to drain
            if proc.proc is not None and proc.proc.poll() is None:
                proc.signal(signal.SIGCONT)
                proc.signal(signal.SIGTERM)
        for proc in self.nodes.values():
            proc.stop()


@pytest.fixture(scope="module")
def cluster(postgres: Any, s3_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(url=postgres.new_database(), s3=s3_server, root=tmp_path_factory.mktemp("cluster"))
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    out = {f"short{i}": speak(text, d / f"short{i}.wav") for i, text in enumerate(SENTENCES)}
    # several windows (about five), decoded one per model call (see Cluster.env), so a job is
    # caught mid-way with seconds of work left after its first segment
    out["long"] = make_long_speech(d / "long.wav", 150, SENTENCES, pause_s=0.8)
    return out


def submit(node: ServerProcess, clip: Path, headers: dict[str, str] | None = None) -> httpx.Response:
    with node.client() as client:
        return client.post("/v1/jobs", files={"file": (clip.name, clip.read_bytes())}, headers=headers or {})


class Follower:
    """An SSE client on one node, collecting (arrival time, type, data) until the job is final."""

    def __init__(self, node: ServerProcess, job_id: str) -> None:
        self.node, self.job_id = node, job_id
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last_id = None
        try:
            # a dropped stream is resumed with Last-Event-ID, as browsers do
            while not self.final:
                headers = {"Last-Event-ID": last_id} if last_id else {}
                with httpx.Client(base_url=self.node.url, timeout=120) as client:
                    with client.stream("GET", f"/v1/jobs/{self.job_id}/events", headers=headers) as resp:
                        event = ""
                        for line in resp.iter_lines():
                            if line.startswith("id: "):
                                last_id = line[4:]
                            elif line.startswith("event: "):
                                event = line[7:]
                            elif line.startswith("data: "):
                                self.events.append((time.monotonic(), event, json.loads(line[6:])))
                                if self.final:
                                    return
        except BaseException as exc:  # reported by wait()
            self.error = exc

    @property
    def final(self) -> bool:
        return any(t in ("done", "failed", "cancelled") for _, t, _ in self.events)

    def wait_for(self, kind: str, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, t, _ in self.events:
                if t == kind:
                    return at
            assert self.error is None, self.error
            time.sleep(0.02)
        raise AssertionError(f"no {kind} event in {timeout} s: {[t for _, t, _ in self.events]}")

    def wait(self, timeout: float = 120) -> None:
        self._thread.join(timeout)
        assert self.error is None, self.error
        assert self.final, [t for _, t, _ in self.events]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [d for _, t, d in self.events if t == kind]


def transcript_text(node: ServerProcess, job_id: str) -> str:
    with node.client() as client:
        resp = client.get(f"/v1/jobs/{job_id}/transcript", params={"format": "txt"})
        assert resp.status_code == 200, resp.text
        return resp.text


def test_twenty_jobs_over_two_nodes_match_a_single_box(cluster: Cluster, clips: dict[str, Path], tmp_path: Path) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    names = [f"short{i % 3}" for i in range(20)]
    ids = []
    for i, name in enumerate(names):
        resp = submit(a if i % 2 else b, clips[name])
        assert resp.status_code == 202, resp.text
        ids.append(resp.json()["id"])
    with a.client() as client:
        for job_id in ids:
            assert wait_done(client, job_id, timeout=120)["status"] == "done"
    rows = db(cluster.url, "SELECT node, COUNT(*) AS n FROM jobs WHERE id = ANY($1::text[]) GROUP BY node", ids)
    by_node = {r["node"]: r["n"] for r in rows}
    assert set(by_node) == {"a", "b"}, by_node  # both did some of the work
    texts = {job_id: transcript_text(b if i % 2 else a, job_id) for i, job_id in enumerate(ids)}  # read on the other node
    # every window announced exactly once: each job's segment events number 0, 1, 2, ... with no repeat
    rows = db(cluster.url, "SELECT job_id, array_agg((data::json->>'id')::int ORDER BY seq) AS ids FROM events"
                           " WHERE type = 'segment' AND job_id = ANY($1::text[]) GROUP BY job_id", ids)  # fmt: skip
    assert len(rows) == len(ids)
    for row in rows:
        assert row["ids"] == list(range(len(row["ids"]))), row

    single = ServerProcess(tmp_path / "single", env={"ALTYAZI_MODEL_CPU_THREADS": "1"}).start()
    try:
        expected = {}
        for name in ("short0", "short1", "short2"):
            job_id = submit(single, clips[name]).json()["id"]
            with single.client() as client:
                assert wait_done(client, job_id)["status"] == "done"
            expected[name] = transcript_text(single, job_id)
    finally:
        single.stop()
    assert {texts[job_id] == expected[name] for job_id, name in zip(ids, names)} == {True}


def _running_long_job(
    cluster: Cluster, clips: dict[str, Path], via: ServerProcess
) -> tuple[str, str, Follower]:
    """A long job that has announced its first window: (id, owner node, a follower on another node)."""
    resp = submit(via, clips["long"])
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    owner, _ = cluster.owner_of(job_id)
    watcher = next(n for name, n in cluster.nodes.items() if name != owner and n.proc is not None and n.proc.poll() is None)
    follower = Follower(watcher, job_id)
    follower.wait_for("segment")
    return job_id, owner, follower


def _assert_monotonic(follower: Follower) -> None:
    progress = [d["progress"] for d in follower.of("progress")]
    assert progress == sorted(progress), progress
    ids = [d["id"] for d in follower.of("segment")]
    assert ids == list(range(len(ids))) and ids, ids


def test_a_killed_node_s_job_finishes_on_another_and_a_third_sees_it_through(cluster: Cluster, clips: dict[str, Path]) -> None:
    for name in ("a", "b", "c"):
        cluster.node(name)
    job_id, owner, follower = _running_long_job(cluster, clips, cluster.node("c"))
    killed_at = time.monotonic()
    cluster.nodes[owner].signal(signal.SIGKILL)
    cluster.nodes[owner].wait(10)
    follower.wait(120)
    assert follower.of("done"), follower.events
    restarts = [at for at, t, d in follower.events if t == "status" and d.get("status") == "running" and at > killed_at]
    assert restarts and restarts[0] - killed_at <= LEASE_S + POLL_S + 2.0, restarts
    _assert_monotonic(follower)
    new_owner, epoch = db(cluster.url, "SELECT node, epoch FROM jobs WHERE id = $1", job_id)[0]
    assert new_owner != owner and epoch == 2
    cluster.node(owner)  # back for the next tests


def test_a_node_paused_past_its_lease_is_fenced_and_drops_the_job(cluster: Cluster, clips: dict[str, Path]) -> None:
    cluster.node("a"), cluster.node("b")
    job_id, owner, follower = _running_long_job(cluster, clips, cluster.node("a"))
    paused = cluster.nodes[owner]
    paused.signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + LEASE_S + POLL_S + 10
        while db(cluster.url, "SELECT epoch FROM jobs WHERE id = $1", job_id)[0]["epoch"] < 2:
            assert time.monotonic() < deadline, "nobody took over the paused node's job"
            time.sleep(0.05)
    finally:
        paused.signal(signal.SIGCONT)
    follower.wait(120)
    assert follower.of("done")
    _assert_monotonic(follower)  # nothing the paused node still had in hand got through
    node, epoch = db(cluster.url, "SELECT node, epoch FROM jobs WHERE id = $1", job_id)[0]
    assert (node, epoch) != (owner, 1) and epoch >= 2
    deadline = time.monotonic() + 10
    while f"lost job {job_id}" not in paused.log_tail(20000) and f"job {job_id} dropped" not in paused.log_tail(20000):
        assert time.monotonic() < deadline, paused.log_tail()
        time.sleep(0.1)


def test_cancel_on_one_node_stops_the_work_on_its_owner(cluster: Cluster, clips: dict[str, Path]) -> None:
    cluster.node("a"), cluster.node("b")
    job_id, owner, follower = _running_long_job(cluster, clips, cluster.node("b"))
    other = follower.node
    t0 = time.monotonic()
    with other.client() as client:
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "running", "the clip ended before the cancel: make it longer"
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    owning = cluster.nodes[owner]
    with owning.client() as client:
        while "altyazi_jobs_active 0.0" not in client.get("/metrics").text:
            assert time.monotonic() - t0 < LEASE_S / 3 + 2.0, "the owner kept working"
            time.sleep(0.05)
        assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    # the heartbeat finds the claim gone, or the job's own next write is fenced first
    deadline = time.monotonic() + 10
    while f"lost job {job_id}" not in owning.log_tail(20000) and f"job {job_id} dropped" not in owning.log_tail(20000):
        assert time.monotonic() < deadline, owning.log_tail()
        time.sleep(0.1)


def test_a_repeated_idempotency_key_gives_one_job_and_its_export_downloads_on_any_node(cluster: Cluster, clips: dict[str, Path]) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = submit(a, clips["short0"], key)
    again = submit(b, clips["short0"], key)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    other = submit(b, clips["short0"], {"Idempotency-Key": uuid.uuid4().hex})
    assert other.json()["id"] != first.json()["id"]
    job_id = first.json()["id"]
    with a.client() as client:
        assert wait_done(client, job_id)["status"] == "done"
        # an export made on one node downloads from another (through the bucket), ranges included
        export = client.post(f"/v1/jobs/{job_id}/exports", json={"mode": "soft", "container": "mkv"})
        assert export.status_code == 202, export.text
        assert wait_export(client, job_id, export.json()["id"])["status"] == "done"
    with b.client() as client:
        whole = client.get(f"/v1/jobs/{job_id}/exports/{export.json()['id']}/file")
        assert whole.status_code == 200 and len(whole.content) > 1000
        part = client.get(f"/v1/jobs/{job_id}/exports/{export.json()['id']}/file", headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == whole.content[10:20]


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["fast_restart", "kill_9"])
def test_postgres_restarted_nodes_reconnect_and_nothing_accepted_is_lost(cluster: Cluster, clips: dict[str, Path], postgres: Any, how: int) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    accepted = [submit(a if i % 2 else b, clips[f"short{i % 3}"]).json()["id"] for i in range(4)]
    postgres.stop(how)
    try:
        refused = submit(a, clips["short0"])
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) > 0
    finally:
        postgres.start()
    with b.client() as client:
        for job_id in accepted:
            assert wait_done(client, job_id, timeout=60)["status"] == "done"
    # the listeners are back: a new job's events reach a follower on the other node
    job_id = submit(a, clips["short1"]).json()["id"]
    follower = Follower(b, job_id)
    follower.wait(60)
    assert follower.of("done")


def test_s3_killed_an_upload_fails_without_a_row_and_work_resumes_after(cluster: Cluster, clips: dict[str, Path], s3_server: Any) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    before = submit(a, clips["short2"]).json()["id"]
    rows_before = db(cluster.url, "SELECT COUNT(*) FROM jobs")[0][0]
    s3_server.stop()
    try:
        refused = submit(b, clips["short0"])
        assert refused.status_code == 503, refused.text
        assert "Retry-After" in refused.headers
        assert db(cluster.url, "SELECT COUNT(*) FROM jobs")[0][0] == rows_before  # no row for it
        time.sleep(1.0)  # the job accepted before may be stuck on the bucket now
    finally:
        s3_server.start()
    with b.client() as client:
        assert wait_done(client, before, timeout=60)["status"] == "done"
    assert transcript_text(b, before) == transcript_text(a, before)
    after = submit(b, clips["short0"])
    assert after.status_code == 202
    with a.client() as client:
        assert wait_done(client, after.json()["id"], timeout=60)["status"] == "done"
