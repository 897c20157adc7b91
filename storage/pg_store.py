"""The job store on PostgreSQL (asyncpg): the cluster's job table, work queue and event log.

It implements storage.seams.JobRepository like the SQLite store (the same
contract suite runs on both) and adds what several nodes need:

- ``claim``: a node takes whole queued jobs (or jobs whose owner's lease ran
  out) with ``SELECT … FOR UPDATE SKIP LOCKED``; each claim increments the
  job's ``epoch`` and sets ``lease_until`` from the database clock, so the
  nodes' clocks never matter.
- ``heartbeat``: renews the leases of the jobs a node still holds and tells it
  which ones it lost (claimed by another node, cancelled, deleted).
- fencing: while a claimed job's task runs (storage.claims.CURRENT), every
  write about that job checks the epoch and node in the same statement, and a
  checkpoint (``save_window``) also checks the lease: a stale owner's writes
  change nothing and raise Fenced.
- events: each appended event is announced with ``pg_notify('altyazi_events',
  '<job_id> <seq>')`` in its own transaction, which PostgreSQL delivers only
  after the commit; ids only, so the 8,000-byte payload limit never matters.

Times of records are the caller's clock (as in SQLite); leases are the
database's. A lost connection is StoreUnavailable (the API answers 503).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from storage.claims import Claim, Fenced, StoreUnavailable, claim_for
from storage.states import Stage, Status
from storage.store import (
    _EXPORT_FIELDS, _EXPORT_JSON, _EXPORT_UPDATABLE, _JOB_FIELDS, _JOB_JSON, _JOB_UPDATABLE,
    EXPORT_STATUSES, FINAL_STATUSES, JOB_STATUSES, EventRecord, ExportRecord, InvalidCursor, JobRecord, KeyExists,
    _check_fields, _dumps, _export, _job, _to_row,
)  # fmt: skip

_log = logging.getLogger("altyazi.cluster")

EVENTS_CHANNEL = "altyazi_events"
LISTENER_NAME = "altyazi-listener"  # application_name of each node's LISTEN session (pg_stat_activity)
QUEUE_CHANNEL = "altyazi_queue"

_JOB_COLS = ", ".join(_JOB_FIELDS)
_EXPORT_COLS = ", ".join(_EXPORT_FIELDS)
_ACTIVE = (str(Status.QUEUED), str(Status.RUNNING))

# MIGRATIONS[i] takes the schema from version i to i + 1. Append, never edit.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, status TEXT NOT NULL,
        stage TEXT NOT NULL, progress DOUBLE PRECISION NOT NULL, filename TEXT NOT NULL,
        options TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION, finished_at DOUBLE PRECISION, duration_s DOUBLE PRECISION, language TEXT,
        error_code TEXT, error_message TEXT, media TEXT, attempts INTEGER NOT NULL DEFAULT 0,
        -- the cluster's columns: who works on it, until when, under which claim
        node TEXT, epoch BIGINT NOT NULL DEFAULT 0, lease_until TIMESTAMPTZ,
        event_seq BIGINT NOT NULL DEFAULT 0, idempotency_key TEXT);
    CREATE INDEX jobs_owner_created ON jobs (owner, created_at, id);
    CREATE INDEX jobs_created ON jobs (created_at, id);
    CREATE INDEX jobs_status ON jobs (status, created_at);
    CREATE UNIQUE INDEX jobs_idempotency ON jobs (owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
    CREATE TABLE exports (
        id TEXT PRIMARY KEY, job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        owner TEXT NOT NULL, status TEXT NOT NULL, progress DOUBLE PRECISION NOT NULL,
        options TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION, error_code TEXT, error_message TEXT, filename TEXT, size_bytes BIGINT);
    CREATE INDEX exports_job ON exports (job_id, created_at);
    CREATE INDEX exports_status ON exports (status, created_at);
    CREATE TABLE events (
        job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE, seq BIGINT NOT NULL,
        type TEXT NOT NULL, data TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (job_id, seq));
    CREATE TABLE windows (
        job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE, idx INTEGER NOT NULL,
        result TEXT NOT NULL, epoch BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (job_id, idx));
    """,
    """
    -- the API keys of every node (the record as JSON: salted hash, limits)
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, record TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL);
    """,
    """
    -- a token bucket per key for the request rate limit, on the database clock
    CREATE TABLE rate_buckets (
        bucket TEXT PRIMARY KEY, tokens DOUBLE PRECISION NOT NULL, updated TIMESTAMPTZ NOT NULL, ok BOOLEAN NOT NULL);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
# Any one node migrates; the others wait on this advisory lock.
_MIGRATION_LOCK = 0x616C7479  # "alty"

# What a lost or refused connection looks like; anything else is a real error.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,
    # A connection lost between a query and the pool's reset of it ("cannot
    # switch to state ...; another operation is in progress"): seen when the
    # database restarts under load. A job that took it for a bug of its own
    # tried to record itself failed.
    asyncpg.InternalClientError,
)


def _params(n: int, start: int = 1) -> str:
    return ", ".join(f"${i}" for i in range(start, start + n))


def _sets(fields: dict[str, Any], start: int) -> str:
    return ", ".join(f"{k} = ${start + i}" for i, k in enumerate(fields))


def _fence(claim: Claim | None, start: int, *, lease: bool = False) -> tuple[str, list[Any]]:
    """The WHERE clause that holds a claimed job's write to its claim (nothing when unclaimed)."""
    if claim is None:
        return "", []
    sql = f" AND epoch = ${start} AND node = ${start + 1}"
    if lease:
        sql += " AND lease_until > clock_timestamp()"
    return sql, [claim.epoch, claim.node]


