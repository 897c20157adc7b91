"""API keys: the keys file, salted hashes, verification, and the ASGI middleware.

A key reads ``alt_<id>.<secret>``. The id is public and stable: it names the
owner of every job made with the key and finds the one record to check, so a
request costs one hash at most, not one per stored key. Only a salted scrypt
hash of the secret is stored. scrypt is slow on purpose (about 50 ms), so a
successful check is remembered for ``auth.cache_ttl_s`` under the SHA-256 of
the presented key (never the key itself); wrong keys are never cached, and
their hashing runs two at a time in worker threads so a flood of bad keys
cannot block the event loop or starve the CPUs.

The keys file is JSON, written atomically with mode 0600, and re-read when it
changes on disk, so ``python -m app keys add`` works on a running server.

In a cluster (``store.url = postgresql://…``) the keys are rows of the shared
database instead (a KeyTable), so every node sees the same keys: a key is
looked up there on a cache miss, and a successful check is remembered for
``auth.cache_ttl_s`` as above, so a key removed on any node stops working on
every node within that time. The node also re-reads the whole table every
``auth.cache_ttl_s`` (at least once a second, at most every 10 s) for the
per-key limits of jobs it claims for keys it has not seen a request of. The
per-key request rate is then one token bucket per key in the database
(KeyTable.take_token), falling back to the node's own while it is away.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Awaitable, Callable, MutableMapping, Protocol

import anyio

from app.api.authlimit import AuthFailureLimiter
from app.config import Config
from app.api.errors import ApiError, error_response, unexpected
from app.api.ratelimit import RateLimiter
from storage.claims import StoreUnavailable
from storage.files import atomic_write_text

log = logging.getLogger("altyazi.auth")

KEY_PREFIX = "alt_"
FILE_VERSION = 1
# scrypt cost: 16 MiB and ~50 ms per check on one core; stored per key so it can grow later.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
ID_RE = re.compile(r"^[0-9a-f]{16}$")
# Paths anyone may load: the web page (it asks the user for a key), its files, and the probes.
OPEN_PATHS = frozenset({"/", "/index.html", "/favicon.ico", "/static", "/healthz", "/readyz"})
OPEN_PREFIXES = ("/static/",)
EVENTS_RE = re.compile(r"^/v1/jobs/[^/]+/events$")
# The player's media: a signed token in the address stands in for the key there
# (app/api/media_tokens.py); the route checks it against the job.
MEDIA_RE = re.compile(r"^/v1/jobs/[^/]+/media$")
RELOAD_CHECK_S = 1.0
CACHE_MAX = 10_000

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class KeysFileError(ValueError):
    """The keys file cannot be read or is malformed; str() is one line."""


class TooManyFailures(Exception):
    """Too many wrong secrets lately for this key id or client address; nothing was hashed."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"retry in {wait_s:.1f} s")
        self.wait_s = wait_s


@dataclass
class ApiKey:
    id: str
    name: str
    salt: str  # hex
    hash: str  # hex
    created_at: str
    kdf: str = f"scrypt:{SCRYPT_N}:{SCRYPT_R}:{SCRYPT_P}"
    # Per-key limits; None falls back to the server's [limits] / [storage] / [auth] values.
    max_active_jobs: int | None = None
    max_queued_jobs: int | None = None
    max_upload_mb: float | None = None
    rate_per_minute: float | None = None
    max_exports: int | None = None

    def public(self) -> dict[str, Any]:
        """What `keys list` shows: everything but the salt and hash."""
        return {k: v for k, v in asdict(self).items() if k not in ("salt", "hash", "kdf")}


# ---- hashing ------------------------------------------------------------------


def _hash_secret(secret: str, salt: bytes, kdf: str) -> bytes:
    name, n, r, p = kdf.split(":")
    if name != "scrypt":
        raise KeysFileError(f"unknown key hash {name!r}")
    return hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=int(n), r=int(r), p=int(p), dklen=32, maxmem=64 * 1024 * 1024)


def split_key(token: str) -> tuple[str, str] | None:
    """``alt_<id>.<secret>`` → (id, secret), or None if it is not shaped like a key."""
    if not token.startswith(KEY_PREFIX):
        return None
    key_id, dot, secret = token[len(KEY_PREFIX) :].partition(".")
    if not dot or not ID_RE.match(key_id) or not secret or len(secret) > 256:
        return None
    return key_id, secret


def check_secret(key: ApiKey, secret: str) -> bool:
    """Constant-time comparison of the secret's hash with the stored one."""
    try:
        actual = _hash_secret(secret, bytes.fromhex(key.salt), key.kdf)
        return hmac.compare_digest(actual, bytes.fromhex(key.hash))
    except (ValueError, KeysFileError):
        return False


