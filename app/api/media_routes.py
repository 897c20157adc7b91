"""The page's player and waveform: a job's media with Range, its signed link, its peaks.

``GET /v1/jobs/{id}/media`` takes the key like every route, or instead a
``token`` from ``GET /v1/jobs/{id}/media/link`` (see app/api/media_tokens.py),
since a ``<video>`` element cannot send a header. Either way another owner's job
is a 404, as everywhere.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.api.errors import ApiError, not_found
from app.api.routes import PinnedFileResponse, iso, load_job, state_of
from app.api.state import AppState
from app.media.ffmpeg import FfmpegError
from app.media.playback import media_type_for
from storage.states import Status
from storage.store import JobRecord

log = logging.getLogger("altyazi.media")


def _has_video(job: JobRecord, plan: str) -> bool:
    return plan != "audio" and bool((job.media or {}).get("has_video")) and not (job.media or {}).get("is_image")


async def media_link(request: Request) -> Response:
    state = state_of(request)
    job = await load_job(request)
    token, expires = state.media_tokens.issue(job.id, job.owner)
    plan = state.manager.playback.plan(job)
    source = state.manager.playback.source(job)
    return JSONResponse(
        {
            "url": f"/v1/jobs/{job.id}/media?token={token}",
            "expires_at": iso(expires),
            "kind": "video" if _has_video(job, plan) else "audio",
            "copy": plan != "input",
            # A finished job's copy is made on the first request if it is missing.
            "ready": source is not None or (job.status not in (Status.QUEUED, Status.RUNNING) and state.files.find_input(job.id) is not None),
        },
        headers={"Cache-Control": "no-store"},
    )


async def _job_for_media(request: Request) -> JobRecord:
    state = state_of(request)
    token = request.query_params.get("token")
    if token is None:
        return await load_job(request)
    job = await state.store.get_job(request.path_params["job_id"])
    # Same answer for an unknown job and a token that does not open it: ids stay unguessable.
    if job is None or not state.media_tokens.check(token, job.id, job.owner):
        raise ApiError(
            404, "not_found",
            "No job with this id, or the media link has expired; reopen the job in the page for a new one.",
        )
    return job


async def prepare(state: AppState, job: JobRecord) -> None:
    """Make a finished job's waveform and playable copy now; ffmpeg's refusal is the API's error."""
    try:
        await state.manager.playback.prepare(job)
    except (FfmpegError, OSError) as exc:
        # ffmpeg cannot read it, or the job was deleted meanwhile.
        log.warning("job %s: waveform or playable copy not made: %s", job.id, getattr(exc, "message", exc))
        raise ApiError(404, "media_missing", "This job's media could not be read back for the player (deleted, or unreadable).") from None


async def get_media(request: Request) -> Response:
    state = state_of(request)
    job = await _job_for_media(request)
    source = state.manager.playback.source(job)
    if source is None and job.status not in (Status.QUEUED, Status.RUNNING):
        await prepare(state, job)  # a job finished before copies were made
        source = state.manager.playback.source(job)
    if source is None:
        if job.status in (Status.QUEUED, Status.RUNNING):
            raise ApiError(409, "not_ready", "The playable copy of this file is made while it is transcribed; try again in a moment.")
        raise ApiError(404, "media_missing", "This job's media is not kept any more (deleted by retention?).")
    plan = state.manager.playback.plan(job)
    return PinnedFileResponse(
        source,
        pin=lambda: state.files.pin(job.id),
        media_type=media_type_for(source, has_video=_has_video(job, plan)),
        headers={"Cache-Control": "private, max-age=3600", "Content-Disposition": "inline"},
    )


async def get_waveform(request: Request) -> Response:
    state = state_of(request)
    job = await load_job(request)
    if not state.files.waveform_path(job.id).exists() and job.status in (Status.QUEUED, Status.RUNNING):
        raise ApiError(409, "not_ready", "The waveform is drawn once the audio is extracted; try again in a moment.")
    if not state.files.waveform_path(job.id).exists():
        await prepare(state, job)  # a job finished before waveforms were made
    data = await state.manager.playback.waveform(job)
    if data is None:
        raise not_found("job")
    return JSONResponse(data, headers={"Cache-Control": "private, max-age=3600"})


routes = [
    Route("/v1/jobs/{job_id}/media", get_media, methods=["GET", "HEAD"]),
    Route("/v1/jobs/{job_id}/media/link", media_link, methods=["GET"]),
    Route("/v1/jobs/{job_id}/waveform", get_waveform, methods=["GET"]),
]