def _missed(claim: Claim | None, job_id: str) -> Exception:
    """Why a write about a job changed no row: for its claimed owner the claim no longer holds
    (taken over, finished or deleted by another node: Fenced, so the job is dropped quietly);
    for anyone else the job does not exist."""
    return Fenced(job_id) if claim is not None else KeyError(job_id)


class PgJobStore:
    """storage.seams.JobRepository on PostgreSQL, plus the cluster's claims and leases."""

    def __init__(self, pool: asyncpg.Pool, clock: Callable[[], float]) -> None:
        # Use PgJobStore.open(); the constructor only wires parts together.
        self._pool = pool
        self._clock = clock
        self._closed = False
        self.dsn = ""

    @classmethod
    async def open(
        cls, dsn: str, *, clock: Callable[[], float] | None = None, max_connections: int = 10, idle_transaction_s: float = 5.0
    ) -> PgJobStore:
        """Connect (a pool of up to ``max_connections``) and migrate the schema to SCHEMA_VERSION.

        A session left idle inside a transaction for ``idle_transaction_s`` (its
        node paused or cut off half way) is ended by the server, so the row
        locks it held never keep other nodes from a job.
        """
        import time

        settings = {"idle_in_transaction_session_timeout": str(int(idle_transaction_s * 1000))}
        try:
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max_connections, command_timeout=30, server_settings=settings)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable("database", str(exc) or type(exc).__name__) from exc
        store = cls(pool, clock or time.time)
        store.dsn = dsn
        try:
            await store._migrate()
        except BaseException:
            await pool.close()
            raise
        return store

    async def _migrate(self) -> None:
        async with self._conn() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
            current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            if current > SCHEMA_VERSION:
                raise RuntimeError(
                    f"database schema version {current} is newer than this altyazi understands ({SCHEMA_VERSION}); upgrade altyazi"
                )
            for version in range(current, SCHEMA_VERSION):
                await conn.execute(MIGRATIONS[version])
                await conn.execute("INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)", version + 1, self._clock())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wait_for(self._pool.close(), 10)
        except _UNAVAILABLE:  # asyncio.TimeoutError is TimeoutError
            self._pool.terminate()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; a lost database is StoreUnavailable."""
        if self._closed:
            raise RuntimeError("the job store is closed")
        try:
            async with self._pool.acquire(timeout=10) as conn:
                yield conn
        except _UNAVAILABLE as exc:
            raise StoreUnavailable("database", str(exc) or type(exc).__name__) from exc

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        # A connection the pool kept from before a database restart fails once;
        # the query never ran on it, so one more try on a fresh one is safe.
        for attempt in (0, 1):
            try:
                async with self._conn() as conn:
                    return list(await conn.fetch(sql, *args))
            except StoreUnavailable as exc:
                if attempt or not isinstance(exc.__cause__, asyncpg.InterfaceError | asyncpg.ConnectionDoesNotExistError):
                    raise
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ jobs

    async def create_job(self, rec: JobRecord, *, idempotency_key: str | None = None) -> None:
        if rec.status not in JOB_STATUSES:
            raise ValueError(f"status {rec.status!r} is not one of {JOB_STATUSES}")
        row = _to_row(rec, _JOB_FIELDS, _JOB_JSON)
        try:
            # One statement: the row and the "a job is queued" notification commit together.
            await self._fetch(
                f"WITH i AS (INSERT INTO jobs ({_JOB_COLS}, idempotency_key) VALUES ({_params(len(row) + 1)}) RETURNING id, status)"
                f" SELECT pg_notify('{QUEUE_CHANNEL}', id) FROM i WHERE status = '{Status.QUEUED}'",
                *row, idempotency_key,
            )  # fmt: skip
        except asyncpg.UniqueViolationError as exc:
            if idempotency_key is not None and "idempotency" in str(exc.constraint_name or ""):
                raise KeyExists(idempotency_key) from None
            raise ValueError(f"job {rec.id!r} already exists") from exc

    async def job_for_idempotency_key(self, owner: str, key: str) -> JobRecord | None:
        rows = await self._fetch(f"SELECT {_JOB_COLS} FROM jobs WHERE owner = $1 AND idempotency_key = $2", owner, key)
        return _job(rows[0]) if rows else None

    async def update_job(self, job_id: str, **fields: Any) -> JobRecord:
        _check_fields(fields, _JOB_UPDATABLE, _JOB_JSON, JOB_STATUSES)
        values = [_dumps(v) if k in _JOB_JSON and v is not None else v for k, v in fields.items()]
        sets = _sets(fields, 1)
        n = len(values)
        sets = f"{sets}, updated_at = ${n + 1}" if sets else f"updated_at = ${n + 1}"
        claim = claim_for(job_id)
        # A claimed job's owner writes only while the claim is its own, the lease
        # holds and nobody finished the job meanwhile (a cancel from another node).
        fence, fargs = _fence(claim, n + 3, lease=True)
        if claim is not None:
            fence += f" AND status IN ('{Status.QUEUED}', '{Status.RUNNING}')"
        rows = await self._fetch(
            f"UPDATE jobs SET {sets} WHERE id = ${n + 2}{fence} RETURNING {_JOB_COLS}", *values, self._clock(), job_id, *fargs
        )
        if not rows:
            raise _missed(claim, job_id)
        return _job(rows[0])

    async def get_job(self, job_id: str, owner: str | None = None) -> JobRecord | None:
        rows = await self._fetch(f"SELECT {_JOB_COLS} FROM jobs WHERE id = $1", job_id)
        if not rows:
            return None
        rec = _job(rows[0])
        return None if owner is not None and rec.owner != owner else rec

    async def list_jobs(self, owner: str | None, *, limit: int = 50, before: str | None = None) -> list[JobRecord]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        where: list[str] = []
        args: list[Any] = []
        if owner is not None:
            args.append(owner)
            where.append(f"owner = ${len(args)}")
        if before is not None:
            cur = await self._fetch("SELECT created_at, owner FROM jobs WHERE id = $1", before)
            if not cur or (owner is not None and cur[0]["owner"] != owner):
                raise InvalidCursor(f"unknown page cursor {before!r}")
            args += [cur[0]["created_at"], before]
            where.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
        sql = f"SELECT {_JOB_COLS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY created_at DESC, id DESC LIMIT ${len(args) + 1}"
        return [_job(r) for r in await self._fetch(sql, *args, limit)]

    async def delete_job(self, job_id: str) -> None:
        await self._fetch("DELETE FROM jobs WHERE id = $1", job_id)

    async def jobs_with_status(self, statuses: Sequence[str]) -> list[JobRecord]:
        rows = await self._fetch(f"SELECT {_JOB_COLS} FROM jobs WHERE status = ANY($1::text[]) ORDER BY created_at, id", list(statuses))
        return [_job(r) for r in rows]

    async def count_jobs(self, statuses: Sequence[str], owner: str | None = None) -> int:
        if owner is None:
            rows = await self._fetch("SELECT COUNT(*) FROM jobs WHERE status = ANY($1::text[])", list(statuses))
        else:
            rows = await self._fetch("SELECT COUNT(*) FROM jobs WHERE status = ANY($1::text[]) AND owner = $2", list(statuses), owner)
        return int(rows[0][0])

    async def finished_before(self, cutoff: float) -> list[JobRecord]:
        rows = await self._fetch(
            f"SELECT {_JOB_COLS} FROM jobs WHERE status = ANY($1::text[]) AND COALESCE(finished_at, updated_at) < $2 ORDER BY created_at, id",
            list(FINAL_STATUSES), cutoff,
        )  # fmt: skip
        return [_job(r) for r in rows]

    # ------------------------------------------------------------ events

    async def append_event(self, job_id: str, type: str, data: dict[str, Any]) -> EventRecord:
        """Store one event and announce its id; committed (and announced) when this returns."""
        return (await self.append_events([(job_id, type, data)]))[0]

    async def append_events(self, items: Sequence[tuple[str, str, dict[str, Any]]]) -> list[EventRecord]:
        """Each event in one statement of its own (so one commit each, in order)."""
        out: list[EventRecord] = []
        now = self._clock()
        for job_id, type_, data in items:
            claim = claim_for(job_id)
            fence, fargs = _fence(claim, 5)
            # The job row's counter numbers the events: its row lock orders appends
            # from any node, and the fence rides on the same update. One statement,
            # so a client paused half way never holds the row's lock: the server
            # finishes and commits it alone. The notification leaves at the commit.
            rows = await self._fetch(
                f"""
                WITH s AS (UPDATE jobs SET event_seq = event_seq + 1 WHERE id = $1{fence} RETURNING event_seq),
                i AS (INSERT INTO events (job_id, seq, type, data, created_at) SELECT $1, event_seq, $2, $3, $4 FROM s RETURNING seq)
                SELECT seq, pg_notify('{EVENTS_CHANNEL}', $1 || ' ' || seq) FROM i
                """,
                job_id, type_, _dumps(data), now, *fargs,
            )  # fmt: skip
            if not rows:
                raise _missed(claim, job_id)
            out.append(EventRecord(job_id, int(rows[0][0]), type_, data, now))
        return out

    async def events_after(self, job_id: str, after_seq: int, limit: int = 1000) -> list[EventRecord]:
        rows = await self._fetch(
            "SELECT job_id, seq, type, data, created_at FROM events WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3", job_id, after_seq, limit
        )
        return [EventRecord(r[0], int(r[1]), r[2], json.loads(r[3]), r[4]) for r in rows]

    async def last_event_seq(self, job_id: str) -> int:
        rows = await self._fetch("SELECT event_seq FROM jobs WHERE id = $1", job_id)
        return int(rows[0][0]) if rows else 0

    # ------------------------------------------------------------ windows

    async def save_window(self, job_id: str, index: int, result: dict[str, Any]) -> None:
        """Keep a finished window; for a claimed job only while the claim and its lease hold (one statement)."""
        claim = claim_for(job_id)
        fence, fargs = _fence(claim, 4, lease=True)
        rows = await self._fetch(
            "INSERT INTO windows (job_id, idx, result, epoch)"
            f" SELECT id, $2, $3, epoch FROM jobs WHERE id = $1{fence}"
            " ON CONFLICT (job_id, idx) DO UPDATE SET result = excluded.result, epoch = excluded.epoch RETURNING idx",
            job_id, index, _dumps(result), *fargs,
        )  # fmt: skip
        if not rows:
            raise _missed(claim, job_id)

    async def load_windows(self, job_id: str) -> dict[int, dict[str, Any]]:
        rows = await self._fetch("SELECT idx, result FROM windows WHERE job_id = $1 ORDER BY idx", job_id)
        return {int(r[0]): json.loads(r[1]) for r in rows}

    async def clear_windows(self, job_id: str) -> None:
        await self._fetch("DELETE FROM windows WHERE job_id = $1", job_id)

    # ------------------------------------------------------------ exports

    async def create_export(self, rec: ExportRecord) -> None:
        if rec.status not in EXPORT_STATUSES:
            raise ValueError(f"status {rec.status!r} is not one of {EXPORT_STATUSES}")
        row = _to_row(rec, _EXPORT_FIELDS, _EXPORT_JSON)
        try:
            await self._fetch(f"INSERT INTO exports ({_EXPORT_COLS}) VALUES ({_params(len(row))})", *row)
        except asyncpg.ForeignKeyViolationError:
            raise KeyError(rec.job_id) from None
        except asyncpg.UniqueViolationError as exc:
            raise ValueError(f"export {rec.id!r} already exists") from exc

    async def update_export(self, export_id: str, **fields: Any) -> ExportRecord:
        _check_fields(fields, _EXPORT_UPDATABLE, _EXPORT_JSON, EXPORT_STATUSES)
        values = [_dumps(v) if k in _EXPORT_JSON and v is not None else v for k, v in fields.items()]
        n = len(values)
        sets = _sets(fields, 1)
        sets = f"{sets}, updated_at = ${n + 1}" if sets else f"updated_at = ${n + 1}"
        rows = await self._fetch(f"UPDATE exports SET {sets} WHERE id = ${n + 2} RETURNING {_EXPORT_COLS}", *values, self._clock(), export_id)
        if not rows:
            raise KeyError(export_id)
        return _export(rows[0])

    async def get_export(self, export_id: str, job_id: str | None = None) -> ExportRecord | None:
        rows = await self._fetch(f"SELECT {_EXPORT_COLS} FROM exports WHERE id = $1", export_id)
        if not rows:
            return None
        rec = _export(rows[0])
        return None if job_id is not None and rec.job_id != job_id else rec

    async def delete_export(self, export_id: str) -> None:
        await self._fetch("DELETE FROM exports WHERE id = $1", export_id)

    async def list_exports(self, job_id: str) -> list[ExportRecord]:
        return [_export(r) for r in await self._fetch(f"SELECT {_EXPORT_COLS} FROM exports WHERE job_id = $1 ORDER BY created_at, id", job_id)]

    async def exports_with_status(self, statuses: Sequence[str]) -> list[ExportRecord]:
        rows = await self._fetch(f"SELECT {_EXPORT_COLS} FROM exports WHERE status = ANY($1::text[]) ORDER BY created_at, id", list(statuses))
        return [_export(r) for r in rows]

    # ------------------------------------------------------------ the cluster's queue

    async def claim(self, node: str, lease_s: float, limit: int = 1) -> list[tuple[JobRecord, Claim]]:
        """Take up to ``limit`` jobs: queued ones, or running ones whose lease ran out.

        Fair share: the owner with the fewest jobs running anywhere goes first,
        then the oldest job. Rows another node is claiming right now are
        skipped, not waited for. The job is ``running`` on this node under a new
        epoch when this returns.
        """
        if limit < 1:
            return []
        rows = await self._fetch(
            f"""
            WITH running AS (
                SELECT owner, COUNT(*) AS n FROM jobs WHERE status = '{Status.RUNNING}' AND lease_until > clock_timestamp() GROUP BY owner
            ), picked AS (
                SELECT j.id FROM jobs j LEFT JOIN running r ON r.owner = j.owner
                WHERE j.status = '{Status.QUEUED}' OR (j.status = '{Status.RUNNING}' AND (j.lease_until IS NULL OR j.lease_until <= clock_timestamp()))
                ORDER BY COALESCE(r.n, 0), j.created_at, j.id
                LIMIT $1 FOR UPDATE OF j SKIP LOCKED
            )
            UPDATE jobs SET status = '{Status.RUNNING}', node = $2, epoch = jobs.epoch + 1,
                lease_until = clock_timestamp() + make_interval(secs => $3), updated_at = $4
            FROM picked WHERE jobs.id = picked.id
            RETURNING {", ".join("jobs." + c for c in _JOB_FIELDS)}, jobs.epoch
            """,
            limit, node, float(lease_s), self._clock(),
        )  # fmt: skip
        return [(_job(tuple(r)[:-1]), Claim(r["id"], int(r["epoch"]), node)) for r in rows]

    async def heartbeat(self, node: str, lease_s: float, claims: Sequence[Claim]) -> set[str]:
        """Renew the leases of ``claims``; answers the ids still held (a missing one was lost)."""
        if not claims:
            return set()
        rows = await self._fetch(
            f"""
            UPDATE jobs SET lease_until = clock_timestamp() + make_interval(secs => $2)
            FROM unnest($3::text[], $4::bigint[]) AS c(id, epoch)
            WHERE jobs.id = c.id AND jobs.epoch = c.epoch AND jobs.node = $1
              AND jobs.status = '{Status.RUNNING}' AND jobs.lease_until > clock_timestamp()
            RETURNING jobs.id
            """,
            node, float(lease_s), [c.job_id for c in claims], [c.epoch for c in claims],
        )  # fmt: skip
        return {r[0] for r in rows}

    async def release(self, claim: Claim) -> None:
        """Give a job back to the queue (graceful shutdown), so another node takes it at once."""
        await self._fetch(
            f"UPDATE jobs SET status = '{Status.QUEUED}', stage = '{Stage.QUEUED}', node = NULL, lease_until = NULL"
            f" WHERE id = $1 AND epoch = $2 AND node = $3 AND status = '{Status.RUNNING}'",
            claim.job_id, claim.epoch, claim.node,
        )  # fmt: skip
        await self._fetch("SELECT pg_notify($1, $2)", QUEUE_CHANNEL, claim.job_id)

    async def expire_node(self, node: str) -> int:
        """End the leases of the jobs ``node`` held (it restarted): any node may claim them now."""
        rows = await self._fetch(
            f"UPDATE jobs SET lease_until = clock_timestamp() WHERE node = $1 AND status = '{Status.RUNNING}' RETURNING id", node
        )
        if rows:
            await self._fetch("SELECT pg_notify($1, $2)", QUEUE_CHANNEL, rows[0][0])
        return len(rows)

    async def lease_of(self, job_id: str) -> tuple[str | None, int, float | None]:
        """(node, epoch, seconds of lease left by the database clock) of a job; for tests and the bench."""
        rows = await self._fetch("SELECT node, epoch, EXTRACT(EPOCH FROM lease_until - clock_timestamp()) FROM jobs WHERE id = $1", job_id)
        if not rows:
            raise KeyError(job_id)
        left = rows[0][2]
        return rows[0][0], int(rows[0][1]), None if left is None else float(left)

    # ------------------------------------------------------------ API keys and rate limits

    async def add_key(self, key_id: str, name: str, record: dict[str, Any]) -> None:
        """Store a key's record (its salted hash and limits, never the key); KeyNameExists if the name is taken."""
        try:
            await self._fetch(
                "INSERT INTO api_keys (id, name, record, created_at) VALUES ($1, $2, $3, $4)", key_id, name, _dumps(record), self._clock()
            )
        except asyncpg.UniqueViolationError:
            raise KeyNameExists(name) from None

    async def get_key(self, key_id: str) -> dict[str, Any] | None:
        rows = await self._fetch("SELECT record FROM api_keys WHERE id = $1", key_id)
        return json.loads(rows[0][0]) if rows else None

    async def list_keys(self) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in await self._fetch("SELECT record FROM api_keys ORDER BY created_at, name")]

    async def remove_key(self, name: str) -> bool:
        """Remove the key named ``name``; False if there is none."""
        rows = await self._fetch("DELETE FROM api_keys WHERE name = $1 RETURNING id", name)
        if rows:
            await self._fetch("DELETE FROM rate_buckets WHERE bucket = $1", rows[0][0])
        return bool(rows)

    async def take_token(self, bucket: str, *, burst: float, per_s: float) -> float:
        """Take one token from the shared bucket ``bucket``: 0.0 when allowed, else seconds until a token is due.

        One statement: the row is created full, or refilled for the time since
        its last use by the database's clock (never backwards, so concurrent
        takes on several nodes serialise on the row lock and count once each),
        and one token taken if there is one.
        """
        refilled = "LEAST($2::float8, b.tokens + GREATEST(0, EXTRACT(EPOCH FROM now() - b.updated)::float8) * $3::float8)"
        rows = await self._fetch(
            f"""INSERT INTO rate_buckets AS b (bucket, tokens, updated, ok) VALUES ($1, $2::float8 - 1, now(), true)
            ON CONFLICT (bucket) DO UPDATE SET
                ok = {refilled} >= 1,
                tokens = CASE WHEN {refilled} >= 1 THEN {refilled} - 1 ELSE {refilled} END,
                updated = GREATEST(b.updated, now())
            RETURNING ok, tokens""",
            bucket, float(burst), float(per_s),
        )  # fmt: skip
        ok, tokens = rows[0]
        return 0.0 if ok else (1.0 - float(tokens)) / per_s


