"""What the routes share: the parts of the running server and the admission checks."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

import anyio
from starlette.requests import Request

from app.api.auth import ApiKey, KeyStore
from app.config import Config
from app.api.errors import ApiError
from app.pipeline.events import EventBus
from app.media.ffmpeg import FfmpegPool
from app.pipeline.exports import ExportManager
from app.pipeline.jobs import JobManager
from app.pipeline.options import JobOptions
from app.api.reservations import Slot, Slots
from app.api.uploads import IngestGate
from batching.types import Engine
from storage.files import free_bytes
from storage.seams import FileStore, JobRepository
from app.api.media_tokens import MediaTokens
from storage.states import ACTIVE, FINAL, Stage, Status
from storage.store import JobRecord

log = logging.getLogger("altyazi.state")

ANONYMOUS = "anonymous"


def owner_of(request: Request) -> str:
    """The owner every job and stream belongs to; set by the auth middleware when keys are on."""
    return getattr(request.state, "owner", ANONYMOUS)


@dataclass
class AppState:
    cfg: Config
    store: JobRepository
    files: FileStore
    pool: FfmpegPool
    engine: Engine
    hub: EventBus
    manager: JobManager
    exports: ExportManager
    multilingual: bool
    model_name: str
    ready: bool = False
    draining: bool = False
    uploads_in_flight: int = 0
    ingest: IngestGate = field(default_factory=IngestGate)  # small uploads first
    sse_streams: int = 0
    started_at: float = field(default_factory=time.time)
    keys: KeyStore | None = None  # set when auth.enabled; owners are then key ids
    slots: Slots = field(default_factory=Slots)  # uploads counted before their job row exists
    media_tokens: MediaTokens = field(default_factory=MediaTokens.ephemeral)  # the player's signed links

    # ---- admission checks, cheapest first ----------------------------------

    def check_accepting(self) -> None:
        if self.draining:
            raise ApiError(
                503, "shutting_down", "The server is restarting and takes no new jobs; try again in a few seconds.",
                headers={"Retry-After": "10"},
            )
        if not self.ready:
            raise ApiError(503, "not_ready", "The server is still loading its model; try again shortly.", headers={"Retry-After": "5"})

    async def reserve_slot(self, owner: str) -> Slot:
        """Count the owner's and the server's jobs and take a slot, or raise 429.

        Release the slot once the job's task is spawned, or when the upload fails.
        """
        self._check_global()
        key = self.key_of(owner)
        if key is None:
            return self.slots.take(owner)  # keys off: one anonymous owner, only the global limit
        limits = self.cfg.limits
        # A key's first max_active jobs run, the next max_queued wait their turn
        # (app/pipeline/admission.py); only past both is an upload refused.
        max_active = self.active_cap(owner) or limits.max_active_jobs_per_key
        max_queued = key.max_queued_jobs or limits.max_queued_jobs_per_key
        async with self.slots.lock(owner):
            have = await self.store.count_jobs(ACTIVE, owner=owner) + self.slots.held(owner)
            if have >= max_active + max_queued:
                retry = self.retry_after_s()
                raise ApiError(
                    429, "too_many_queued_jobs",
                    f"This key has {have} jobs waiting, running or uploading, its limit ({max_active} running + {max_queued} waiting); "
                    f"try again in about {retry} s, when some have finished.",
                    headers={"Retry-After": str(retry)},
                )
            self._check_global()  # others may have taken the last slots while we counted
            return self.slots.take(owner)

    def _check_global(self) -> None:
        active = self.manager.active + self.slots.total
        if active >= self.cfg.limits.max_queued_jobs:
            retry = self.retry_after_s()
            raise ApiError(
                429, "queue_full",
                f"The server has {active} jobs waiting, running or uploading, its limit; try again in about {retry} s.",
                headers={"Retry-After": str(retry)},
            )

    def active_cap(self, owner: str) -> int | None:
        """How many of the owner's jobs may run at once; None with keys off."""
        key = self.key_of(owner)
        if key is None:
            return None
        return key.max_active_jobs or self.cfg.limits.max_active_jobs_per_key

    def export_cap(self, owner: str) -> int:
        """How many exports the owner may have queued or rendering: the key's own, else the server's."""
        key = self.key_of(owner)
        if key is not None and key.max_exports:
            return key.max_exports
        return self.cfg.limits.max_exports_per_key

    def count_lock(self, owner: str) -> AbstractAsyncContextManager[object]:
        """Held while a slot of the owner's becomes a job row, so the key's count
        never sees the job twice. The anonymous owner (keys off) has no per-key
        count, so there is nothing to hold: 100 anonymous uploads finishing at
        once queued 3.4 s here behind each other's row writes (bench/upload.py)."""
        if self.key_of(owner) is None:
            return contextlib.nullcontext()
        return self.slots.lock(owner)

    def key_of(self, owner: str) -> ApiKey | None:
        return self.keys.get(owner) if self.keys is not None and self.cfg.auth.enabled else None

    def max_upload_bytes(self, owner: str) -> int:
        """The owner's upload limit: the key's own, never above the server's storage.max_upload_mb."""
        mb = self.cfg.storage.max_upload_mb
        key = self.key_of(owner)
        if key is not None and key.max_upload_mb:
            mb = min(mb, key.max_upload_mb)
        return int(mb * 1024 * 1024)

    def retry_after_s(self) -> int:
        """Seconds until a queue slot frees, from the measured throughput (30 until measured)."""
        estimate = self.manager.seconds_until_a_slot_frees()
        if estimate is None:
            return 30
        return int(min(3600, max(1, math.ceil(estimate))))

    def check_disk(self, incoming_bytes: int) -> None:
        floor = self.cfg.storage.min_free_mb * 1024 * 1024
        free = free_bytes(self.files.data_dir)
        if free - incoming_bytes < floor:
            raise ApiError(
                507, "insufficient_storage",
                "The server is low on disk space and cannot take this upload now; try again later or upload a smaller file.",
                headers={"Retry-After": "60"},
            )

    def check_model_supports(self, options: JobOptions) -> None:
        if self.multilingual:
            return
        if options.language not in (None, "en"):
            raise ApiError(
                422, "invalid_option",
                f"language: this server's model ({self.model_name}) is English-only; use en or auto.",
                extra={"field": "language"},
            )
        if options.task == "translate":
            raise ApiError(
                422, "invalid_option",
                f"task: this server's model ({self.model_name}) is English-only and cannot translate.",
                extra={"field": "task"},
            )

    # ---- shared operations ----------------------------------------------------

    async def delete_job(self, job: JobRecord) -> None:
        """Cancel whatever runs for the job, announce it, then remove its rows and files."""
        await self.exports.cancel_job(job.id)
        was_active = await self.manager.cancel(job.id)
        if was_active or job.status not in FINAL:
            await self.store.update_job(job.id, status=Status.CANCELLED, stage=Stage.CANCELLED, finished_at=time.time())
            await self.hub.publish(job.id, "cancelled", {"status": Status.CANCELLED})
        await self.store.delete_job(job.id)
        await anyio.to_thread.run_sync(self.files.remove, job.id)
