"""Deletes finished jobs once they are older than the retention period."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from storage.files import walk_stats
from storage.seams import FileStore, JobRepository

log = logging.getLogger("altyazi.retention")

# A folder with no job row is left over from a crash between making the folder
# and inserting the row (or between deleting the row and the files). Only
# folders untouched this long are taken, so an upload still streaming into a
# folder whose row is not written yet is never mistaken for one.
ORPHAN_GRACE_S = 24 * 3600.0


class RetentionSweeper:
    """Periodically removes finished jobs (rows and files) past retention.

    retention_hours = 0 keeps jobs forever. Running and queued jobs are never
    touched, nor jobs pinned by a reader (a download in progress).
    """

    def __init__(
        self,
        store: JobRepository,
        files: FileStore,
        *,
        retention_hours: float,
        interval_s: float = 300,
        clock: Callable[[], float] = time.time,
        on_delete: Callable[[str], Awaitable[None]] | None = None,
        orphan_grace_s: float | None = ORPHAN_GRACE_S,
    ) -> None:
        if not retention_hours >= 0:  # also catches NaN
            raise ValueError(f"retention_hours must be 0 (keep forever) or more, got {retention_hours!r}")
        if not interval_s > 0:
            raise ValueError(f"interval_s must be more than 0, got {interval_s!r}")
        self._store = store
        self._files = files
        self._retention_s = retention_hours * 3600.0
        self._interval_s = interval_s
        self._clock = clock
        self._on_delete = on_delete
        self._orphan_grace_s = orphan_grace_s

    async def sweep_once(self) -> list[str]:
        """Delete every finished job past retention that nobody is reading; return their ids."""
        if self._retention_s == 0:
            return []
        cutoff = self._clock() - self._retention_s
        deleted: list[str] = []
        for rec in await self._store.finished_before(cutoff):
            if self._files.is_pinned(rec.id):
                continue
            # The row goes first: from then on nobody can find the job, and a
            # crash before the files go leaves an orphan folder that
            # sweep_orphans collects, never a row pointing at missing files.
            try:
                await self._store.delete_job(rec.id)
            except Exception:
                log.exception("retention: could not delete job %s", rec.id)
                continue
            deleted.append(rec.id)
            # A download that looked the job up just before the delete may have
            # pinned it since; its files stay until the orphan sweep.
            if not self._files.is_pinned(rec.id):
                try:
                    await anyio.to_thread.run_sync(self._files.remove, rec.id)
                except Exception:
                    log.exception("retention: deleted job %s but not its files; will retry as an orphan", rec.id)
            if self._on_delete is not None:
                try:
                    await self._on_delete(rec.id)
                except Exception:
                    log.exception("retention: on_delete hook failed for job %s", rec.id)
        if deleted:
            log.info("retention: deleted %d finished job(s) older than %.1f h", len(deleted), self._retention_s / 3600)
        return deleted

    async def sweep_orphans(self) -> list[str]:
        """Remove job folders that have no job row and have not changed for orphan_grace_s."""
        if self._orphan_grace_s is None:
            return []
        now = self._clock()
        removed: list[str] = []
        for job_id in await anyio.to_thread.run_sync(self._files.job_ids):
            if self._files.is_pinned(job_id) or await self._store.get_job(job_id) is not None:
                continue
            newest = await anyio.to_thread.run_sync(_newest_mtime, self._files.job_dir(job_id))
            if newest is None or now - newest < self._orphan_grace_s:
                continue
            # the row check again: a job may have been inserted while we looked
            if await self._store.get_job(job_id) is not None:
                continue
            try:
                await anyio.to_thread.run_sync(self._files.remove, job_id)
            except Exception:
                log.exception("retention: could not remove orphan folder %s", job_id)
                continue
            removed.append(job_id)
        if removed:
            log.info("retention: removed %d orphan job folder(s)", len(removed))
        return removed

    async def run(self) -> None:
        """Sweep every interval_s until cancelled; a failed sweep is logged, never fatal."""
        while True:
            for sweep in (self.sweep_once, self.sweep_orphans):
                try:
                    await sweep()
                except Exception:
                    log.exception("retention: %s failed; will retry in %.0f s", sweep.__name__, self._interval_s)
            await anyio.sleep(self._interval_s)


def _newest_mtime(root: Path) -> float | None:
    """Latest mtime of the folder or anything in it; None when it is gone."""
    return max((st.st_mtime for _, st in walk_stats(root)), default=None)
