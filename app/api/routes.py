"""HTTP routes of the v1 job API."""

from __future__ import annotations

import contextlib
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Mapping
from urllib.parse import quote

import anyio
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.api import jsonbody, ranges
from app.api.errors import ApiError, not_found
from app.pipeline.events import EXPORT_FINAL_EVENTS, FINAL_EVENTS, CaughtUp, Heartbeat, Shutdown, format_sse, format_sse_unnumbered
from app.media.cuerules import PRESET_KEY, CueRules, RuleError, cue_segments, parse_overrides, resolve
from app.media.formats import FORMATS, SegmentError, to_subtitles, to_txt, transcript_to_dict, validate_segments
from app.media.render import ASS_FORMAT, ExportStyle, build_ass
from app.pipeline.jobs import segment_from_dict
from app.api.jsonbody import read_json_body
from app.media.probe import check_media
from app.pipeline.options import JobOptions
from app.api.state import AppState, owner_of
from app.api.uploads import receive_upload
from storage.files import atomic_write_bytes, safe_filename
from storage.states import ACTIVE, FINAL, Stage, Status
from storage.store import ExportRecord, InvalidCursor, JobRecord, KeyExists

SSE_RETRY_MS = 3000


def new_id() -> str:
    # 128 random bits, URL-safe: ids cannot be guessed or enumerated.
    return secrets.token_urlsafe(16)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def export_json(export: ExportRecord) -> dict[str, Any]:
    return {
        "id": export.id,
        "status": export.status,
        "progress": round(export.progress, 4),
        "options": export.options,
        "error": {"code": export.error_code, "message": export.error_message} if export.error_code else None,
        "created_at": iso(export.created_at),
        "finished_at": iso(export.finished_at),
        "size_bytes": export.size_bytes,
        "links": {
            "self": f"/v1/jobs/{export.job_id}/exports/{export.id}",
            "file": f"/v1/jobs/{export.job_id}/exports/{export.id}/file",
        },
    }


def state_of(request: Request) -> AppState:
    return request.app.state.altyazi  # type: ignore[no-any-return]


async def job_json(state: AppState, job: JobRecord, *, request: Request | None = None) -> dict[str, Any]:
    exports = await state.store.list_exports(job.id)
    return {
        "id": job.id,
        "status": job.status,
        "stage": job.stage,
        "progress": round(job.progress, 4),
        "queue_position": state.manager.queue_position(job.id) if job.status == Status.QUEUED else None,
        "eta_seconds": state.manager.eta_seconds(job.id) if job.status in ACTIVE else None,
        "filename": job.filename,
        "duration_s": job.duration_s,
        "language": job.language,
        "options": job.options,
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "exports": [export_json(e) for e in exports],
        "links": {
            "self": f"/v1/jobs/{job.id}",
            "events": f"/v1/jobs/{job.id}/events",
            "transcript": f"/v1/jobs/{job.id}/transcript",
            "waveform": f"/v1/jobs/{job.id}/waveform",
            "media_link": f"/v1/jobs/{job.id}/media/link",
        },
    }


async def load_job(request: Request) -> JobRecord:
    state = state_of(request)
    job = await state.store.get_job(request.path_params["job_id"], owner=owner_of(request))
    if job is None:
        raise not_found("job")
    return job


# ---- POST /v1/jobs -----------------------------------------------------------


async def create_job(request: Request) -> Response:
    job = await accept_upload(request, JobOptions.parse)
    body = await job_json(state_of(request), job)
    return JSONResponse(body, status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})


