"""Run the app under uvicorn with altyazi's shutdown order."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import sys
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from app import sdnotify
from app.config import Config
from app.api.connlimits import uvicorn_options
from app.model_files import ResolvedModel, resolve_model
from app.application import begin_drain, create_app
from batching.batcher import BatcherOptions
from batching.types import Engine

log = logging.getLogger("altyazi.server")


class DrainingServer(uvicorn.Server):
    """uvicorn, plus: the first signal also starts altyazi's drain.

    uvicorn waits for open connections before it runs the lifespan shutdown,
    and SSE streams never close on their own, so the drain (503 for uploads,
    a last ``status`` event on every stream) must start at the signal itself.
    """

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self._app = app

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:  # the lifespan (model load) ran and the sockets listen
            sdnotify.ready(f"serving on {self.config.host}:{self.config.port}")

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        first = not self.should_exit
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal after its shutdown, so the process would
        # die "killed by SIGTERM". A drain that completed is a clean stop: exit 0.
        self._captured_signals.clear()
        if first:
            sdnotify.stopping("draining: no new uploads, finishing the batch on the model")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.call_soon_threadsafe(begin_drain, self._app)


def batcher_options(cfg: Config) -> BatcherOptions:
    """The engine's batching options, built once from ``[batching]``; 0 picks the device's default."""
    from batching.whisper_engine import default_batch_size, default_batch_rows

    size = cfg.batching.max_batch_size or default_batch_size(cfg.model.device)
    return BatcherOptions(
        max_batch_size=size,
        max_wait_s=cfg.batching.max_wait_ms / 1000.0,
        prepare_threads=cfg.batching.prepare_threads,
        max_batch_weight=cfg.batching.max_batch_rows or default_batch_rows(cfg.model.device, size),
    )


def engine_for(cfg: Config, resolved: ResolvedModel) -> Engine:
    """One Whisper engine, or one per GPU of ``model.device_index`` behind a SpreadEngine."""
    from batching.spread import SpreadEngine
    from batching.whisper_engine import WhisperEngine, default_encode_batch

    def one(index: int) -> WhisperEngine:
        return WhisperEngine(
            {
                "model": resolved.path_or_id,
                "device": cfg.model.device,
                "device_index": index,
                "compute_type": cfg.model.compute_type,
                "cpu_threads": cfg.model.cpu_threads,
                "replicas": cfg.model.cpu_replicas,
                "encode_batch_size": cfg.batching.encode_batch_size or default_encode_batch(cfg.model.device),
                "trim_short": cfg.model.trim_short_windows,
                "encoder_cache_bytes": cfg.model.encoder_cache_mb * 2**20,
            },
            options=batcher_options(cfg),
        )

    indexes = cfg.model.device_index
    if len(indexes) == 1:
        return one(indexes[0])
    return SpreadEngine([one(i) for i in indexes])


def run_server(cfg: Config) -> int:
    for tool in (cfg.ffmpeg.path, cfg.ffmpeg.ffprobe_path):
        if shutil.which(tool) is None:
            print(f"altyazi: {tool!r} was not found; install ffmpeg (Debian: apt-get install ffmpeg) or set ffmpeg.path", file=sys.stderr)
            return 2
    # Resolved before uvicorn starts, so a missing model is one line, not a lifespan traceback.
    resolved = resolve_model(cfg.model.name, cfg.storage.data_dir)
    log.info("model %s from %s (%s)", resolved.name, resolved.path_or_id, resolved.source)
    app = create_app(cfg, engine_factory=lambda c: (engine_for(c, resolved), resolved.multilingual, resolved.name))
    config = uvicorn.Config(
        app,
        host=cfg.server.host,
        port=cfg.server.port,
        log_config=None,  # keep altyazi's own log format
        access_log=False,  # app.api.metrics.HttpMetricsMiddleware writes the access log, in that format
        # Half the shutdown budget for open requests (uploads), half for the batch on the model.
        timeout_graceful_shutdown=max(1, int(cfg.server.shutdown_timeout_s / 2)),
        lifespan="on",
        **uvicorn_options(cfg),
    )
    server = DrainingServer(config, app)
    sdnotify.status(f"loading model {resolved.name}")
    server.run()
    return 0 if server.started else 1