def new_key(
    name: str,
    existing: list[ApiKey],
    *,
    max_active_jobs: int | None = None,
    max_queued_jobs: int | None = None,
    max_upload_mb: float | None = None,
    rate_per_minute: float | None = None,
    max_exports: int | None = None,
) -> tuple[ApiKey, str]:
    """A new key record and the key itself; the key is never stored, only its hash."""
    if not NAME_RE.match(name):
        raise ValueError(f"key name {name!r} is invalid: use 1-64 letters, digits, and _ . @ - (starting with a letter or digit)")
    if any(k.name == name for k in existing):
        raise ValueError(f"a key named {name!r} already exists; remove it first or pick another name")
    for label, value in (("max-active-jobs", max_active_jobs), ("max-queued-jobs", max_queued_jobs), ("max-exports", max_exports)):
        if value is not None and value < 1:
            raise ValueError(f"--{label} must be >= 1, got {value}")
    if max_upload_mb is not None and max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb must be > 0, got {max_upload_mb}")
    if rate_per_minute is not None and rate_per_minute < 0:
        raise ValueError(f"--rate-per-minute must be >= 0 (0 = unlimited), got {rate_per_minute}")
    ids = {k.id for k in existing}
    key_id = secrets.token_hex(8)
    while key_id in ids:
        key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    kdf = f"scrypt:{SCRYPT_N}:{SCRYPT_R}:{SCRYPT_P}"
    record = ApiKey(
        id=key_id,
        name=name,
        salt=salt.hex(),
        hash=_hash_secret(secret, salt, kdf).hex(),
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        kdf=kdf,
        max_active_jobs=max_active_jobs,
        max_queued_jobs=max_queued_jobs,
        max_upload_mb=max_upload_mb,
        rate_per_minute=rate_per_minute,
        max_exports=max_exports,
    )
    return record, f"{KEY_PREFIX}{key_id}.{secret}"


# ---- the keys file --------------------------------------------------------------


def keys_path(cfg: Config) -> Path:
    return Path(cfg.auth.keys_file) if cfg.auth.keys_file else Path(cfg.storage.data_dir) / "keys.json"


def key_from_record(raw: Any) -> ApiKey:
    """A key record as stored (JSON); unknown fields are ignored. ValueError or TypeError if malformed."""
    if not isinstance(raw, dict):
        raise ValueError("each key must be an object")
    names = {f.name for f in fields(ApiKey)}
    key = ApiKey(**{k: v for k, v in raw.items() if k in names})
    if not ID_RE.match(str(key.id)):
        raise ValueError(f"key {key.name!r} has a malformed id")
    return key


class KeyTable(Protocol):
    """The cluster's shared key records and rate buckets (storage.pg_store.PgJobStore implements it)."""

    async def get_key(self, key_id: str) -> dict[str, Any] | None: ...

    async def list_keys(self) -> list[dict[str, Any]]: ...

    async def take_token(self, bucket: str, *, burst: float, per_s: float) -> float: ...