async def accept_upload(
    request: Request,
    parse_options: Callable[[dict[str, str]], JobOptions],
    *,
    tags: dict[str, Any] | None = None,
) -> JobRecord:
    """Upload to disk, probe, record and start a job; shared with app.api.openai_routes.

    ``parse_options`` turns the query and form fields into options; ``tags``
    are stored beside them in ``job.options`` (the OpenAI routes mark their jobs).
    """
    state = state_of(request)
    owner = owner_of(request)
    state.check_accepting()
    # A client that repeats an upload (a retry after a lost answer) with the same
    # key gets the job of the first one, on any node.
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is not None:
        if not 1 <= len(idempotency_key) <= 255 or not idempotency_key.isprintable():
            raise ApiError(422, "invalid_parameter", "Idempotency-Key must be 1 to 255 printable characters.", extra={"field": "Idempotency-Key"})
        existing = await state.store.job_for_idempotency_key(owner, idempotency_key)
        if existing is not None:
            return existing
    query = dict(request.query_params)
    parse_options({k: v for k, v in query.items() if k != "filename"})  # fail fast on bad query options, before reading the body
    declared = int(request.headers.get("content-length", "0") or 0) if request.headers.get("content-length", "").isdigit() else 0
    state.check_disk(declared)
    slot = await state.reserve_slot(owner)  # held from here, so concurrent uploads count each other

    job_id = new_id()
    committed = False
    state.uploads_in_flight += 1
    lane = state.ingest.lane(request.headers.get("content-length"))
    try:
        # Folder and file metadata calls in a thread: while other uploads flush
        # gigabytes, one mkdir or rename can wait on the filesystem's journal.
        job_dir = await anyio.to_thread.run_sync(state.files.create, job_id)
        upload = await receive_upload(
            request,
            job_dir / "upload.partial",
            max_bytes=state.max_upload_bytes(owner),
            query_filename=query.get("filename"),
            min_free_bytes=int(state.cfg.storage.min_free_mb * 1024 * 1024),
            lane=lane,
        )
        raw_options = {k: v for k, v in query.items() if k != "filename"}
        raw_options.update(upload.fields)
        options = parse_options(raw_options).with_words_for(state.cfg.subtitles.rules())
        state.check_model_supports(options)
        if upload.size == 0:
            raise ApiError(400, "empty_file", "The uploaded file is empty (0 bytes).")
        filename = safe_filename(upload.filename or "upload")
        source = state.files.input_path(job_id, Path(filename).suffix)
        await anyio.to_thread.run_sync(upload.path.replace, source)
        info = await state.pool.probe(source)
        check_media(info, max_duration_s=state.cfg.storage.max_duration_s)
        # Durable where every node can read it before the row exists (a no-op on one box).
        await state.files.push(job_id, source)
        now = time.time()
        job = JobRecord(
            id=job_id,
            owner=owner,
            status=Status.QUEUED,
            stage=Stage.QUEUED,
            progress=0.0,
            filename=filename,
            options={**options.to_dict(), **(tags or {})},
            created_at=now,
            updated_at=now,
            duration_s=info.duration_s,
            media=info_dict(info),
        )
        async with state.count_lock(owner):
            try:
                await state.store.create_job(job, idempotency_key=idempotency_key)
            except KeyExists:
                # the same key's first upload won meanwhile (perhaps on another node)
                first = await state.store.job_for_idempotency_key(owner, idempotency_key or "")
                if first is None:
                    raise
                return first
            committed = True
            await state.hub.publish(job_id, "status", {"status": Status.QUEUED, "stage": Stage.QUEUED})
            slot.release()  # in one step with the spawn: counted as a task from now on
            state.manager.spawn(job)
    finally:
        lane.close()
        slot.release()
        state.uploads_in_flight -= 1
        if not committed:
            await anyio.to_thread.run_sync(state.files.remove, job_id)
    return job


def info_dict(info: Any) -> dict[str, Any]:
    return {k: getattr(info, k) for k in info.__dataclass_fields__}


# ---- GET /v1/jobs, GET/DELETE /v1/jobs/{id} ------------------------------------


async def list_jobs(request: Request) -> Response:
    state = state_of(request)
    try:
        limit = int(request.query_params.get("limit", "50"))
    except ValueError:
        raise ApiError(422, "invalid_parameter", "limit must be an integer from 1 to 200.", extra={"field": "limit"}) from None
    if not 1 <= limit <= 200:
        raise ApiError(422, "invalid_parameter", "limit must be an integer from 1 to 200.", extra={"field": "limit"})
    cursor = request.query_params.get("cursor") or None
    try:
        jobs = await state.store.list_jobs(owner_of(request), limit=limit + 1, before=cursor)
    except InvalidCursor:
        raise ApiError(422, "invalid_parameter", "cursor is not a job of this listing; start again without it.", extra={"field": "cursor"}) from None
    more = len(jobs) > limit
    jobs = jobs[:limit]
    return JSONResponse(
        {
            "jobs": [await job_json(state, j) for j in jobs],
            "next_cursor": jobs[-1].id if more and jobs else None,
        }
    )


