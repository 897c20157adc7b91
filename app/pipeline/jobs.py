"""The job state machine: one owned task per job, from extracted audio to transcript.

    queued ──admission──> running: extracting → detecting_speech → transcribing → done
                                      └──────────── any error ────────────→ failed
    DELETE at any point → cancelled (task cancelled, ffmpeg killed, windows dropped)

Every state change is committed to the store before it is announced on the
job's event stream. Finished windows are saved as they are announced, so a
job interrupted by a restart or a crash resumes after its last announced
window instead of starting over.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import anyio

from app.pipeline.admission import Admission
from app.pipeline.chains import Chain, ResumePoint
from app.pipeline.eta import Throughput, queued_eta, running_eta
from app.pipeline.events import EventBus
from app.media.ffmpeg import DiskFull, FfmpegError, FfmpegPool, TooLong
from app.media.formats import segment_to_dict, transcript_to_dict
from app.pipeline.options import DecodingDefaults, JobOptions
from app.pipeline.playback import PlaybackFiles
from app.pipeline.tasks import TaskRegistry
from app.pipeline.windows import WindowSpan, iter_windows
from batching.types import SAMPLE_RATE, AudioRef, Engine, Segment, WindowRequest, WindowResult, Word
from storage.files import atomic_write_json
from storage.claims import CURRENT, Claim, Fenced, StoreUnavailable
from storage.seams import FileStore, JobRepository
from storage.states import ACTIVE, Stage, Status
from storage.store import JobRecord

log = logging.getLogger("altyazi.jobs")

# Share of the progress bar extraction fills; the rest follows the position in
# the media up to which the transcript is announced (speech detection runs
# alongside transcription, a block ahead of it).
EXTRACT_SHARE = 0.05
PROGRESS_STEP = 0.01
# How often a transcribing job's progress moves between results: windows come
# back from the batcher in batches, minutes of audio at once on a GPU, so the
# bar follows the measured rate in between (never past the audio submitted).
TICK_S = 1.0


class JobFailure(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# Media up to this long is one window that the engine may encode trimmed; the
# runner's largest trimmed bucket is 20 s (batching.whisper_runner.TRIM_BUCKETS).
SHORT_MEDIA_S = 20.0


@dataclass
class ManagerLimits:
    max_running_jobs: int = 64
    vad_threads: int = 1


def segment_from_dict(d: dict[str, Any]) -> Segment:
    words = d.get("words")
    return Segment(
        start=float(d["start"]),
        end=float(d["end"]),
        text=str(d["text"]),
        words=tuple(Word(float(w["start"]), float(w["end"]), str(w["word"]), float(w.get("probability", 0.0))) for w in words)
        if words is not None
        else None,
        avg_logprob=float(d.get("avg_logprob", 0.0)),
        no_speech_prob=float(d.get("no_speech_prob", 0.0)),
        temperature=float(d.get("temperature", 0.0)),
    )


class JobManager:
    def __init__(
        self,
        *,
        store: JobRepository,
        files: FileStore,
        pool: FfmpegPool,
        engine: Engine,
        hub: EventBus,
        multilingual: bool,
        limits: ManagerLimits | None = None,
        decoding: DecodingDefaults | None = None,
    ) -> None:
        self.store = store
        self.files = files
        self.pool = pool
        self.engine = engine
        self.hub = hub
        self.multilingual = multilingual
        self.limits = limits or ManagerLimits()
        self.decoding = decoding or DecodingDefaults()
        self.admission = Admission(self.limits.max_running_jobs)
        # How many of one owner's jobs may run at once (None: no cap); set by
        # the app from the owner's key, so extra jobs wait in the fair queue.
        self.owner_cap: Callable[[str], int | None] = lambda owner: None
        # VAD: one scanning thread per job that is planning windows (they mostly
        # wait), and ``vad_threads`` of them analysing a block at any moment.
        self._vad_scans = anyio.CapacityLimiter(max(64, self.limits.vad_threads))
        self._vad_gate = threading.BoundedSemaphore(self.limits.vad_threads)
        self._tasks = TaskRegistry("job")
        # Audio seconds finished and when: the base of Retry-After estimates.
        self.audio_seconds_done = 0.0
        self.started_monotonic = time.monotonic()
        # (when, audio seconds) of recently finished windows, and the media length
        # of every active job: together they estimate how long the queue takes.
        self._recent: deque[tuple[float, float]] = deque()
        self._durations: dict[str, float] = {}
        # For ETAs: the smoothed rate, and how far each active job is (audio seconds).
        self.rates = Throughput()
        self._done: dict[str, float] = {}
        self._transcribing: dict[str, _Submitted] = {}  # job -> how far its windows are handed out
        # The page's waveform and playable copy, made beside the transcription.
        self.playback = PlaybackFiles(files=files, pool=pool)
        # A cluster node (app.pipeline.cluster) sets this: accepted jobs are then
        # claimed from the shared queue by whichever node has room, not spawned here.
        self.shared_queue: Callable[[], None] | None = None
        self.claims: dict[str, Claim] = {}
        self._progress_floor: dict[str, float] = {}  # the claims of this node's running jobs (cluster only)

    # ---- lifecycle -------------------------------------------------------

    async def recover(self) -> int:
        """Re-queue what a previous process left queued or running (also after kill -9)."""
        jobs = await self.store.jobs_with_status(ACTIVE)
        for job in jobs:
            if self.files.find_input(job.id) is None:
                await self._finish(job.id, Status.FAILED, error=("input_missing", "The uploaded file is gone, so the job cannot resume; upload it again."))
                continue
            if job.status == Status.RUNNING:
                await self.store.update_job(job.id, status=Status.QUEUED, stage=Stage.QUEUED)
            self.spawn(job)
        if jobs:
            log.info("recovered %d unfinished job(s)", len(jobs))
        return len(jobs)

    def spawn(self, job: JobRecord, claim: Claim | None = None) -> None:
        """Start the job's task; in a cluster, only for a job this node claimed (others wake the claim loop)."""
        if claim is None and self.shared_queue is not None:
            self.shared_queue()
            return
        self._durations[job.id] = float(job.duration_s or 0.0)
        if claim is not None:
            self.claims[job.id] = claim

        def forget(job_id: str = job.id) -> None:
            if job_id not in self._tasks:  # not replaced by a newer task for the same job
                self._durations.pop(job_id, None)
                self._done.pop(job_id, None)
                if self.claims.get(job_id) == claim:
                    self.claims.pop(job_id, None)

        self._tasks.spawn(job.id, self._run(job, claim), on_done=forget)

    def throughput(self, window_s: float = 300.0) -> float:
        """Audio seconds transcribed per wall second over the last few minutes (0: unknown)."""
        now = time.monotonic()
        while self._recent and now - self._recent[0][0] > window_s:
            self._recent.popleft()
        if not self._recent:
            return 0.0
        span = max(now - self._recent[0][0], min(window_s, now - self.started_monotonic), 1.0)
        return sum(s for _, s in self._recent) / span

    def seconds_until_a_slot_frees(self) -> float | None:
        """A rough wait for the next free queue slot: the active jobs' audio at the
        measured speed, spread over the jobs (None while nothing was measured)."""
        rate = self.throughput()
        if rate <= 0 or not self._durations:
            return None
        return sum(self._durations.values()) / rate / len(self._durations)

    def _position(self, job_id: str) -> float:
        """Audio seconds of the job decoded by now: announced, plus its share of the rate since, up to what was handed out."""
        done = self._done.get(job_id, 0.0)
        flight, rate = self._transcribing.get(job_id), self.rates.rate
        if flight is None or not rate:
            return done
        guess = done + rate / len(self._transcribing) * (time.monotonic() - flight.last_result)
        return max(done, min(guess, flight.samples / SAMPLE_RATE))

    def _left(self, job_id: str) -> float:
        return max(0.0, self._durations.get(job_id, 0.0) - self._position(job_id))

    def eta_seconds(self, job_id: str) -> float | None:
        """Seconds until the job is done, from the measured rate and the work ahead (None: not known yet)."""
        if job_id not in self._durations:
            return None
        waiting = self.admission.order()
        if job_id in waiting:
            queued = set(waiting)
            ahead = [k for k in self._durations if k not in queued] + waiting[: waiting.index(job_id)]
            eta = queued_eta(self._left(job_id), (self._left(k) for k in ahead), self.rates.rate)
        else:
            queued = set(waiting)
            others = (self._left(k) for k in self._durations if k != job_id and k not in queued)
            eta = running_eta(self._left(job_id), others, self.rates.rate)
        return None if eta is None else round(eta, 1)

    @property
    def active(self) -> int:
        return len(self._tasks)

    async def stop(self, grace_s: float = 0.0) -> None:
        """Shutdown: drop queued windows, let the batch on the model finish (at most
        ``grace_s``) so its windows are saved, then cancel every job task without
        marking it: jobs stay queued/running in the store and resume on restart."""
        self._tasks.stopping = True
        for job_id in self._tasks:
            self.engine.cancel_job(job_id)
        await self.engine.drain(grace_s)
        # One more turn of the loop so delivered results are announced and saved.
        await asyncio.sleep(0)
        await self._tasks.stop()

    def queue_position(self, job_id: str) -> int | None:
        return self.admission.position(job_id)

    async def cancel(self, job_id: str) -> bool:
        """Stop a job's work now: its ffmpeg is killed and its queued windows dropped."""
        self.engine.cancel_job(job_id)
        return await self._tasks.cancel(job_id)

    async def drop(self, job_id: str) -> None:
        """A cluster node lost the job's claim: stop its work without writing anything about it."""
        self.claims.pop(job_id, None)
        await self.cancel(job_id)

    async def stop_claimed(self, grace_s: float = 0.0) -> None:
        """A cluster node's shutdown: like stop(), and its claims are forgotten."""
        await self.stop(grace_s)
        self.claims.clear()

    # ---- the pipeline ----------------------------------------------------

    async def _run(self, job: JobRecord, claim: Claim | None = None) -> None:
        job_id = job.id
        if claim is not None:
            # Every write of this task (and of the tasks it starts) about the job carries the claim.
            CURRENT.set(claim)
        try:
            await self.admission.acquire(job.owner, job_id, self.owner_cap(job.owner))
            try:
                await self._pipeline(job)
            finally:
                self.admission.release(job_id)
        except asyncio.CancelledError:
            if self._tasks.stopping:
                _job_log(job, "interrupted", "stopped by shutdown; resumes at the next start")
            else:
                _job_log(job, "cancelled", "cancelled")
            raise
        except (Fenced, StoreUnavailable) as exc:
            if claim is None:
                raise
            # Another node has the job now, or will once the lease runs out; write nothing.
            _job_log(job, "dropped", f"dropped: {exc}", epoch=claim.epoch)
        except JobFailure as exc:
            await self._finish(job_id, Status.FAILED, error=(exc.code, exc.message))
        except Exception:
            log.exception("job %s failed unexpectedly", job_id)
            await self._finish(job_id, Status.FAILED, error=("internal_error", "The server hit an unexpected error while processing this job; it has been logged."))

    async def _pipeline(self, job: JobRecord) -> None:
        job_id = job.id
        options = JobOptions.from_dict(job.options)
        duration = float(job.duration_s or 0.0)
        job = await self.store.update_job(
            job_id, status=Status.RUNNING, stage=Stage.EXTRACTING, started_at=job.started_at or time.time(), attempts=job.attempts + 1
        )
        await self.hub.publish(job_id, "status", {"status": Status.RUNNING, "stage": Stage.EXTRACTING})
        _job_log(job, "extracting", "running", queued_s=_since(job.created_at, job.started_at), attempt=job.attempts)
        progress = _Progress(self, job_id, job.progress)
        # A resumed job (after a restart, or on another node) never shows less done than before.
        self._progress_floor[job_id] = job.progress
        try:
            await self._work(job, options, duration, progress)
        finally:
            progress.cancel()
            self._progress_floor.pop(job_id, None)

    async def _work(self, job: JobRecord, options: JobOptions, duration: float, progress: _Progress) -> None:
        job_id = job.id

        pcm = self.files.audio_path(job_id)
        if not pcm.exists():
            source = await self.files.pull_input(job_id)
            if source is None:
                raise JobFailure("input_missing", "The uploaded file is gone, so the job cannot run; upload it again.")
            try:
                # extract_audio writes to a temporary name and renames: audio.pcm is
                # complete whenever it exists, also after a crash.
                await self.pool.extract_audio(
                    source,
                    pcm,
                    duration_s=duration or None,
                    on_progress=lambda f: progress.report("extracting", EXTRACT_SHARE * f),
                )
            except TooLong as exc:
                raise JobFailure("too_long", exc.message) from None
            except DiskFull:
                raise JobFailure("disk_full", "The server ran out of disk space while extracting the audio; try again later.") from None
            except FfmpegError as exc:
                raise JobFailure("extraction_failed", f"Could not decode the audio: {exc.message}") from None
        total_samples = pcm.stat().st_size // 2
        if total_samples == 0:
            raise JobFailure("no_audio", "The file's audio track holds no samples.")
        if not duration:
            duration = total_samples / SAMPLE_RATE
        self._durations[job_id] = duration

        await self._set_stage(job_id, "detecting_speech", EXTRACT_SHARE)
        _job_log(job, "detecting_speech", "audio extracted", running_s=_since(job.started_at))
        await progress.flush()
        # Made while the windows are decoded, from the PCM that is deleted once done. Jobs
        # made through another front door ("via": the OpenAI routes) are never shown in
        # the page: their caller takes the text and they go.
        shown = not (job.options or {}).get("via")
        aids = asyncio.create_task(self._playback_aids(job, pcm) if shown else asyncio.sleep(0), name=f"playback-{job_id}")
        try:
            segments, language, windows = await self._transcribe(job, options, pcm, total_samples, progress)
            await aids
        finally:
            if not aids.done():
                aids.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await aids

        await self.store.update_job(job_id, stage="finalizing")
        language = options.language or language or ("en" if not self.multilingual else None)
        transcript = transcript_to_dict(segments, language=language, duration_s=duration, scores=True)
        await anyio.to_thread.run_sync(atomic_write_json, self.files.transcript_path(job_id), transcript)
        await self.files.push(job_id, self.files.transcript_path(job_id))
        await self._finish(job_id, "done", language=language, segments=len(segments), windows=windows)
        # The transcript holds the windows now; the PCM can be made again from the input.
        pcm.unlink(missing_ok=True)
        await self.store.clear_windows(job_id)

    async def _playback_aids(self, job: JobRecord, pcm: Path) -> None:
        try:
            await self.playback.prepare(job, pcm)
        except Exception as exc:
            # Advisory: the page then plays nothing or draws no waveform; the job goes on.
            log.warning("job %s: waveform or playable copy not made: %s", job.id, exc)

    async def _transcribe(
        self,
        job: JobRecord,
        options: JobOptions,
        pcm: Path,
        total_samples: int,
        progress: _Progress,
    ) -> tuple[list[Segment], str | None, int]:
        """Decode the job's windows as the VAD finds them; announce and save them in order.

        Independent windows (see app.pipeline.chains) are all submitted at once, so the
        batcher can put several of one job's windows in a batch; windows joined
        by a cut wait for the one before. A resumed job replays its saved
        pieces and goes on after the last one.
        """
        job_id = job.id
        decode = options.decode_options(multilingual=self.multilingual, defaults=self.decoding)
        conditioned = options.conditioned(self.decoding)
        segments: list[Segment] = []
        languages: defaultdict[str, float] = defaultdict(float)  # language -> audio seconds
        resume = ResumePoint()
        saved = await self.store.load_windows(job_id)
        if saved and not all("next" in p for p in saved.values()):
            saved = {}  # saved by an older version that did not record where to go on
            await self.store.clear_windows(job_id)
        seq = 0
        while seq in saved:
            stored = saved[seq]
            segments.extend(segment_from_dict(s) for s in stored["segments"])
            if stored.get("language"):
                languages[stored["language"]] += stored.get("seconds", 0.0)
            resume = ResumePoint.after(stored)
            seq += 1
        if seq:
            await self._announce_missing(job_id, [d for i in range(seq) for d in saved[i]["segments"]])
        base = EXTRACT_SHARE
        counter = itertools.count(seq)
        # Media that fits one window may be encoded trimmed (see WindowRequest.short_media).
        short_media = total_samples <= SHORT_MEDIA_S * SAMPLE_RATE

        async def decode_one(start: int, stop: int, cut: bool, previous: tuple[int, ...]) -> WindowResult:
            request = WindowRequest(
                owner=job.owner,
                job_id=job_id,
                index=next(counter),
                offset=start / SAMPLE_RATE,
                audio=AudioRef(str(pcm), start, stop - start),
                options=decode,
                ends_in_speech=cut,
                previous_tokens=previous,
                short_media=short_media,
            )
            return await self.engine.transcribe(request)

        chains: asyncio.Queue[Chain | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        submitted = _Submitted(samples=resume.next, last_result=time.monotonic())

        async def plan(tg: asyncio.TaskGroup) -> None:
            spans: asyncio.Queue[WindowSpan | None] = asyncio.Queue()
            stop = threading.Event()

            def scan() -> None:
                # In a worker thread: windows reach the loop as each VAD block is done.
                try:
                    for span in iter_windows(pcm, vad=options.vad, gate=lambda: self._vad_gate):
                        if stop.is_set():
                            return
                        loop.call_soon_threadsafe(spans.put_nowait, span)
                finally:
                    loop.call_soon_threadsafe(spans.put_nowait, None)

            scanner = tg.create_task(
                anyio.to_thread.run_sync(scan, limiter=self._vad_scans, abandon_on_cancel=True)
            )
            chain: Chain | None = None
            first = True
            try:
                while (span := await spans.get()) is not None:
                    start_at = None
                    if first:
                        todo, start_at = resume.remaining(span)
                        if not todo:
                            continue
                        first = False
                        await self._set_stage(job_id, "transcribing", base + (1 - base) * resume.next / total_samples)
                        _job_log(job, "transcribing", "first window queued", running_s=_since(job.started_at))
                    if chain is None:
                        chain = Chain(decode_one, conditioned, carry=start_at)
                        tg.create_task(chain.run())
                        chains.put_nowait(chain)
                    chain.add(span)
                    submitted.samples = max(submitted.samples, span.end_sample)
                    if not (span.ends_in_speech or conditioned):
                        chain.close()
                        chain = None
                if chain is not None:
                    chain.close()
                if first:  # nothing to decode (silence, or all of it was saved)
                    await self._set_stage(job_id, "transcribing", base + (1 - base) * resume.next / total_samples)
                await scanner
            finally:
                stop.set()
                chains.put_nowait(None)

        previous_end = segments[-1].end if segments else 0.0
        self._done[job_id] = resume.next / SAMPLE_RATE
        self._transcribing[job_id] = submitted
        self.rates.busy()
        ticker = asyncio.create_task(self._tick(job_id, total_samples, base, progress), name=f"progress-{job_id}")
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(plan(tg))
                while (chain := await chains.get()) is not None:
                    async for piece in chain.pieces():
                        window = piece.result
                        seconds = (piece.next - piece.start) / SAMPLE_RATE
                        first_id = len(segments)
                        # Times never go back across windows, whatever the model wrote.
                        kept = _monotonic(window.segments, previous_end)
                        if kept:
                            previous_end = kept[-1].end
                        segments.extend(kept)
                        if window.language:
                            languages[window.language] += seconds
                        dicts = [segment_to_dict(s, first_id + k) for k, s in enumerate(kept)]
                        await self.store.save_window(
                            job_id,
                            seq,
                            {
                                "language": window.language,
                                "seconds": seconds,
                                "segments": dicts,
                                "start": piece.start,
                                "stop": piece.stop,
                                "next": piece.next,
                                "carry": piece.carry,
                            },
                        )
                        seq += 1
                        for d in dicts:
                            await self.hub.publish(job_id, "segment", d)
                        self.audio_seconds_done += seconds
                        self._recent.append((time.monotonic(), seconds))
                        self.rates.add(seconds)
                        self._done[job_id] = piece.next / SAMPLE_RATE
                        submitted.last_result = time.monotonic()
                        progress.report("transcribing", base + (1 - base) * min(1.0, piece.next / total_samples))
        except BaseExceptionGroup as group:
            # One window failed: the job fails with that window's error, not a group of them.
            first = next((e for e in group.exceptions if not isinstance(e, asyncio.CancelledError)), group.exceptions[0])
            raise first from None
        finally:
            ticker.cancel()
            self._transcribing.pop(job_id, None)
            if not self._transcribing:
                self.rates.idle()
        await progress.flush()
        language = max(languages, key=languages.__getitem__) if languages else None
        return segments, language, seq

    async def _tick(self, job_id: str, total_samples: int, base: float, progress: _Progress) -> None:
        """Move the bar at the job's share of the measured rate between results, up to the audio handed out."""
        while True:
            await asyncio.sleep(TICK_S)
            fraction = min(self._position(job_id) * SAMPLE_RATE / total_samples, 0.99)
            progress.report("transcribing", base + (1 - base) * fraction)

    async def _announce_missing(self, job_id: str, stored: list[dict[str, Any]]) -> None:
        """Announce the stored windows' segments that never made it to the event log.

        A window is saved before its segments are announced; a process that died
        in between (kill -9, a lost node) left some unannounced, and a client
        following the job must still see every segment once.
        """
        seen: set[int] = set()
        after = 0
        while batch := await self.store.events_after(job_id, after):
            seen.update(int(e.data["id"]) for e in batch if e.type == "segment" and "id" in e.data)
            after = batch[-1].seq
        for d in stored:
            if int(d["id"]) not in seen:
                await self.hub.publish(job_id, "segment", d)

    # ---- state changes -----------------------------------------------------

    async def _set_stage(self, job_id: str, stage: str, progress: float) -> None:
        progress = max(progress, self._progress_floor.get(job_id, 0.0))
        await self.store.update_job(job_id, stage=stage, progress=progress)
        await self.hub.publish(job_id, "progress", {"stage": stage, "progress": round(progress, 4), "eta_seconds": self.eta_seconds(job_id)})

    async def _finish(
        self,
        job_id: str,
        status: str,
        *,
        error: tuple[str, str] | None = None,
        language: str | None = None,
        segments: int | None = None,
        windows: int | None = None,
    ) -> None:
        fields: dict[str, Any] = {"status": status, "stage": status, "finished_at": time.time()}
        if status == "done":
            fields["progress"] = 1.0
            fields["language"] = language
        if error is not None:
            fields["error_code"], fields["error_message"] = error
        job = await self.store.update_job(job_id, **fields)
        _job_log(
            job, status, status,
            duration_s=job.duration_s, language=job.language, segments=segments,
            **({"windows": windows} if windows is not None else {}),
            queued_s=_since(job.created_at, job.started_at), run_s=_since(job.started_at, job.finished_at),
            total_s=_since(job.created_at, job.finished_at),
            **({"error_code": error[0], "error_message": error[1]} if error else {}),
        )
        data: dict[str, Any] = {"status": status}
        if error is not None:
            data["error"] = {"code": error[0], "message": error[1]}
        if status == "done":
            data.update(language=language, segments=segments)
        await self.hub.publish(job_id, status, data)


def _since(start: float | None, end: float | None = None) -> float | None:
    """Seconds from ``start`` to ``end`` (default now), for log fields."""
    if start is None:
        return None
    return round((end if end is not None else time.time()) - start, 3)


def _job_log(job: JobRecord, stage: str, message: str, **fields: Any) -> None:
    """One INFO line per job state change: id, owner, stage and timings as fields."""
    log.info("job %s %s", job.id, message, extra={"job": job.id, "owner": job.owner, "stage": stage, **fields})


def _monotonic(segments: tuple[Segment, ...], floor: float) -> list[Segment]:
    """Segments whose times do not go back before ``floor`` or before each other."""
    out = []
    for seg in segments:
        start = max(seg.start, floor)
        end = max(seg.end, start)
        out.append(seg if (start, end) == (seg.start, seg.end) else dataclasses.replace(seg, start=start, end=end))
        floor = start
    return out



@dataclass
class _Submitted:
    """How far a job's windows are handed to the batcher, and when its last result came."""

    samples: int
    last_result: float


class _Progress:
    """Throttled progress for one job: at most one write in flight, the latest value wins.

    ``report`` is cheap and synchronous, so ffmpeg's progress callback can call
    it; one owned flusher task commits and announces the newest value.
    """

    def __init__(self, manager: JobManager, job_id: str, start: float) -> None:
        self._manager = manager
        self._job_id = job_id
        self._sent = start
        self._latest: tuple[str, float] | None = None
        self._task: asyncio.Task[None] | None = None

    def report(self, stage: str, value: float) -> None:
        if value - self._sent < PROGRESS_STEP and value < 1.0:
            return
        self._latest = (stage, value)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        while self._latest is not None:
            stage, value = self._latest
            self._latest = None
            self._sent = value
            try:
                await self._manager._set_stage(self._job_id, stage, value)
            except Exception as exc:
                # Progress is advisory: a failed write (say, a full disk) must not
                # fail the job; the stage's own outcome is what gets recorded.
                log.warning("job %s: progress not recorded: %s", self._job_id, exc)

    async def flush(self) -> None:
        if self._task is not None:
            await self._task

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