class KeyNameExists(Exception):
    """An API key with this name exists already."""


class PgListener:
    """The node's one LISTEN connection: event ids and queued jobs as the database announces them.

    ``on_event(job_id)`` for each committed event, ``on_job()`` for each job
    queued anywhere, ``on_connect()`` after every (re)connection, since
    whatever was announced while it was away is lost: the caller resyncs from
    the tables. A connection that dies (database restart, failover, network)
    is noticed within ``check_s`` and made again with a growing pause.
    """

    def __init__(
        self, dsn: str, *, on_event: Callable[[str], None], on_job: Callable[[], None], on_connect: Callable[[], None], check_s: float = 2.0
    ) -> None:
        self._dsn = dsn
        self._on_event = on_event
        self._on_job = on_job
        self._on_connect = on_connect
        self._check_s = check_s
        self.connected = asyncio.Event()
        self.reconnects = 0

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if channel == EVENTS_CHANNEL:
            self._on_event(payload.split(" ", 1)[0])
        elif channel == QUEUE_CHANNEL:
            self._on_job()

    async def run(self) -> None:
        """Listen until cancelled, reconnecting whenever the connection goes."""
        pause = 0.1
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=5, server_settings={"application_name": LISTENER_NAME})
                await conn.add_listener(EVENTS_CHANNEL, self._notified)
                await conn.add_listener(QUEUE_CHANNEL, self._notified)
                self.connected.set()
                pause = 0.1
                self._on_connect()
                while True:
                    await asyncio.sleep(self._check_s)
                    # a dead peer is noticed on the next round trip
                    await asyncio.wait_for(conn.fetchval("SELECT 1"), self._check_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.connected.is_set():
                    self.reconnects += 1
                    _log.warning("lost the database's notifications (%s); reconnecting", type(exc).__name__)
                self.connected.clear()
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
            finally:
                if conn is not None:
                    conn.terminate()