async def get_job(request: Request) -> Response:
    job = await load_job(request)
    return JSONResponse(await job_json(state_of(request), job))


async def delete_job(request: Request) -> Response:
    state = state_of(request)
    job = await load_job(request)
    await state.delete_job(job)
    return Response(status_code=204)


# ---- GET /v1/jobs/{id}/events ------------------------------------------------------


async def job_events(request: Request) -> Response:
    state = state_of(request)
    job = await load_job(request)
    if request.method == "HEAD":
        # The headers a GET would get, and no stream: a HEAD must not hold one open.
        return Response(media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    raw_last = request.headers.get("last-event-id") or request.query_params.get("last_event_id") or "0"
    try:
        # Clamped: SQLite integers are 64-bit, and a 400-digit id failed the stream.
        after = min(max(0, int(raw_last)), 2**62)
    except ValueError:
        after = 0
    heartbeat = state.cfg.server.sse_heartbeat_s

    def over(job_finished: bool) -> bool:
        return job_finished and state.exports.active_for(job.id) == 0

    async def body() -> AsyncIterator[str]:
        yield f"retry: {SSE_RETRY_MS}\n\n"
        state.sse_streams += 1
        finished = job.status in FINAL
        caught_up = False
        events = state.hub.stream(job.id, after, heartbeat_s=heartbeat)
        try:
            async for item in events:
                if isinstance(item, Heartbeat):
                    yield ": heartbeat\n\n"
                    continue
                if isinstance(item, Shutdown):
                    current = await state.store.get_job(job.id)
                    yield format_sse_unnumbered(
                        "status",
                        {
                            "status": current.status if current else job.status,
                            "stage": current.stage if current else job.stage,
                            "reconnect": True,
                            "reason": "The server is restarting; reconnect with Last-Event-ID to resume.",
                        },
                    )
                    return
                if isinstance(item, CaughtUp):
                    caught_up = True
                    if over(finished):
                        return
                    continue
                yield format_sse(item)
                if item.type in ("failed", "cancelled"):
                    return
                if item.type == "done":
                    finished = True
                if caught_up and item.type in FINAL_EVENTS | EXPORT_FINAL_EVENTS and over(finished):
                    return
        finally:
            state.sse_streams -= 1
            await events.aclose()  # unsubscribes now, not when the generator is collected

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# ---- transcripts -------------------------------------------------------------------


def subtitle_rules(state: AppState, job: JobRecord, query: Mapping[str, str]) -> CueRules:
    """The server's rules, then the job's, then the download's ``?preset=`` and rule parameters."""
    try:
        download = parse_overrides(query, preset_names=("preset", PRESET_KEY))
        return resolve(JobOptions.from_dict(job.options).subtitle_rules(state.cfg.subtitles.rules()), download)
    except RuleError as exc:
        raise ApiError(422, "invalid_parameter", exc.message + ".", extra={"field": exc.field}) from None


# What GET .../transcript?format= offers: the plain formats and the karaoke ASS.
DOWNLOAD_FORMATS = {**FORMATS, "ass": ASS_FORMAT}


async def read_transcript(state: AppState, job: JobRecord, version: str) -> dict[str, Any]:
    if job.status != Status.DONE:
        raise ApiError(
            409,
            "not_ready",
            f"The transcript is not ready: the job is {job.status}." + (" Follow /events to know when it is done." if job.status in ACTIVE else ""),
        )
    edited = state.files.edited_path(job.id)
    path = state.files.transcript_path(job.id)
    await state.files.pull(job.id, edited)  # another node's work, in a cluster
    await state.files.pull(job.id, path)
    if version == "edited" and not edited.exists():
        raise ApiError(404, "no_edited_transcript", "This transcript has not been edited; ask for version=original.")
    if version in ("latest", "edited") and edited.exists():
        path = edited

    def load() -> dict[str, Any]:
        return jsonbody.loads(path.read_text("utf-8"))  # type: ignore[no-any-return]

    try:
        with state.files.pin(job.id):
            return await anyio.to_thread.run_sync(load)  # megabytes of JSON: off the loop
    except FileNotFoundError:
        raise not_found("job") from None  # deleted while we read it


async def get_transcript(request: Request) -> Response:
    state = state_of(request)
    job = await load_job(request)
    fmt = request.query_params.get("format", "json").lower()
    if fmt not in DOWNLOAD_FORMATS:
        raise ApiError(422, "invalid_parameter", f"format must be one of {', '.join(DOWNLOAD_FORMATS)}.", extra={"field": "format"})
    version = request.query_params.get("version", "latest").lower()
    if version not in ("latest", "edited", "original"):
        raise ApiError(422, "invalid_parameter", "version must be latest, edited or original.", extra={"field": "version"})
    rules = subtitle_rules(state, job, request.query_params)
    data = await read_transcript(state, job, version)

    def render() -> bytes:
        segments = [segment_from_dict(s) for s in data.get("segments", [])]
        if fmt == "json":
            # to_json's text, encoded a segment at a time (app/api/jsonbody.py says why)
            return jsonbody.dumps(transcript_to_dict(segments, language=data.get("language"), duration_s=data.get("duration_s")), compact=False)
        if fmt == "txt":
            return to_txt(segments).encode("utf-8")
        if fmt == "ass":
            media = job.media or {}
            return build_ass(segments, ExportStyle(), width=media.get("width"), height=media.get("height"), rules=rules, karaoke=True).encode("utf-8")
        return to_subtitles(cue_segments(segments, rules), "srt" if fmt == "srt" else "vtt").encode("utf-8")

    body = await anyio.to_thread.run_sync(render)
    media_type = DOWNLOAD_FORMATS[fmt][0]
    stem = Path(job.filename).stem or "transcript"
    name = f"{stem}.{fmt}"
    return Response(
        body,
        media_type=media_type,
        headers={"Content-Disposition": f"inline; filename=\"{ascii_name(name)}\"; filename*=UTF-8''{quote(name)}"},
    )


def ascii_name(name: str) -> str:
    cleaned = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    return cleaned or "download"


def segment_error(exc: SegmentError) -> ApiError:
    """A validation failure as the API's 422; ``index`` is 0-based, the message counts from 1."""
    extra: dict[str, object] = {}
    if exc.index is not None:
        extra["index"] = exc.index
    if exc.field is not None:
        extra["field"] = exc.field
    return ApiError(422, "invalid_segment", exc.message, extra=extra)


def write_edited(state: AppState, job: JobRecord, raw: object, language: str | None) -> dict[str, Any]:
    """Validate ``raw`` segments with the rules of PUT and store them as the edited transcript.

    Blocking (validation and the write): run it in a worker thread.
    """
    try:
        segments = validate_segments(raw, duration_s=job.duration_s)
    except SegmentError as exc:
        raise segment_error(exc) from None
    transcript = transcript_to_dict(segments, language=language, duration_s=job.duration_s)
    transcript["edited_at"] = iso(time.time())
    try:
        atomic_write_bytes(state.files.edited_path(job.id), jsonbody.dumps(transcript))
    except FileNotFoundError:
        raise not_found("job") from None  # deleted while we validated
    return transcript


def require_done(job: JobRecord) -> None:
    if job.status != Status.DONE:
        raise ApiError(409, "not_ready", f"The transcript can be edited once the job is done; it is {job.status}.")


async def put_transcript(request: Request) -> Response:
    state = state_of(request)
    job = await load_job(request)
    require_done(job)
    raw = await read_json_body(request, limit=int(state.cfg.limits.max_transcript_mb * 1024 * 1024))
    language = raw.get("language") if isinstance(raw, dict) and isinstance(raw.get("language"), str) else job.language

    def validate_and_write() -> bytes:
        # Validating, writing and encoding megabytes of segments: all of it off the loop.
        return jsonbody.dumps(write_edited(state, job, raw, language))

    async with edit_lock(job.id):
        body = await anyio.to_thread.run_sync(validate_and_write)
        await state.files.push(job.id, state.files.edited_path(job.id))
    return Response(body, media_type="application/json")


PATCH_FIELDS = ("start", "end", "text")
# One lock per job being edited, so two PATCHes of different segments both land.
_edit_locks: dict[str, anyio.Lock] = {}


@contextlib.asynccontextmanager
async def edit_lock(job_id: str) -> AsyncIterator[None]:
    lock = _edit_locks.setdefault(job_id, anyio.Lock())
    try:
        async with lock:
            yield
    finally:
        if not lock.locked() and lock.statistics().tasks_waiting == 0:
            _edit_locks.pop(job_id, None)


def patched_segments(segments: list[dict[str, Any]], index: int, changes: dict[str, Any]) -> list[dict[str, Any]]:
    """The stored segments with one changed, in the shape PUT takes.

    A new text drops the segment's word timings (they timed the old words); new
    times keep the words that still lie inside them.
    """
    kept: tuple[str, ...] = ("start", "end", "text", "words")
    out: list[dict[str, Any]] = [{k: s[k] for k in kept if k in s} for s in segments]
    seg = out[index]
    old_text = seg.get("text")
    seg.update(changes)
    words = seg.get("words")
    if words is not None and "text" in changes and changes["text"] != old_text:
        seg.pop("words")
    elif words is not None and ("start" in changes or "end" in changes):
        start, end = seg["start"], seg["end"]
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (start, end)):
            seg["words"] = [w for w in words if w["start"] >= start and w["end"] <= end]
    return out


