"""Export jobs: one owned task per export, rendered through the shared ffmpeg pool.

An export renders the job's latest transcript (the edited one when there is
one) into the media. Its progress goes out on the job's event stream as
``progress`` events with ``stage: "exporting"`` and the export's id, and it ends
with ``export_done`` or ``export_failed``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import anyio

from app.pipeline.errors import InvalidRequest, LimitReached, NotReady
from app.pipeline.events import EventBus
from app.pipeline.tasks import TaskRegistry
from app.media.cuerules import DEFAULT_RULES, CueRules, RuleError
from app.media.render import ExportOptionError, ExportOptions, output_name, render_export
from app.pipeline.options import JobOptions
from app.media.ffmpeg import DiskFull, FfmpegError, FfmpegPool, FfmpegTimeout
from app.pipeline.jobs import segment_from_dict
from app.media.probe import MediaInfo
from storage.seams import FileStore, JobRepository
from storage.states import ACTIVE, Stage, Status
from storage.store import ExportRecord, JobRecord

log = logging.getLogger("altyazi.exports")

PROGRESS_STEP = 0.01
# An owner at its export limit waits for one of its renders to end; renders of
# short clips take seconds, and the client can follow export_done instead.
LIMIT_RETRY_AFTER_S = 10


class ExportManager:
    def __init__(
        self, *, store: JobRepository, files: FileStore, pool: FfmpegPool, hub: EventBus, crf: int, preset: str, rules: CueRules = DEFAULT_RULES
    ) -> None:
        self.store = store
        self.rules = rules  # the server's subtitle line rules ([subtitles])
        self.files = files
        self.pool = pool
        self.hub = hub
        self.crf = crf
        self.preset = preset
        self._tasks = TaskRegistry("export")
        self._progress_tasks: set[asyncio.Task[None]] = set()
        self._by_job: dict[str, set[str]] = defaultdict(set)
        # Exports queued or rendering, by owner, against the owner's limit
        # (set by the app from the key; None: no limit).
        self.owner_limit: Callable[[str], int | None] = lambda owner: None
        self._by_owner: dict[str, set[str]] = defaultdict(set)
        self._owner_of: dict[str, str] = {}

    def parse(self, body: Any) -> ExportOptions:
        if not isinstance(body, dict):
            raise InvalidRequest("invalid_export_option", "The body must be a JSON object such as {\"mode\": \"soft\"}.")
        try:
            return ExportOptions.from_dict(body, default_crf=self.crf, default_preset=self.preset)
        except ExportOptionError as exc:
            raise InvalidRequest(exc.code, exc.message, field=exc.field) from None

    def rules_for(self, job: JobRecord, options: ExportOptions) -> CueRules:
        """The server's line rules, then the job's, then the export's."""
        return options.rules(JobOptions.from_dict(job.options).subtitle_rules(self.rules))

    def active_for(self, job_id: str) -> int:
        return len(self._by_job.get(job_id, ()))

    @property
    def active(self) -> int:
        return len(self._tasks)

    def active_for_owner(self, owner: str) -> int:
        return len(self._by_owner.get(owner, ()))

    def _hold(self, owner: str, export_id: str) -> None:
        self._by_owner[owner].add(export_id)
        self._owner_of[export_id] = owner

    def _unhold(self, export_id: str) -> None:
        owner = self._owner_of.pop(export_id, None)
        held = self._by_owner.get(owner) if owner is not None else None
        if held is not None:
            held.discard(export_id)
            if not held:
                del self._by_owner[owner]  # type: ignore[arg-type]

    def _check_limit(self, owner: str) -> None:
        limit = self.owner_limit(owner)
        held = self.active_for_owner(owner)
        if limit is not None and held >= limit:
            raise LimitReached(
                "too_many_exports",
                f"You have {held} exports queued or rendering, the most this server allows per key; wait until "
                "one is done (export_done on the job's event stream) and try again.",
                retry_after_s=LIMIT_RETRY_AFTER_S,
            )

    async def create(self, job: JobRecord, options: ExportOptions, export_id: str) -> ExportRecord:
        if job.status != Status.DONE:
            raise NotReady("not_ready", f"Exports need a finished transcript; the job is {job.status}.")
        if options.mode == "burn" and job.media and not job.media.get("has_video"):
            raise InvalidRequest("invalid_export_option", "Export option 'mode' is invalid: burn needs a video stream; this file is audio only, use \"soft\" instead", field="mode")
        try:
            self.rules_for(job, options)
        except RuleError as exc:
            raise InvalidRequest("invalid_export_option", f"Export option 'subtitles.{exc.field}' is invalid: {exc.message.split(': ', 1)[1]}", field=f"subtitles.{exc.field}") from None
        self._check_limit(job.owner)
        # The place is taken before the first await, so requests racing in at
        # once cannot all pass the check.
        self._hold(job.owner, export_id)
        now = time.time()
        record = ExportRecord(
            id=export_id,
            job_id=job.id,
            owner=job.owner,
            status=Status.QUEUED,
            progress=0.0,
            options=_options_dict(options),
            created_at=now,
            updated_at=now,
            filename=output_name(job.filename, options.mode, options.container),
        )
        try:
            await self.store.create_export(record)
            await self.hub.publish(job.id, "export_queued", {"export_id": export_id, "status": Status.QUEUED})
        except BaseException:
            self._unhold(export_id)
            raise
        self.spawn(record)
        return record

    def spawn(self, record: ExportRecord) -> None:
        self._by_job[record.job_id].add(record.id)
        self._hold(record.owner, record.id)
        self._tasks.spawn(record.id, self._run(record), on_done=lambda: self._detach(record.job_id, record.id))

    def _detach(self, job_id: str, export_id: str) -> None:
        # Called before an export's final event goes out, so a stream that sees
        # it also sees that no export of the job is running any more.
        ids = self._by_job.get(job_id)
        if ids is not None:
            ids.discard(export_id)
            if not ids:
                del self._by_job[job_id]
        self._unhold(export_id)

    async def recover(self) -> int:
        """Restart exports a previous process left unfinished; their partial files are gone by design."""
        records = await self.store.exports_with_status(ACTIVE)
        for record in records:
            await self.store.update_export(record.id, status=Status.QUEUED, progress=0.0)
            self.spawn(record)
        return len(records)

    async def cancel(self, export_id: str) -> bool:
        return await self._tasks.cancel(export_id)

    async def cancel_job(self, job_id: str) -> None:
        for export_id in list(self._by_job.get(job_id, ())):
            await self.cancel(export_id)

    async def stop(self) -> None:
        """Shutdown: stop renders without marking them; they restart on the next start."""
        await self._tasks.stop()

    async def _run(self, record: ExportRecord) -> None:
        export_id, job_id = record.id, record.job_id
        options = ExportOptions.from_dict(record.options)
        # Made inside the try: a folder that cannot be created (read-only data dir)
        # must fail the export, not kill its task and leave it queued forever.
        work_dir: Path | None = None
        dest: Path | None = None
        try:
            work_dir = self.files.work_dir(job_id) / export_id
            dest = self.files.export_path(job_id, export_id, options.container)
            job = await self.store.get_job(job_id)
            source = await self.files.pull_input(job_id)
            if job is None or source is None:
                raise FfmpegError("The job's media is gone, so it cannot be exported.", code="input_missing")
            await self.store.update_export(export_id, status=Status.RUNNING)
            await self.hub.publish(job_id, "progress", {"stage": Stage.EXPORTING, "export_id": export_id, "progress": 0.0})
            segments = await self._segments(job_id)
            media = MediaInfo(**(job.media or {}))
            last = [0.0]

            def on_progress(fraction: float) -> None:
                if fraction - last[0] >= PROGRESS_STEP:
                    last[0] = fraction
                    self._progress(job_id, export_id, fraction)

            dest.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.monotonic()
            await render_export(
                self.pool,
                source=source,
                media=media,
                segments=segments,
                options=options,
                language=job.language,
                work_dir=work_dir,
                dest=dest,
                on_progress=on_progress,
                owner=record.owner,
                rules=self.rules_for(job, options),
            )
            size = dest.stat().st_size
            await self.files.push(job_id, dest)
            await self.store.update_export(export_id, status=Status.DONE, progress=1.0, finished_at=time.time(), size_bytes=size)
            self._detach(job_id, export_id)
            await self.hub.publish(job_id, "export_done", {"export_id": export_id, "status": Status.DONE, "size_bytes": size})
            log.info("export %s of job %s done in %.1f s", export_id, job_id, time.monotonic() - t0)
        except asyncio.CancelledError:
            if dest is not None:
                dest.unlink(missing_ok=True)
            if not self._tasks.stopping:
                # A user's cancel: record it even though this task is being cancelled.
                await asyncio.shield(self._fail(job_id, export_id, Status.CANCELLED, "export_cancelled", "The export was cancelled."))
            raise
        except ExportOptionError as exc:
            await self._fail(job_id, export_id, Status.FAILED, exc.code, exc.message)
        except RuleError as exc:
            await self._fail(job_id, export_id, Status.FAILED, "invalid_export_option", exc.message)
        except DiskFull:
            await self._fail(job_id, export_id, Status.FAILED, "disk_full", "The server ran out of disk space while rendering; try again later.")
        except FfmpegTimeout as exc:
            await self._fail(job_id, export_id, Status.FAILED, "ffmpeg_timeout", exc.message)
        except FfmpegError as exc:
            await self._fail(job_id, export_id, Status.FAILED, exc.code or "export_failed", f"Rendering failed: {exc.message}")
        except Exception:
            log.exception("export %s of job %s failed unexpectedly", export_id, job_id)
            await self._fail(job_id, export_id, Status.FAILED, "internal_error", "The server hit an unexpected error while rendering; it has been logged.")
        finally:
            if work_dir is not None:
                await anyio.to_thread.run_sync(shutil.rmtree, work_dir, True)

    def _progress(self, job_id: str, export_id: str, fraction: float) -> None:
        # Progress is best effort: a write that loses a race with the final state is harmless.
        async def write() -> None:
            try:
                await self.store.update_export(export_id, progress=fraction)
                await self.hub.publish(job_id, "progress", {"stage": Stage.EXPORTING, "export_id": export_id, "progress": round(fraction, 4)})
            except Exception:
                log.debug("export progress for %s dropped", export_id, exc_info=True)

        task = asyncio.get_running_loop().create_task(write())
        # Keep a reference until it finishes (the loop holds tasks only weakly).
        self._progress_tasks.add(task)
        task.add_done_callback(self._progress_tasks.discard)

    async def _segments(self, job_id: str) -> list[Any]:
        edited = self.files.edited_path(job_id)
        await self.files.pull(job_id, edited)
        await self.files.pull(job_id, self.files.transcript_path(job_id))
        path = edited if edited.exists() else self.files.transcript_path(job_id)
        text = await anyio.to_thread.run_sync(path.read_text, "utf-8")
        return [segment_from_dict(s) for s in json.loads(text).get("segments", [])]

    async def _fail(self, job_id: str, export_id: str, status: str, code: str, message: str) -> None:
        try:
            await self.store.update_export(export_id, status=status, finished_at=time.time(), error_code=code, error_message=message)
        except KeyError:
            return  # the job (and so the export) was deleted meanwhile
        self._detach(job_id, export_id)
        await self.hub.publish(job_id, "export_failed", {"export_id": export_id, "status": status, "error": {"code": code, "message": message}})


def _options_dict(options: ExportOptions) -> dict[str, Any]:
    return asdict(options)
