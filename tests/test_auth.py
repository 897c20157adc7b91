"""API keys: hashing, the keys file, the middleware, the CLI, binding safety, CORS, error hygiene."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path
from dataclasses import asdict
from typing import Any, Callable

import pytest

from app.api import auth
from app.__main__ import check_auth
from app.api.auth import KeyStore, is_loopback, load_keys, new_key, save_keys, split_key, unauthenticated_remote_problem
from app.config import load_config
from app.api.ratelimit import RateLimiter
from storage.claims import StoreUnavailable
from tests.conftest import REPO, LiveServer, add_keys, bearer
from tests.media import speak

AUTH_ON = {"auth.enabled": True}


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# ---- keys and the keys file ---------------------------------------------------------


def test_new_key_is_stored_as_salted_hash_only(tmp_path: Path) -> None:
    a, key_a = new_key("alice", [])
    b, key_b = new_key("bob", [a])
    assert key_a.startswith("alt_") and split_key(key_a) == (a.id, key_a.split(".", 1)[1])
    assert a.salt != b.salt and a.hash != b.hash
    assert auth.check_secret(a, key_a.split(".", 1)[1])
    assert not auth.check_secret(a, key_b.split(".", 1)[1])
    path = tmp_path / "keys.json"
    save_keys(path, [a, b])
    text = path.read_text()
    for key in (key_a, key_b):
        assert key not in text and key.split(".", 1)[1] not in text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [k.name for k in load_keys(path)] == ["alice", "bob"]


@pytest.mark.parametrize("token", ["", "alt_", "alt_zz.secret", "alt_0123456789abcdef", "alt_0123456789abcdef.", "Bearer x", "0123456789abcdef.s"])
def test_malformed_keys_are_not_keys(token: str) -> None:
    assert split_key(token) is None


def test_new_key_rejects_bad_names_and_limits() -> None:
    a, _ = new_key("alice", [])
    for name in ("", "has space", "-dash", "x" * 65):
        with pytest.raises(ValueError):
            new_key(name, [])
    with pytest.raises(ValueError, match="already exists"):
        new_key("alice", [a])
    with pytest.raises(ValueError):
        new_key("bob", [], max_active_jobs=0)


def test_malformed_keys_file_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text("{not json")
    with pytest.raises(auth.KeysFileError) as info:
        load_keys(path)
    assert "\n" not in str(info.value)
    cfg = load_config(environ={}, overrides={"storage.data_dir": str(tmp_path), "auth.enabled": True})
    problem = check_auth(cfg)
    assert problem is not None and "malformed" in problem


async def test_verification_is_cached_and_removal_is_immediate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keys.json"
    rec, key = new_key("alice", [])
    save_keys(path, [rec])
    clock = FakeClock()
    store = KeyStore(path, cache_ttl_s=60, clock=clock)
    calls = []
    real = auth.check_secret
    monkeypatch.setattr(auth, "check_secret", lambda k, s: calls.append(1) or real(k, s))
    assert (await store.verify(key)).id == rec.id  # type: ignore[union-attr]
    assert (await store.verify(key)).id == rec.id  # type: ignore[union-attr]
    assert len(calls) == 1, "a verified key is not hashed again within the TTL"
    assert await store.verify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert len(calls) == 2, "a wrong secret of a known id costs one hash"
    assert await store.verify("alt_ffffffffffffffff.nope") is None
    assert len(calls) == 2, "an unknown id costs no hash"
    clock.t += 61
    assert await store.verify(key) is not None
    assert len(calls) == 3, "the cache expires"
    # removing the key (as `keys remove` does) is seen at the next check, cache or not
    save_keys(path, [])
    clock.t += 2
    assert await store.verify(key) is None


class FakeKeyTable:
    """A cluster's key table in memory, counting lookups; ``down`` makes it unreachable."""

    def __init__(self, keys: list[auth.ApiKey]) -> None:
        self.rows = {k.id: asdict(k) for k in keys}
        self.lookups = 0
        self.down = False

    async def get_key(self, key_id: str) -> dict[str, Any] | None:
        self.lookups += 1
        if self.down:
            raise StoreUnavailable("database", "connection refused")
        return self.rows.get(key_id)

    async def list_keys(self) -> list[dict[str, Any]]:
        return list(self.rows.values())

    async def take_token(self, bucket: str, *, burst: float, per_s: float) -> float:
        return 0.0