def load_keys(path: Path) -> list[ApiKey]:
    """The keys in the file; a missing file is no keys."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise KeysFileError(f"keys file {str(path)!r} cannot be read: {exc.strerror}") from None
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError("expected an object with a \"keys\" list")
        keys = [key_from_record(raw) for raw in data["keys"]]
    except (ValueError, TypeError) as exc:
        raise KeysFileError(f"keys file {str(path)!r} is malformed: {exc}") from None
    return keys


def save_keys(path: Path, keys: list[ApiKey]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"version": FILE_VERSION, "keys": [asdict(k) for k in keys]}, indent=2) + "\n"
    atomic_write_text(path, text)  # a temp file made 0600, renamed over the old one
    os.chmod(path, 0o600)


class KeyStore:
    """The server's view of the keys file (or, in a cluster, the key table): lookup by id, verification with a short cache."""

    def __init__(
        self,
        path: Path | None,
        *,
        cache_ttl_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        failures: AuthFailureLimiter | None = None,
    ) -> None:
        self.path = path  # None in a cluster: the keys come from ``table`` (see attach)
        self.table: KeyTable | None = None
        self.cache_ttl_s = cache_ttl_s
        self.failures = failures
        self._clock = clock
        self._by_id: dict[str, ApiKey] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = -math.inf
        self._cache: dict[bytes, tuple[ApiKey, float]] = {}
        self._limiter: anyio.CapacityLimiter | None = None
        self.reload()

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, key_id: str) -> ApiKey | None:
        return self._by_id.get(key_id)

    async def attach(self, table: KeyTable) -> None:
        """Take the keys from the cluster's table from now on; reads it once (StoreUnavailable if it cannot)."""
        self.table = table
        await self.refresh()

    async def refresh(self) -> None:
        """Read every key of the table; a key gone from it is dropped from the cache at once."""
        assert self.table is not None
        keys = []
        for raw in await self.table.list_keys():
            try:
                keys.append(key_from_record(raw))
            except (ValueError, TypeError) as exc:
                log.error("a key record in the database is malformed (%s); skipped", exc)
        self._by_id = {k.id: k for k in keys}
        for digest in [d for d, (k, _) in self._cache.items() if k.id not in self._by_id]:
            del self._cache[digest]

    async def follow(self) -> None:
        """Re-read the table every ``cache_ttl_s`` (1-10 s) until cancelled; a database away keeps the keys read before."""
        while True:
            await asyncio.sleep(min(10.0, max(1.0, self.cache_ttl_s)))
            try:
                await self.refresh()
            except StoreUnavailable as exc:
                log.warning("cannot re-read the API keys (%s); keeping the %d read before", exc, len(self._by_id))

    def reload(self) -> None:
        """Read the file now; raises KeysFileError on a bad file."""
        if self.path is None:
            return
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        keys = load_keys(self.path)
        self._by_id = {k.id: k for k in keys}
        self._stamp = stamp
        self._cache.clear()  # a removed key stops working at once

    def maybe_reload(self) -> None:
        """Re-read the file if it changed; checked at most once a second. A bad edit keeps the old keys."""
        now = self._clock()
        if self.path is None or now - self._checked < RELOAD_CHECK_S:
            return
        self._checked = now
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        except OSError:
            return
        if stamp == self._stamp:
            return
        try:
            self.reload()
            log.info("keys file reloaded: %d keys", len(self._by_id))
        except KeysFileError as exc:
            log.error("%s; keeping the %d keys loaded before", exc, len(self._by_id))
            self._stamp = stamp

    async def verify(self, token: str, *, client: str = "") -> ApiKey | None:
        """The key's record if ``token`` is a valid key, else None.

        Raises TooManyFailures, before hashing, when the key id or the client
        address has had too many wrong secrets lately (see app/api/authlimit.py).
        """
        self.maybe_reload()
        parts = split_key(token)
        if parts is None:
            return None
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        now = self._clock()
        hit = self._cache.get(digest)
        if self.table is not None:
            if hit is not None and hit[0].id == parts[0] and hit[1] > now:
                return hit[0]
            key = await self._fetch(parts[0])  # StoreUnavailable: the middleware answers 503
        else:
            key = self._by_id.get(parts[0])
            if key is not None and hit is not None and hit[0].id == key.id and hit[1] > now:
                return key
        if key is None:
            return None  # unknown id: no hashing at all
        if self.failures is not None:
            wait = self.failures.take(key.id, client)
            if wait > 0:
                raise TooManyFailures(wait)
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(2)
        ok = await anyio.to_thread.run_sync(check_secret, key, parts[1], limiter=self._limiter)
        if not ok:
            return None
        if self.failures is not None:
            self.failures.give_back(key.id, client)
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[digest] = (key, now + self.cache_ttl_s)
        return self._by_id.get(key.id)  # None if the key was removed while hashing

    async def _fetch(self, key_id: str) -> ApiKey | None:
        """The key's current record in the table (remembered for get()), or None."""
        assert self.table is not None
        raw = await self.table.get_key(key_id)
        key = None
        if raw is not None:
            try:
                key = key_from_record(raw)
            except (ValueError, TypeError) as exc:
                log.error("the record of key %s in the database is malformed (%s)", key_id, exc)
        if key is None:
            self._by_id.pop(key_id, None)
        else:
            self._by_id[key.id] = key
        return key


# ---- binding safety -------------------------------------------------------------


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def unauthenticated_remote_problem(cfg: Config) -> str | None:
    """Why the server must not start as configured, or None: no keys on a non-loopback address."""
    if cfg.auth.enabled or cfg.auth.allow_unauthenticated_remote or is_loopback(cfg.server.host):
        return None
    return (
        f"refusing to listen on {cfg.server.host} without API keys: set auth.enabled = true "
        "(and create a key: python -m app keys add NAME), listen on 127.0.0.1, "
        "or set auth.allow_unauthenticated_remote = true to share one anonymous owner with the network"
    )


# ---- the middleware ---------------------------------------------------------------


