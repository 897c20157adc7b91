"""OpenAI-compatible ``POST /v1/audio/transcriptions`` and ``/v1/audio/translations``.

The official ``openai`` client works against these routes. A request becomes an
ordinary job (same upload limits, probe, queue, fair batching on the one model
as ``POST /v1/jobs``); the route follows the job's event stream and answers
when it is done, or streams ``transcript.text.delta`` events as segments are
decoded when ``stream=true``.

The jobs are marked ``options.via = "openai"`` and deleted as soon as the answer
is built (or the client goes away, which cancels the job): the caller holds
the result, and nobody could find the job again anyway. Such jobs still in the
store at start are leftovers of a previous process and are dropped
(:func:`discard_orphans`) before unfinished jobs are resumed.

Errors use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``,
with altyazi's status codes and snake_case codes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Mapping

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.api.routes import accept_upload, state_of
from app.api.errors import ApiError, as_api_error
from app.media.probe import MediaError
from app.pipeline.errors import PipelineError
from app.pipeline.events import CaughtUp, Heartbeat, Shutdown
from app.media.cuerules import PRESET_KEY, CueRules, cue_segments
from app.media.formats import to_srt, to_vtt, transcript_to_dict
from app.pipeline.jobs import segment_from_dict
from app.pipeline.options import SUBTITLE_OPTIONS, JobOptions, parse_bool
from app.api.state import AppState
from storage.seams import FileStore, JobRepository
from storage.states import Status
from storage.store import EventRecord, JobRecord

log = logging.getLogger("altyazi.openai")

VIA = "openai"
RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITIES = ("segment", "word")
FIELDS = frozenset(
    {"model", "language", "prompt", "response_format", "temperature", "timestamp_granularities[]", "timestamp_granularities", "stream"}
) | frozenset(SUBTITLE_OPTIONS)  # line rules for srt/vtt answers: altyazi's own, beside OpenAI's fields
# Parameters of newer OpenAI models that mean nothing for Whisper: accepted, ignored.
IGNORED = frozenset({"chunking_strategy", "include[]", "include"})
# JobOptions' field names as the OpenAI client knows them.
PARAM_NAMES = {"initial_prompt": "prompt", "word_timestamps": "timestamp_granularities"}
# A job that failed after the upload was accepted: most failures are the media's.
FAILURE_STATUS = {"internal_error": 500, "input_missing": 500, "disk_full": 507, "too_long": 413}
STREAM_HEARTBEAT_S = 15.0


@dataclass(frozen=True)
class OpenAIRequest:
    """The OpenAI-only choices of a request; the transcription options go to JobOptions."""

    task: str
    response_format: str = "json"
    stream: bool = False
    temperature: float = 0.0
    granularities: tuple[str, ...] = ("segment",)


def param_error(param: str, message: str, status: int = 400, code: str = "invalid_parameter") -> ApiError:
    return ApiError(status, code, f"{param}: {message}", extra={"field": param})


def parse_fields(raw: Mapping[str, str], task: str) -> tuple[OpenAIRequest, JobOptions]:
    unknown = sorted(k for k in raw if k not in FIELDS and k not in IGNORED)
    if unknown:
        name = unknown[0][:60]
        raise param_error(name, f"unrecognized request argument; this server knows {', '.join(sorted(FIELDS))}", code="unknown_parameter")
    response_format = (raw.get("response_format") or "json").strip().lower()
    if response_format not in RESPONSE_FORMATS:
        raise param_error("response_format", f"{response_format[:40]!r} is not one of {', '.join(RESPONSE_FORMATS)}")
    try:
        stream = parse_bool("stream", raw.get("stream") or False)
    except PipelineError as exc:
        raise param_error("stream", "expected true or false") from exc
    try:
        temperature = float(raw.get("temperature") or 0.0)
    except ValueError:
        raise param_error("temperature", "expected a number from 0 to 1") from None
    if not 0.0 <= temperature <= 1.0:
        raise param_error("temperature", "expected a number from 0 to 1")
    # The client sends timestamp_granularities[] once per value; a form keeps the last one,
    # so a comma-separated list is accepted too.
    raw_gran = raw.get("timestamp_granularities[]") or raw.get("timestamp_granularities") or "segment"
    granularities = tuple(g.strip().lower() for g in raw_gran.split(",") if g.strip())
    for g in granularities:
        if g not in GRANULARITIES:
            raise param_error("timestamp_granularities", f"{g[:20]!r} is not segment or word")
    words = "word" in granularities
    if words and response_format != "verbose_json" and not stream:
        raise param_error("timestamp_granularities", "word timestamps need response_format=verbose_json")
    options = JobOptions.parse(
        {
            "language": raw.get("language") or None,
            "task": task,
            "word_timestamps": words,
            "initial_prompt": raw.get("prompt"),
            **_rule_fields(raw, response_format, stream),
        }
    )
    return OpenAIRequest(task, response_format, stream, temperature, granularities), options


def _rule_fields(raw: Mapping[str, str], response_format: str, stream: bool) -> dict[str, str]:
    """The line-rule fields for the job: only srt and vtt answers are cut into cues.

    The others keep the raw segments, so their jobs skip the rules, and with
    them the word timestamps the rules would have computed.
    """
    if response_format in ("srt", "vtt") and not stream:
        return {k: v for k, v in raw.items() if k in SUBTITLE_OPTIONS}
    return {PRESET_KEY: "none"}


class _Parser:
    """Given to ``accept_upload``: turns the form into JobOptions and keeps the rest."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.request: OpenAIRequest | None = None

    def __call__(self, raw: dict[str, str]) -> JobOptions:
        self.request, options = parse_fields(raw, self.task)
        return options