async def test_keys_from_a_table_are_cached_for_the_ttl_and_dropped_when_removed() -> None:
    clock = FakeClock()
    record, key = new_key("alice", [])
    table = FakeKeyTable([record])
    store = KeyStore(None, cache_ttl_s=5, clock=clock)
    await store.attach(table)
    assert len(store) == 1 and store.get(record.id) is not None
    assert await store.verify(key) is not None and table.lookups == 1
    assert await store.verify(key) is not None and table.lookups == 1, "a cache hit asks nobody"
    assert await store.verify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None, "a wrong secret"
    table.down = True
    assert await store.verify(key) is not None, "a cached key works while the database is away"
    clock.t += 6
    with pytest.raises(StoreUnavailable):
        await store.verify(key)  # the middleware answers 503
    table.down = False
    del table.rows[record.id]
    assert await store.verify(key) is None and store.get(record.id) is None
    # a key removed elsewhere is also dropped from the cache by the periodic re-read
    other, other_key = new_key("bob", [])
    table.rows[other.id] = asdict(other)
    assert await store.verify(other_key) is not None
    del table.rows[other.id]
    await store.refresh()
    assert await store.verify(other_key) is None


async def test_a_cluster_node_without_its_database_answers_503_or_limits_on_its_own() -> None:
    import httpx

    record, key = new_key("alice", [])
    table = FakeKeyTable([record])
    taken: list[str] = []

    async def take_token(bucket: str, *, burst: float, per_s: float) -> float:
        taken.append(bucket)
        if table.down:
            raise StoreUnavailable("database", "connection refused")
        return 0.0

    table.take_token = take_token  # type: ignore[method-assign]
    store = KeyStore(None, cache_ttl_s=60)
    await store.attach(table)

    async def ok(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    cfg = load_config(environ={}, overrides={"auth.enabled": True, "auth.rate_limit_per_minute": 6, "auth.rate_limit_burst": 2})
    app = auth.AuthMiddleware(ok, cfg=cfg, keys=store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node") as client:
        # the shared bucket decides while the database answers: never this node's own
        assert [(await client.get("/v1/jobs", headers=bearer(key))).status_code for _ in range(4)] == [200] * 4
        assert taken == [record.id] * 4
        # away: the cached key still works, limited by this node's own bucket (burst 2)
        table.down = True
        codes = [(await client.get("/v1/jobs", headers=bearer(key))).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        # a key not seen before cannot be checked: 503 with Retry-After, not 401
        other, other_key = new_key("bob", [])
        table.rows[other.id] = asdict(other)
        resp = await client.get("/v1/jobs", headers=bearer(other_key))
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "store_unavailable" and resp.headers["Retry-After"]


def test_rate_limiter_token_bucket() -> None:
    clock = FakeClock()
    limiter = RateLimiter(60, 3, clock=clock)  # one a second, bursts of 3
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("a")
    assert 0.99 < wait <= 1.0
    assert limiter.take("b") == 0.0, "buckets are per key"
    clock.t += 1.0
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    assert limiter.take("a", rate_per_minute=0) == 0.0, "0 = unlimited"
    slow = RateLimiter(60, 1, clock=clock)
    slow.take("c", rate_per_minute=6)
    assert 9.9 < slow.take("c", rate_per_minute=6) <= 10.0


# ---- binding safety -----------------------------------------------------------------


@pytest.mark.parametrize("host,loop", [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
                                       ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("example.org", False)])
def test_is_loopback(host: str, loop: bool) -> None:
    assert is_loopback(host) is loop


def test_unauthenticated_remote_needs_the_override(tmp_path: Path) -> None:
    def cfg(**kw: object) -> object:
        return load_config(environ={}, overrides={"storage.data_dir": str(tmp_path), **kw})

    assert unauthenticated_remote_problem(cfg()) is None  # the default: loopback, keys off
    problem = unauthenticated_remote_problem(cfg(**{"server.host": "0.0.0.0"}))
    assert problem is not None and "\n" not in problem and "allow_unauthenticated_remote" in problem
    assert unauthenticated_remote_problem(cfg(**{"server.host": "0.0.0.0", "auth.allow_unauthenticated_remote": True})) is None
    assert unauthenticated_remote_problem(cfg(**{"server.host": "0.0.0.0", "auth.enabled": True})) is None


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ALTYAZI_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env)


def test_cli_refuses_unauthenticated_remote_with_exit_2(tmp_path: Path) -> None:
    proc = run_cli("serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "data"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to listen on 0.0.0.0" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


# ---- the keys CLI round trip --------------------------------------------------------


def test_keys_cli_round_trip(tmp_path: Path, make_server: Callable[..., LiveServer]) -> None:
    data = tmp_path / "data"
    proc = run_cli("keys", "--data-dir", str(data), "add", "alice", "--max-active-jobs", "2", "--rate-per-minute", "1000")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("alt_"), proc.stdout
    key = out[0]
    assert key not in proc.stderr
    text = (data / "keys.json").read_text()
    assert key not in text and key.split(".", 1)[1] not in text
    assert stat.S_IMODE(os.stat(data / "keys.json").st_mode) == 0o600
    listing = run_cli("keys", "--data-dir", str(data), "list")
    assert listing.returncode == 0 and "alice" in listing.stdout and key.split(".", 1)[1] not in listing.stdout
    listed = json.loads(run_cli("keys", "--data-dir", str(data), "list", "--json").stdout)
    assert listed[0]["name"] == "alice" and listed[0]["max_active_jobs"] == 2 and "hash" not in listed[0]
    assert run_cli("keys", "--data-dir", str(data), "add", "alice").returncode == 2  # names are unique

    live = make_server(data_dir=data, **AUTH_ON)
    with live.client() as client:
        assert client.get("/v1/jobs", headers=bearer(key)).status_code == 200
        assert client.get("/v1/jobs", headers=bearer(key + "x")).status_code == 401
        # a key removed on disk stops working on the running server within a couple of seconds
        assert run_cli("keys", "--data-dir", str(data), "remove", "alice").returncode == 0
        deadline = time.monotonic() + 5
        while client.get("/v1/jobs", headers=bearer(key)).status_code != 401:
            assert time.monotonic() < deadline, "the removed key still works"
            time.sleep(0.2)
        # and a key added to the running server works without a restart
        new = run_cli("keys", "--data-dir", str(data), "add", "bob").stdout.strip()
        deadline = time.monotonic() + 5
        while client.get("/v1/jobs", headers=bearer(new)).status_code != 200:
            assert time.monotonic() < deadline, "the new key is not picked up"
            time.sleep(0.2)
    assert run_cli("keys", "--data-dir", str(data), "remove", "nobody").returncode == 1


# ---- the middleware on a live server -----------------------------------------------

PROTECTED = [
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/abc"),
    ("DELETE", "/v1/jobs/abc"),
    ("GET", "/v1/jobs/abc/events"),
    ("GET", "/v1/jobs/abc/transcript"),
    ("PUT", "/v1/jobs/abc/transcript"),
    ("POST", "/v1/jobs/abc/exports"),
    ("GET", "/v1/jobs/abc/exports/e1"),
    ("DELETE", "/v1/jobs/abc/exports/e1"),
    ("GET", "/v1/jobs/abc/exports/e1/file"),
    ("POST", "/v1/audio/transcriptions"),
    ("POST", "/v1/audio/translations"),
    ("GET", "/metrics"),
    ("GET", "/v1/anything-added-later"),
]


def test_missing_or_wrong_key_gets_401_everywhere_and_open_paths_stay_open(make_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    keys = add_keys(tmp_path / "data", "alice")
    live = make_server(**AUTH_ON)
    bad_headers = [
        {},
        bearer("alt_0123456789abcdef.wrong"),
        bearer(keys["alice"][:-2]),
        {"Authorization": f"Basic {keys['alice']}"},
        {"Authorization": "Bearer"},
    ]
    with live.client() as client:
        for method, path in PROTECTED:
            for headers in bad_headers:
                r = client.request(method, path, headers=headers, content=b"{}")
                assert r.status_code == 401, (method, path, headers, r.text)
                assert r.json()["error"]["code"] == "unauthorized"
                assert r.headers["www-authenticate"].startswith("Bearer")
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 200
        assert client.get("/").status_code != 401  # the page loads without a key; it asks for one
        assert client.get("/static/app.js").status_code != 401
        assert client.get("/v1/jobs", headers=bearer(keys["alice"])).json()["jobs"] == []


def test_metrics_can_be_made_public(make_server: Callable[..., LiveServer]) -> None:
    live = make_server(**AUTH_ON, **{"auth.public_metrics": True})
    with live.client() as client:
        assert client.get("/metrics").status_code != 401
        assert client.get("/v1/jobs").status_code == 401


def test_keys_off_means_one_anonymous_owner(make_server: Callable[..., LiveServer]) -> None:
    live = make_server()
    with live.client() as client:
        assert client.get("/v1/jobs").status_code == 200
        assert client.get("/v1/jobs", headers=bearer("alt_0123456789abcdef.whatever")).status_code == 200


# ---- CORS ------------------------------------------------------------------------------


def test_cors_is_off_by_default(make_server: Callable[..., LiveServer]) -> None:
    live = make_server()
    with live.client() as client:
        r = client.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        pre = client.options("/v1/jobs", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in pre.headers


def test_cors_allowlist(make_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    keys = add_keys(tmp_path / "data", "alice")
    live = make_server(**AUTH_ON, **{"auth.cors_origins": ["https://subs.example.org"]})
    good, evil = "https://subs.example.org", "https://evil.example"
    with live.client() as client:
        pre = client.options(
            "/v1/jobs",
            headers={"Origin": good, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"},
        )
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == good
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        r = client.get("/v1/jobs", headers={"Origin": good, **bearer(keys["alice"])})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == good
        denied = client.get("/v1/jobs", headers={"Origin": good})
        assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == good  # readable by the page
        r = client.get("/v1/jobs", headers={"Origin": evil, **bearer(keys["alice"])})
        assert "access-control-allow-origin" not in r.headers
        pre = client.options("/v1/jobs", headers={"Origin": evil, "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 400


# ---- no stack traces or paths in errors --------------------------------------------


def test_error_responses_leak_no_paths_or_tracebacks(make_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    data = tmp_path / "data"
    keys = add_keys(data, "alice", max_upload_mb=0.2)
    live = make_server(**AUTH_ON, **{"storage.max_upload_mb": 1})
    h = bearer(keys["alice"])
    not_media = tmp_path / "notes.mp4"
    not_media.write_bytes(b"this is not a video at all\n" * 100)
    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * 300_000)
    clip = speak("hello", tmp_path / "hello.wav")
    with live.client(headers=h) as client:
        job_id = client.post("/v1/jobs", files={"file": (clip.name, clip.read_bytes())}).json()["id"]
        responses = [
            client.post("/v1/jobs", files={"file": (not_media.name, not_media.read_bytes())}),  # 415
            client.post("/v1/jobs", files={"file": (big.name, big.read_bytes())}),  # 413
            client.post("/v1/jobs", content=b"", params={"filename": "x.wav"}),  # 400 empty
            client.post("/v1/jobs", content=b"--broken\r\nmultipart", headers={"Content-Type": "multipart/form-data; boundary=zzz"}),
            client.post("/v1/jobs", files={"file": ("a.wav", b"x")}, data={"language": "klingon"}),
            client.get("/v1/jobs/does-not-exist"),
            client.get("/v1/jobs/../../etc/passwd"),
            client.get("/v1/jobs", params={"limit": "x"}),
            client.get("/v1/jobs", params={"cursor": "nope"}),
            client.put(f"/v1/jobs/{job_id}/transcript", content=b"{bad json"),
            client.put(f"/v1/jobs/{job_id}/transcript", content=b"\xff\xfe"),
            client.post(f"/v1/jobs/{job_id}/exports", content=b'{"mode": "sideways"}'),
            client.get(f"/v1/jobs/{job_id}/transcript", params={"format": "docx"}),
            client.get(f"/v1/jobs/{job_id}/exports/nope/file"),
            client.patch("/v1/jobs"),
            client.get("/nothing/here"),
        ]
    secret_strings = [str(data), str(tmp_path), str(REPO), "/tmp/", "Traceback", 'File "', ".py", "upload.partial", "site-packages"]
    for r in responses:
        assert r.status_code >= 400, r.text
        body = r.text
        for s in secret_strings:
            assert s not in body, (r.request.method, r.request.url, r.status_code, body)
        assert not re.search(r"(?<![\w])/(?:home|root|var|usr|etc|work|tmp)/", body), body
        if r.headers.get("content-type", "").startswith("application/json"):
            err = r.json()["error"]
            assert re.fullmatch(r"[a-z_]+", err["code"]) and err["message"]