async def patch_segment(request: Request) -> Response:
    """Change one segment's text or times; the whole transcript is checked as PUT checks it."""
    state = state_of(request)
    job = await load_job(request)
    require_done(job)
    raw_index = request.path_params["index"]
    if not raw_index.isdigit() or len(raw_index) > 9:
        raise ApiError(422, "invalid_parameter", "The segment is named by its id, a whole number from 0 (the \"id\" of the JSON).", extra={"field": "index"})
    index = int(raw_index)
    changes = await read_json_body(request, limit=64 * 1024)
    if not isinstance(changes, dict) or not changes:
        raise ApiError(422, "invalid_segment", 'Send an object with one or more of "start", "end" and "text".')
    unknown = sorted(str(k) for k in changes if k not in PATCH_FIELDS)
    if unknown:
        raise ApiError(
            422, "invalid_segment",
            f'unknown key "{unknown[0]}": a PATCH changes "start", "end" or "text"; use PUT for the rest.',
            extra={"index": index, "field": unknown[0]},
        )
    async with edit_lock(job.id):
        data = await read_transcript(state, job, "latest")
        stored = data.get("segments") or []
        if index >= len(stored):
            raise ApiError(
                404, "no_such_segment",
                f"There is no segment with id {index}: this transcript has {len(stored)} (ids 0 to {len(stored) - 1}).",
            )
        segments = patched_segments(stored, index, changes)
        transcript = await anyio.to_thread.run_sync(write_edited, state, job, segments, data.get("language"))
    return JSONResponse({"segment": transcript["segments"][index], "edited_at": transcript["edited_at"]})