def openai_error(exc: ApiError) -> JSONResponse:
    field_name = exc.extra.get("field")
    param = PARAM_NAMES.get(str(field_name), field_name) if field_name is not None else None
    return JSONResponse(
        {
            "error": {
                "message": exc.message,
                "type": "invalid_request_error" if exc.status < 500 else "server_error",
                "param": param,
                "code": exc.code,
            }
        },
        status_code=exc.status,
        headers=exc.headers,
    )


# ---- following the job ------------------------------------------------------------


@dataclass
class _Outcome:
    segments: list[dict[str, Any]] = field(default_factory=list)
    final: EventRecord | None = None  # done / failed / cancelled; None: the server is stopping
    scores: dict[int, dict[str, Any]] = field(default_factory=dict)  # segment id -> the decoder's numbers


async def _events(state: AppState, job_id: str, heartbeat_s: float | None) -> AsyncIterator[EventRecord | Heartbeat | Shutdown]:
    """The job's events from the hub, without the backlog marker the job routes need."""
    events = state.hub.stream(job_id, heartbeat_s=heartbeat_s)
    try:
        async for item in events:
            if not isinstance(item, CaughtUp):
                yield item
    finally:
        await events.aclose()  # unsubscribes now, not when the generator is collected


async def _follow(state: AppState, job_id: str) -> _Outcome:
    outcome = _Outcome()
    async for item in _events(state, job_id, None):
        if isinstance(item, Shutdown):
            return outcome
        if isinstance(item, EventRecord):
            if item.type == "segment":
                outcome.segments.append(item.data)
            elif item.type in ("done", "failed", "cancelled"):
                outcome.final = item
                if item.type == "done":
                    # The stored transcript keeps what segment events leave out: the decoder's numbers.
                    await state.files.pull(job_id, state.files.transcript_path(job_id))  # made on another node, in a cluster
                    text = await anyio.to_thread.run_sync(state.files.transcript_path(job_id).read_text, "utf-8")
                    outcome.scores = {int(s["id"]): s for s in json.loads(text).get("segments", ())}
                return outcome
    return outcome


