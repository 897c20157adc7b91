"""The application: parts built in the lifespan, started in order, stopped in reverse.

Shutdown order (SIGTERM/SIGINT): take no new uploads (503), end every SSE
stream with a final ``status`` event so clients reconnect later, let the batch
on the model finish, then cancel job tasks without marking them — they are
still queued/running in the store and resume on the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from pathlib import Path
from typing import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.api import routes as api
from app.api import media_routes
from app.api import openai_routes as openai_api
from app.api.media_tokens import MediaTokens
from app.api.auth import AuthMiddleware, KeyStore, keys_path
from app.api.authlimit import AuthFailureLimiter
from app.api.connlimits import BodyRateMiddleware
from app.api.uploads import IngestGate
from app.config import Config
from app.api.errors import ApiError, UnhandledErrors, api_error_handler, http_error_handler, unhandled_error_handler
from app.media.probe import MediaError
from app.pipeline.errors import PipelineError
from app.pipeline.events import EventHub
from app.pipeline.exports import ExportManager
from app.media.ffmpeg import FfmpegPool
from app.pipeline.cluster import ClusterNode
from app.pipeline.jobs import JobManager, ManagerLimits
from app.pipeline.options import DecodingDefaults
from app.api.looplag import LoopLagMonitor
from app.api.metrics import HttpMetricsMiddleware, Metrics
from app.api.ranges import RangeGuard
from app.api.state import AppState
from app.api.page import routes as web_routes
from batching.types import Engine
from storage.files import JobFiles
from storage.retention import RetentionSweeper
from storage.seams import FileStore, JobRepository
from storage.store import JobStore

log = logging.getLogger("altyazi.server")

EngineFactory = Callable[[Config], "tuple[Engine, bool, str]"]


def vad_threads(cfg: Config) -> int:
    """VAD workers: ``batching.vad_threads``, or by device (one on a CPU, where it
    takes a core from the model; four beside a GPU, which a single one can starve)."""
    from batching.whisper_engine import on_gpu

    return cfg.batching.vad_threads or (4 if on_gpu(cfg.model.device) else 1)


def create_app(cfg: Config, *, engine_factory: EngineFactory) -> Starlette:
    """The ASGI app; ``engine_factory`` builds the engine (the real model, or a fake in tests)."""
    factory = engine_factory
    holder: dict[str, AppState] = {}
    metrics = Metrics(lag=LoopLagMonitor())  # this app's own registry, not the global one
    # Read now, so a malformed keys file fails at start, not on the first request.
    failures = AuthFailureLimiter(cfg.auth.failures_per_minute, cfg.auth.failure_burst)
    # In a cluster the keys are rows of the shared database, read once it is open (below).
    keys_file = None if cfg.clustered else keys_path(cfg)
    keys = KeyStore(keys_file, cache_ttl_s=cfg.auth.cache_ttl_s, failures=failures) if cfg.auth.enabled else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        data_dir = Path(cfg.storage.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before the first request
        store, files = await open_storage(cfg, data_dir)
        pool = FfmpegPool(
            ffmpeg=cfg.ffmpeg.path,
            ffprobe=cfg.ffmpeg.ffprobe_path,
            max_processes=cfg.ffmpeg.max_processes,
            timeout_s=cfg.ffmpeg.timeout_s,
            threads=cfg.ffmpeg.threads,
            render_processes=cfg.ffmpeg.max_render_processes,
            max_audio_s=cfg.storage.max_duration_s,
        )
        engine, multilingual, model_name = factory(cfg)
        t0 = time.monotonic()
        await engine.start()
        log.info("model %s ready in %.1f s", model_name, time.monotonic() - t0)
        # In a cluster, events reach subscribers through the database's notifications
        # (from any node, in one order), not straight from this process.
        hub = EventHub(store, local_delivery=not cfg.clustered)
        manager = JobManager(
            store=store,
            files=files,
            pool=pool,
            engine=engine,
            hub=hub,
            multilingual=multilingual,
            limits=ManagerLimits(max_running_jobs=cfg.limits.max_running_jobs, vad_threads=vad_threads(cfg)),
            decoding=DecodingDefaults(
                beam_size=cfg.decoding.beam_size,
                condition_on_previous_text=cfg.decoding.condition_on_previous_text,
            ),
        )
        exports = ExportManager(store=store, files=files, pool=pool, hub=hub, crf=cfg.ffmpeg.crf, preset=cfg.ffmpeg.preset, rules=cfg.subtitles.rules())
        state = AppState(
            cfg=cfg, store=store, files=files, pool=pool, engine=engine, hub=hub,
            manager=manager, exports=exports, multilingual=multilingual, model_name=model_name, keys=keys,
            ingest=IngestGate(max_streams=cfg.server.max_upload_streams),
        )
        manager.owner_cap = state.active_cap
        state.media_tokens = MediaTokens.load(data_dir / "media-token.key")
        exports.owner_limit = state.export_cap
        app.state.altyazi = state
        holder["state"] = state
        node: ClusterNode | None = None
        listener_task: asyncio.Task[None] | None = None
        keys_task: asyncio.Task[None] | None = None
        if cfg.clustered and keys is not None:
            from storage.pg_store import PgJobStore

            assert isinstance(store, PgJobStore)
            await keys.attach(store)
            keys_task = asyncio.create_task(keys.follow(), name="api-keys")
        if cfg.clustered:
            # The shared tables belong to every node: no node re-queues or drops what
            # others hold; jobs of dead nodes are claimed when their leases run out.
            node, listener_task = await start_node(cfg, store, manager, hub)
        else:
            await openai_api.discard_orphans(store, files)  # before recover() would resume them
            await manager.recover()
            await exports.recover()
        sweeper = RetentionSweeper(store, files, retention_hours=cfg.storage.retention_hours)
        sweeper_task = asyncio.create_task(sweeper.run(), name="retention")
        state.ready = True
        app.state.metrics = metrics
        metrics.start(state)  # owned tasks (loop lag, batcher sampler), stopped below
        try:
            yield
        finally:
            begin_drain(app)
            for task in (sweeper_task, keys_task):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await exports.stop()
            if node is not None:
                await node.stop()
            else:
                await manager.stop(grace_s=cfg.server.shutdown_timeout_s / 2)
            if listener_task is not None:
                listener_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener_task
            await engine.stop()
            await store.close()
            aclose = getattr(files, "aclose", None)
            if aclose is not None:
                await aclose()
            await metrics.stop()
            log.info("stopped")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        state = holder.get("state")
        if state is None or not state.ready:
            raise ApiError(503, "not_ready", "The model is still loading.", headers={"Retry-After": "5"})
        if state.draining:
            raise ApiError(503, "shutting_down", "The server is shutting down.", headers={"Retry-After": "10"})
        return JSONResponse({"status": "ready", "model": state.model_name})

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics.endpoint, methods=["GET"]),
        *openai_api.routes,
        *api.routes,
        *media_routes.routes,
        *web_routes,
    ]
    # Order, outermost first: metrics (counts 401s too), CORS (preflights need no key,
    # and a 401 still carries the CORS headers), one range at most, body rate, auth,
    # and innermost the catch-all that keeps a 500 from dropping the connection.
    middleware = [
        Middleware(RangeGuard),
        Middleware(BodyRateMiddleware, min_rate=cfg.server.min_upload_rate_bytes_s, window_s=cfg.server.timeout_body_s),
        Middleware(AuthMiddleware, cfg=cfg, keys=keys),
        Middleware(UnhandledErrors),
    ]
    if cfg.auth.cors_origins:
        middleware.insert(0, Middleware(
            CORSMiddleware,
            allow_origins=cfg.auth.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            expose_headers=["Location", "Retry-After", "Content-Disposition"],
            max_age=600,
        ))
    middleware.insert(0, Middleware(HttpMetricsMiddleware, metrics=metrics))  # outermost, counts 401s too
    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            ApiError: api_error_handler,
            PipelineError: api_error_handler,
            MediaError: api_error_handler,
            HTTPException: http_error_handler,
            Exception: unhandled_error_handler,
        },
    )


async def open_storage(cfg: Config, data_dir: Path) -> tuple[JobRepository, FileStore]:
    """The job store and file store that ``store.url`` and ``files.url`` name (default: SQLite and folders in data_dir)."""
    store: JobRepository
    if cfg.clustered:
        from storage.pg_store import PgJobStore

        store = await PgJobStore.open(cfg.store.url, idle_transaction_s=min(5.0, cfg.cluster.lease_s / 2))
    else:
        store = await JobStore.open(cfg.sqlite_path)
    files: FileStore
    if cfg.files.url.startswith("s3://"):
        from storage.s3_files import S3Files

        files = S3Files(data_dir, cfg.files.url)  # data_dir is the node's scratch
    else:
        files = JobFiles(Path(cfg.files.url[len("file://"):]) if cfg.files.url else data_dir)
    return store, files


async def start_node(cfg: Config, store: JobRepository, manager: JobManager, hub: EventHub) -> tuple[ClusterNode, asyncio.Task[None]]:
    """Join the cluster: the LISTEN connection first (so nothing announced from now on is missed), then the claim loop."""
    from storage.pg_store import PgJobStore, PgListener

    assert isinstance(store, PgJobStore)
    node_id = cfg.cluster.node_id or socket.gethostname()
    node = ClusterNode(
        manager, store, node=node_id, lease_s=cfg.cluster.lease_s, poll_s=cfg.cluster.poll_s, max_jobs=cfg.cluster.max_jobs,
    )

    def resync() -> None:
        # Whatever was announced while the listener was away: read it from the tables.
        hub.poke(None)
        node.wake()

    listener = PgListener(cfg.store.url, on_event=hub.poke, on_job=node.wake, on_connect=resync)
    task = asyncio.create_task(listener.run(), name="cluster-listener")
    await node.start()
    log.info("cluster node %s started (lease %.0f s, at most %d jobs)", node_id, cfg.cluster.lease_s, cfg.cluster.max_jobs)
    return node, task


def begin_drain(app: Starlette) -> None:
    """First step of shutdown: refuse uploads and end SSE streams. Safe to call twice."""
    state: AppState | None = getattr(app.state, "altyazi", None)
    if state is None or state.draining:
        return
    state.draining = True
    state.hub.close()
