"""The page's aids for a job: its waveform and, when needed, a browser-playable copy.

Both are made once: by the pipeline while the job is transcribed (from the PCM it
has just extracted), or on the first request for a job finished before they
existed (the audio is extracted again for that, once). They are files in the job
folder, so retention removes them with the job.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any, Awaitable, Callable

import anyio

from app.media.ffmpeg import FfmpegError, FfmpegPool
from app.media.playback import Plan, audio_args, plan_for, playback_suffix, remux_args
from app.media.waveform import peaks_from_pcm
from storage.files import atomic_write_json
from storage.seams import FileStore
from storage.store import JobRecord

log = logging.getLogger("altyazi.playback")


class PlaybackFiles:
    def __init__(self, *, files: FileStore, pool: FfmpegPool) -> None:
        self.files = files
        self.pool = pool
        self._locks: dict[str, asyncio.Lock] = {}

    def plan(self, job: JobRecord) -> Plan:
        source = self.files.find_input(job.id)
        return plan_for(job.media, source.suffix if source else "")

    def source(self, job: JobRecord) -> Path | None:
        """The file the player gets now: the upload, or its copy once made; None when neither is there."""
        plan = self.plan(job)
        if plan == "input":
            return self.files.find_input(job.id)
        for p in (plan, "audio"):  # a remux that failed fell back to the audio copy
            path = self.files.playback_path(job.id, playback_suffix(p))
            if path.exists():
                return path
        return None

    def _copy(self, job: JobRecord) -> Path | None:
        plan = self.plan(job)
        return None if plan == "input" else self.files.playback_path(job.id, playback_suffix(plan))

    async def prepare(self, job: JobRecord, pcm: Path | None = None) -> None:
        """Make what is missing; ``pcm`` is the job's extracted audio when the caller has it."""
        lock = self._locks.setdefault(job.id, asyncio.Lock())
        try:
            with self.files.pin(job.id):  # retention waits until the copy is made
                async with lock:
                    await self._prepare(job, pcm)
        finally:
            if not lock.locked():
                self._locks.pop(job.id, None)

    async def _prepare(self, job: JobRecord, pcm: Path | None) -> None:
        wave = self.files.waveform_path(job.id)
        need_wave = not wave.exists()
        need_copy = self.source(job) is None and self.plan(job) != "input"
        source = self.files.find_input(job.id)
        if not (need_wave or need_copy) or source is None:
            return
        temp = self.files.job_dir(job.id) / "playback.pcm"  # not work_dir(): that would make a deleted job's folder again

        async def audio() -> Path:
            # The pipeline's PCM when there is one; else extracted again, once, only when needed.
            if pcm is not None and pcm.exists():  # noqa: ASYNC240 - one stat
                return pcm
            if not temp.exists():  # noqa: ASYNC240 - one stat
                await self.pool.extract_audio(source, temp, duration_s=job.duration_s)
            return temp

        try:
            if need_wave:
                waveform = await anyio.to_thread.run_sync(peaks_from_pcm, await audio())
                await anyio.to_thread.run_sync(atomic_write_json, wave, waveform.to_dict())
            if need_copy:
                await self._make_copy(job, source, audio)
        finally:
            temp.unlink(missing_ok=True)

    async def _make_copy(self, job: JobRecord, source: Path, audio: Callable[[], Awaitable[Path]]) -> None:
        if self.plan(job) == "remux":
            dst = self.files.playback_path(job.id, ".mp4")
            try:
                await self._run(remux_args(source, dst.with_name(dst.name + ".part")), dst, job.owner)
                return
            except FfmpegError as exc:
                log.info("job %s: the streams could not be copied into an MP4 (%s); making an audio copy", job.id, exc.message)
        dst = self.files.playback_path(job.id, ".m4a")
        await self._run(audio_args(await audio(), dst.with_name(dst.name + ".part")), dst, job.owner)

    async def _run(self, args: list[str], dst: Path, owner: str) -> None:
        part = dst.with_name(dst.name + ".part")
        try:
            await self.pool.run(args, owner=owner)
            os.replace(part, dst)
        finally:
            part.unlink(missing_ok=True)

    async def waveform(self, job: JobRecord) -> dict[str, Any] | None:
        """The waveform as stored; None when it is not (made yet, or the job's files are gone)."""
        try:
            return await anyio.to_thread.run_sync(_read_json, self.files.waveform_path(job.id))
        except FileNotFoundError:
            return None


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text("utf-8"))  # type: ignore[no-any-return]