def is_open_path(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def is_signed_media(scope: Scope) -> bool:
    """A GET or HEAD of a job's media with a ``token`` in the query: the route checks the token."""
    if scope.get("method") not in ("GET", "HEAD") or not MEDIA_RE.match(scope.get("path", "")):
        return False
    query = scope.get("query_string", b"").decode("latin-1")
    return any(part.startswith("token=") for part in query.split("&"))


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            try:
                text = value.decode("latin-1").strip()
            except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
                return None
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer":
                return None
            return token.strip() or None
    return None


def unauthorized(message: str, *, invalid: bool) -> ApiError:
    challenge = 'Bearer realm="altyazi"' + (', error="invalid_token"' if invalid else "")
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": challenge})


class AuthMiddleware:
    """Sets ``request.state.owner`` from the key; 401 without one; rate and stream limits per key.

    Default deny: every path not in the open list needs a key, so a route
    added later is protected without anybody remembering to.
    """

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        *,
        cfg: Config,
        keys: KeyStore | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.cfg = cfg
        self.keys = keys
        self.limiter = RateLimiter(cfg.auth.rate_limit_per_minute, cfg.auth.rate_limit_burst, clock=clock)
        self.streams: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.cfg.auth.enabled:
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if is_open_path(path) or (path == "/metrics" and self.cfg.auth.public_metrics):
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if token is None and is_signed_media(scope):
            await self.app(scope, receive, send)
            return
        if token is None:
            await self._refuse(unauthorized("This address needs an API key: send it as 'Authorization: Bearer <key>'.", invalid=False), scope, receive, send)
            return
        client = (scope.get("client") or ("",))[0] or ""
        try:
            key = await self.keys.verify(token, client=client) if self.keys is not None else None
        except TooManyFailures as exc:
            retry = max(1, math.ceil(exc.wait_s))
            # DEBUG: an attacker must not also get to flood the log.
            log.debug("too many failed API keys from %s; refusing for %d s", client or "?", retry)
            await self._refuse(
                ApiError(
                    429, "too_many_auth_failures",
                    f"Too many requests with a wrong API key lately, from this address or for this key; try again in {retry} s.",
                    headers={"Retry-After": str(retry)},
                ),
                scope, receive, send,
            )
            return
        except StoreUnavailable as exc:  # a cluster's key table is away (a failover, a restart)
            log.warning("cannot check an API key: %s", exc)
            await self._refuse(unexpected(exc), scope, receive, send)
            return
        if key is None:
            await self._refuse(unauthorized("The API key is not valid (mistyped, or removed); ask the server's operator for a key.", invalid=True), scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["owner"] = key.id
        state["key_name"] = key.name
        wait = await self._take(key)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            log.info("key %s is over its request rate", key.name)
            await self._refuse(
                ApiError(429, "rate_limited", f"Too many requests with this key; try again in {retry} s.", headers={"Retry-After": str(retry)}),
                scope, receive, send,
            )
            return
        # HEAD too: Starlette answers HEAD with the GET route, and a HEAD that
        # was not counted held a stream past the cap.
        if scope.get("method") in ("GET", "HEAD") and EVENTS_RE.match(path):
            limit = self.cfg.auth.max_sse_per_key
            if self.streams.get(key.id, 0) >= limit:
                await self._refuse(
                    ApiError(
                        429, "too_many_streams",
                        f"This key already has {limit} event streams open, its limit; close one (another tab?) and try again.",
                        headers={"Retry-After": "5"},
                    ),
                    scope, receive, send,
                )
                return
            self.streams[key.id] = self.streams.get(key.id, 0) + 1
            try:
                await self.app(scope, receive, send)
            finally:
                left = self.streams[key.id] - 1
                if left:
                    self.streams[key.id] = left
                else:
                    del self.streams[key.id]
            return
        await self.app(scope, receive, send)

    async def _take(self, key: ApiKey) -> float:
        """A token of the key's request rate: from the cluster's shared bucket, else (or while the
        database is away) from this node's own."""
        table = self.keys.table if self.keys is not None else None
        rate = self.limiter.rate_per_minute if key.rate_per_minute is None else key.rate_per_minute
        if table is not None and rate > 0:
            try:
                return await table.take_token(key.id, burst=self.limiter.burst, per_s=rate / 60.0)
            except StoreUnavailable as exc:
                log.debug("shared rate limit unavailable (%s); this node's own applies", exc)
        return self.limiter.take(key.id, rate_per_minute=key.rate_per_minute)

    @staticmethod
    async def _refuse(exc: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(exc)(scope, receive, send)