async def _until_disconnect(request: Request) -> None:
    # The body is read to the end by now, so the next message is the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _failure(outcome: _Outcome) -> ApiError | None:
    final = outcome.final
    if final is None:
        return ApiError(503, "shutting_down", "The server is restarting; send the request again in a few seconds.", headers={"Retry-After": "10"})
    if final.type == "cancelled":
        return ApiError(409, "cancelled", "The transcription was cancelled before it finished.")
    if final.type == "failed":
        error = final.data.get("error") or {}
        code = str(error.get("code") or "failed")
        return ApiError(FAILURE_STATUS.get(code, 400), code, str(error.get("message") or "The transcription failed."))
    return None


# ---- cleanup -------------------------------------------------------------------------

_cleanups: set[asyncio.Task[None]] = set()


async def _delete(state: AppState, job_id: str) -> None:
    try:
        job = await state.store.get_job(job_id)  # fresh: delete_job reads the status
        if job is not None:
            await state.delete_job(job)
    except Exception:
        log.warning("could not delete OpenAI job %s; it is dropped at the next start", job_id, exc_info=True)


async def _discard(state: AppState, job_id: str) -> None:
    """Cancel and delete the job; runs to the end even when the caller is cancelled."""
    task = asyncio.create_task(_delete(state, job_id), name=f"openai-discard-{job_id}")
    _cleanups.add(task)
    task.add_done_callback(_cleanups.discard)
    await asyncio.shield(task)


async def discard_orphans(store: JobRepository, files: FileStore) -> int:
    """Drop OpenAI jobs left by a previous process: no client can collect them any more."""
    jobs = await store.jobs_with_status(tuple(Status))
    orphans = [j for j in jobs if (j.options or {}).get("via") == VIA]
    for job in orphans:
        await store.delete_job(job.id)
        await anyio.to_thread.run_sync(files.remove, job.id)
    if orphans:
        log.info("dropped %d OpenAI job(s) left by the previous process", len(orphans))
    return len(orphans)


# ---- rendering -------------------------------------------------------------------------


def _compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return round(len(data) / len(zlib.compress(data)), 4) if data else 0.0


def _verbose(request: OpenAIRequest, job: JobRecord, transcript: dict[str, Any], outcome: _Outcome) -> dict[str, Any]:
    segments = outcome.segments
    body: dict[str, Any] = {
        "task": request.task,
        "language": transcript["language"],
        "duration": job.duration_s,
        "text": transcript["text"],
        "segments": [
            {
                "id": i,
                "seek": int(round(float(s["start"]) * 100)),  # in 10 ms frames, as Whisper counts
                "start": s["start"],
                "end": s["end"],
                "text": s["text"],
                "tokens": [],  # not kept by the pipeline
                "temperature": float(scores.get("temperature", 0.0)),
                "avg_logprob": float(scores.get("avg_logprob", 0.0)),
                "compression_ratio": _compression_ratio(s["text"]),
                "no_speech_prob": float(scores.get("no_speech_prob", 0.0)),
            }
            for i, s in enumerate(segments)
            for scores in [outcome.scores.get(int(s["id"]), {})]
        ],
    }
    if "word" in request.granularities:
        body["words"] = [
            {"word": w["word"].strip(), "start": w["start"], "end": w["end"]} for s in segments for w in s.get("words") or ()
        ]
    return body


def _answer(request: OpenAIRequest, job: JobRecord, outcome: _Outcome, rules: CueRules) -> Response:
    assert outcome.final is not None
    segments = [segment_from_dict(s) for s in outcome.segments]
    language = outcome.final.data.get("language")
    transcript = transcript_to_dict(segments, language=language, duration_s=job.duration_s)
    fmt = request.response_format
    if fmt == "json":
        return JSONResponse({"text": transcript["text"]})
    if fmt == "verbose_json":
        return JSONResponse(_verbose(request, job, transcript, outcome))
    if fmt == "text":
        return Response(transcript["text"] + "\n", media_type="text/plain; charset=utf-8")
    # Subtitles follow the server's line rules ([subtitles]), as every subtitle output does.
    cues = cue_segments(segments, rules)
    return Response(to_srt(cues) if fmt == "srt" else to_vtt(cues), media_type="text/plain; charset=utf-8")


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def _stream(state: AppState, job_id: str) -> AsyncIterator[str]:
    parts: list[str] = []
    state.sse_streams += 1
    try:
        async for item in _events(state, job_id, STREAM_HEARTBEAT_S):
            if isinstance(item, Heartbeat):
                yield ": heartbeat\n\n"
                continue
            if isinstance(item, Shutdown):
                error = _failure(_Outcome())  # no final event: the server is stopping
                assert error is not None
                yield _sse(openai_error_body(error))
                return
            if item.type == "segment":
                text = " ".join(str(item.data.get("text", "")).split())
                if text:
                    yield _sse({"type": "transcript.text.delta", "delta": (" " if parts else "") + text})
                    parts.append(text)
            elif item.type == "done":
                yield _sse({"type": "transcript.text.done", "text": " ".join(parts)})
                return
            elif item.type in ("failed", "cancelled"):
                error = _failure(_Outcome(final=item))
                assert error is not None
                yield _sse(openai_error_body(error))
                return
    finally:
        state.sse_streams -= 1
        await _discard(state, job_id)


