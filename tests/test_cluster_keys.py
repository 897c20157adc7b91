"""A cluster's API keys and request rate limit live in its real PostgreSQL, shared by every node.

Two in-process nodes (the fake engine: nothing here needs the model) on one
database: a key made with ``python -m app keys`` works on both, and once
removed it is refused on both within ``auth.cache_ttl_s``; the per-key rate
limit is one token bucket for the whole cluster, not one per node.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.conftest import LiveServer, bearer
from tests.test_auth import run_cli

pytestmark = pytest.mark.cluster

TTL_S = 2.0


def nodes(make_server: Callable[..., LiveServer], tmp_path: Path, url: str, **overrides: Any) -> list[LiveServer]:
    settings = {"store.url": url, "auth.enabled": True, "auth.cache_ttl_s": TTL_S, "cluster.poll_s": 1.0, **overrides}
    return [make_server(data_dir=tmp_path / name, **settings, **{"cluster.node_id": name}) for name in ("a", "b")]


def keys_cli(url: str, tmp_path: Path, *args: str) -> Any:
    # --data-dir of its own: the CLI must not need (or write) any node's keys file
    return run_cli("keys", "--data-dir", str(tmp_path / "cli"), *args, env={"ALTYAZI_STORE_URL": url})


def status(node: LiveServer, key: str) -> int:
    with node.client() as client:
        return client.get("/v1/jobs", headers=bearer(key)).status_code


def test_a_key_in_the_database_works_on_every_node_until_removed(
    postgres: Any, make_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    url = postgres.new_database()
    made = keys_cli(url, tmp_path, "add", "alice", "--max-active-jobs", "3")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("alt_") and "the cluster's database" in made.stderr
    listed = json.loads(keys_cli(url, tmp_path, "list", "--json").stdout)
    assert [(k["name"], k["max_active_jobs"]) for k in listed] == [("alice", 3)]
    assert keys_cli(url, tmp_path, "add", "alice").returncode == 2  # names are unique across the cluster
    a, b = nodes(make_server, tmp_path, url)
    assert status(a, key) == 200 and status(b, key) == 200
    assert status(a, key + "x") == 401 and status(b, key + "x") == 401
    assert a.state.key_of(key[4:20]).max_active_jobs == 3  # the per-key limits come along
    assert not any((tmp_path / n / "keys.json").exists() for n in ("a", "b", "cli"))

    # a key added on the database works on both at once, without a restart
    bob = keys_cli(url, tmp_path, "add", "bob").stdout.strip()
    assert status(a, bob) == 200 and status(b, bob) == 200

    # removed (on the database, from anywhere): refused on both within the cache's TTL
    assert keys_cli(url, tmp_path, "remove", "alice").returncode == 0
    removed = time.monotonic()
    pending = {"a": a, "b": b}
    while pending:
        for name, node in list(pending.items()):
            if status(node, key) == 401:
                del pending[name]
        assert time.monotonic() - removed < TTL_S + 1.5, f"the removed key still works on {sorted(pending)}"
        time.sleep(0.1)
    assert status(a, bob) == 200 and status(b, bob) == 200  # the other key is untouched
    assert keys_cli(url, tmp_path, "remove", "alice").returncode == 1


def test_the_rate_limit_is_one_bucket_for_the_whole_cluster(
    postgres: Any, make_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    url = postgres.new_database()
    # 6 a minute with a burst of 4: one token every 10 s, so the test never sees a refill
    a, b = nodes(make_server, tmp_path, url, **{"auth.rate_limit_per_minute": 6, "auth.rate_limit_burst": 4})
    key = keys_cli(url, tmp_path, "add", "alice").stdout.strip()
    other = keys_cli(url, tmp_path, "add", "bob").stdout.strip()
    codes = [status(node, key) for node in (a, b, a, b)]
    assert codes == [200] * 4
    # per node the bucket would still hold two tokens on each; the cluster's is empty
    for node in (a, b):
        with node.client() as client:
            resp = client.get("/v1/jobs", headers=bearer(key))
        assert resp.status_code == 429, resp.text
        assert resp.json()["error"]["code"] == "rate_limited" and 5 <= int(resp.headers["Retry-After"]) <= 10
    assert status(b, other) == 200  # each key has its own bucket


async def test_concurrent_takes_from_several_nodes_count_once_each(postgres: Any) -> None:
    from storage.pg_store import PgJobStore

    url = postgres.new_database()
    stores = [await PgJobStore.open(url) for _ in range(3)]  # three nodes' pools
    try:
        # one token a minute, burst 5: 30 requests at once from three nodes, exactly 5 pass
        waits = await asyncio.gather(*(stores[i % 3].take_token("k", burst=5, per_s=1 / 60) for i in range(30)))
        assert sum(w == 0.0 for w in waits) == 5
        assert all(55 < w <= 60 for w in waits if w)
        assert await stores[0].take_token("other", burst=5, per_s=1 / 60) == 0.0  # one bucket per key
        # the bucket refills by the database's clock: at 10 a second, a token is back within 0.1 s
        assert await stores[1].take_token("fast", burst=1, per_s=10) == 0.0
        assert 0 < await stores[1].take_token("fast", burst=1, per_s=10) <= 0.1
        await asyncio.sleep(0.15)
        assert await stores[2].take_token("fast", burst=1, per_s=10) == 0.0
    finally:
        for store in stores:
            await store.close()