# ---- exports ---------------------------------------------------------------------------


async def create_export(request: Request) -> Response:
    state = state_of(request)
    state.check_accepting()
    job = await load_job(request)
    raw = await read_json_body(request, limit=64 * 1024)
    options = state.exports.parse(raw)
    try:
        record = await state.exports.create(job, options, new_id())
    except KeyError:
        raise not_found("job") from None  # deleted while the body arrived
    return JSONResponse(export_json(record), status_code=202, headers={"Location": f"/v1/jobs/{job.id}/exports/{record.id}"})


async def load_export(request: Request) -> tuple[JobRecord, ExportRecord]:
    state = state_of(request)
    job = await load_job(request)
    export = await state.store.get_export(request.path_params["export_id"], job_id=job.id)
    if export is None:
        raise not_found("export")
    return job, export


async def get_export(request: Request) -> Response:
    _, export = await load_export(request)
    return JSONResponse(export_json(export))


async def delete_export(request: Request) -> Response:
    state = state_of(request)
    job, export = await load_export(request)
    await state.exports.cancel(export.id)
    await state.store.delete_export(export.id)
    container = str(export.options.get("container", "mp4"))
    path = state.files.export_path(job.id, export.id, container)
    await anyio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))
    return Response(status_code=204)


CONTAINER_TYPES = {"mp4": "video/mp4", "mkv": "video/x-matroska", "webm": "video/webm"}
AUDIO_TYPES = {"mp4": "audio/mp4", "mkv": "audio/x-matroska", "webm": "audio/webm"}


