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
import time
from pathlib import Path
from typing import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app import api
from app.config import Config
from app.errors import ApiError, api_error_handler, http_error_handler, unhandled_error_handler
from app.events import EventHub
from app.exports import ExportManager
from app.ffmpeg import FfmpegPool
from app.jobs import JobManager, ManagerLimits
from app.state import AppState
from batching.types import Engine
from storage.files import JobFiles
from storage.retention import RetentionSweeper
from storage.store import JobStore

log = logging.getLogger("altyazi.server")

EngineFactory = Callable[[Config], "tuple[Engine, bool, str]"]


def create_app(cfg: Config, *, engine_factory: EngineFactory) -> Starlette:
    """The ASGI app; ``engine_factory`` builds the engine (the real model, or a fake in tests)."""
    factory = engine_factory
    holder: dict[str, AppState] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        data_dir = Path(cfg.storage.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        store = await JobStore.open(data_dir / "altyazi.db")
        files = JobFiles(data_dir)
        pool = FfmpegPool(
            ffmpeg=cfg.ffmpeg.path,
            ffprobe=cfg.ffmpeg.ffprobe_path,
            max_processes=cfg.ffmpeg.max_processes,
            timeout_s=cfg.ffmpeg.timeout_s,
            threads=cfg.ffmpeg.threads,
        )
        engine, multilingual, model_name = factory(cfg)
        t0 = time.monotonic()
        await engine.start()
        log.info("model %s ready in %.1f s", model_name, time.monotonic() - t0)
        hub = EventHub(store)
        manager = JobManager(
            store=store,
            files=files,
            pool=pool,
            engine=engine,
            hub=hub,
            multilingual=multilingual,
            limits=ManagerLimits(max_running_jobs=cfg.limits.max_running_jobs),
        )
        exports = ExportManager(store=store, files=files, pool=pool, hub=hub, crf=cfg.ffmpeg.crf, preset=cfg.ffmpeg.preset)
        state = AppState(
            cfg=cfg, store=store, files=files, pool=pool, engine=engine, hub=hub,
            manager=manager, exports=exports, multilingual=multilingual, model_name=model_name,
        )
        app.state.altyazi = state
        holder["state"] = state
        await manager.recover()
        await exports.recover()
        sweeper = RetentionSweeper(store, files, retention_hours=cfg.storage.retention_hours)
        sweeper_task = asyncio.create_task(sweeper.run(), name="retention")
        state.ready = True
        try:
            yield
        finally:
            begin_drain(app)
            sweeper_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper_task
            await exports.stop()
            await manager.stop()
            await engine.stop()
            await store.close()
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
        *api.routes,
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ApiError: api_error_handler,
            HTTPException: http_error_handler,
            Exception: unhandled_error_handler,
        },
    )


def begin_drain(app: Starlette) -> None:
    """First step of shutdown: refuse uploads and end SSE streams. Safe to call twice."""
    state: AppState | None = getattr(app.state, "altyazi", None)
    if state is None or state.draining:
        return
    state.draining = True
    state.hub.close()