def openai_error_body(exc: ApiError) -> dict[str, Any]:
    return json.loads(bytes(openai_error(exc).body))  # type: ignore[no-any-return]


# ---- routes ------------------------------------------------------------------------------


async def _handle(request: Request, task: str) -> Response:
    parser = _Parser(task)
    try:
        job = await accept_upload(request, parser, tags={"via": VIA})
    except (ApiError, PipelineError, MediaError) as exc:
        return openai_error(as_api_error(exc))
    assert parser.request is not None
    state = state_of(request)
    log.info(
        "OpenAI %s request as job %s", task, job.id,
        extra={"job": job.id, "owner": job.owner, "response_format": parser.request.response_format, "stream": parser.request.stream},
    )
    if parser.request.stream:
        return StreamingResponse(
            _stream(state, job.id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    work = asyncio.create_task(_follow(state, job.id), name=f"openai-follow-{job.id}")
    watch = asyncio.create_task(_until_disconnect(request), name=f"openai-watch-{job.id}")
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (work, watch):
            t.cancel()
        await asyncio.gather(work, watch, return_exceptions=True)
        # Answered, failed or abandoned: the job has served its purpose either way.
        await _discard(state, job.id)
    if work.cancelled():
        log.info("client left; OpenAI job %s cancelled", job.id, extra={"job": job.id, "owner": job.owner})
        return Response(status_code=499)  # nobody reads it
    outcome = work.result()  # re-raises what broke the follower
    error = _failure(outcome)
    if error is not None:
        return openai_error(error)
    return _answer(parser.request, job, outcome, JobOptions.from_dict(job.options).subtitle_rules(state.cfg.subtitles.rules()))


async def transcriptions(request: Request) -> Response:
    return await _handle(request, "transcribe")


async def translations(request: Request) -> Response:
    return await _handle(request, "translate")


# ---- models ------------------------------------------------------------------------------

# The name OpenAI's clients send: the loaded model answers to it too.
OPENAI_MODEL_ALIAS = "whisper-1"


def _models(state: AppState) -> list[dict[str, Any]]:
    # A local folder is listed by its last part: the server's paths are not the client's business.
    name = Path(state.model_name).name or state.model_name
    return [
        {"id": model_id, "object": "model", "created": int(state.started_at), "owned_by": "altyazi"}
        for model_id in dict.fromkeys((name, OPENAI_MODEL_ALIAS))
    ]


async def list_models(request: Request) -> Response:
    """``GET /v1/models``: the loaded model (and ``whisper-1``, which names it), as OpenAI lists models."""
    return JSONResponse({"object": "list", "data": _models(state_of(request))})


async def get_model(request: Request) -> Response:
    model_id = request.path_params["model"]
    for model in _models(state_of(request)):
        if model["id"] == model_id:
            return JSONResponse(model)
    error = ApiError(404, "model_not_found", f"The model {model_id[:80]!r} does not exist here; GET /v1/models lists the one this server runs.", extra={"field": "model"})
    return openai_error(error)


routes = [
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
    Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
    Route("/v1/audio/translations", translations, methods=["POST"]),
]