async def get_export_file(request: Request) -> Response:
    state = state_of(request)
    job, export = await load_export(request)
    if export.status != Status.DONE:
        raise ApiError(409, "not_ready", f"The export is {export.status}; download it once it is done.")
    container = str(export.options.get("container", "mp4"))
    path = state.files.export_path(job.id, export.id, container)
    has_video = bool((job.media or {}).get("has_video"))
    media_type = (CONTAINER_TYPES if has_video else AUDIO_TYPES)[container]
    name = export.filename or f"export.{container}"
    disposition = {"Content-Disposition": f"attachment; filename=\"{ascii_name(name)}\"; filename*=UTF-8''{quote(name)}"}
    size = await state.files.remote_size(job.id, path)
    if size is not None:  # made on another node of a cluster: straight from the bucket
        return remote_file_response(request, state, job.id, path, size, media_type, disposition)
    if not path.exists():
        raise ApiError(404, "export_file_missing", "The exported file is gone (deleted by retention?); export again.")
    return PinnedFileResponse(path, pin=lambda: state.files.pin(job.id), media_type=media_type, headers=disposition)


def remote_file_response(request: Request, state: AppState, job_id: str, path: Path, size: int, media_type: str, headers: dict[str, str]) -> Response:
    """A download streamed from shared storage, with the one Range that RangeGuard let through."""
    try:
        span = ranges.resolve(request.headers.get("range"), size)
    except ranges.RangeError as exc:
        raise ApiError(416, "range_not_satisfiable", f"The Range header cannot be served: {exc}.", headers={"Content-Range": f"bytes */{size}"}) from None
    first, last = span or (0, size - 1)
    headers = {**headers, "Accept-Ranges": "bytes", "Content-Length": str(last - first + 1)}
    if span is not None:
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    body = state.files.read_stream(job_id, path, first, last) if size else _empty()
    return StreamingResponse(body, status_code=206 if span is not None else 200, media_type=media_type, headers=headers)


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""


class PinnedFileResponse(FileResponse):
    """A file download that holds a pin, so retention never deletes it under the reader."""

    def __init__(self, path: Path, *, pin: Any, **kw: Any) -> None:
        super().__init__(path, **kw)
        self._pin = pin

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        with self._pin():
            await super().__call__(scope, receive, send)


routes = [
    Route("/v1/jobs", create_job, methods=["POST"]),
    Route("/v1/jobs", list_jobs, methods=["GET"]),
    Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/v1/jobs/{job_id}", delete_job, methods=["DELETE"]),
    Route("/v1/jobs/{job_id}/events", job_events, methods=["GET"]),
    Route("/v1/jobs/{job_id}/transcript", get_transcript, methods=["GET"]),
    Route("/v1/jobs/{job_id}/transcript", put_transcript, methods=["PUT"]),
    Route("/v1/jobs/{job_id}/transcript/segments/{index}", patch_segment, methods=["PATCH"]),
    Route("/v1/jobs/{job_id}/exports", create_export, methods=["POST"]),
    Route("/v1/jobs/{job_id}/exports/{export_id}", get_export, methods=["GET"]),
    Route("/v1/jobs/{job_id}/exports/{export_id}", delete_export, methods=["DELETE"]),
    Route("/v1/jobs/{job_id}/exports/{export_id}/file", get_export_file, methods=["GET"]),
]
