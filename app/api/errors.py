"""The one error shape of the API, and the handlers that keep tracebacks out of responses."""

from __future__ import annotations

import errno
import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.media.probe import MediaError
from app.pipeline.errors import InvalidRequest, LimitReached, NotReady, PipelineError
from storage.claims import StoreUnavailable

log = logging.getLogger("altyazi.http")


class ApiError(Exception):
    """An error a client can act on: status, a snake_case code and a sentence."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, object]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


def not_found(what: str = "job") -> ApiError:
    return ApiError(404, f"{what}_not_found", f"No {what} with that id exists (it may have been deleted).")


# The one place where the lower layers' errors get HTTP statuses.
_PIPELINE_STATUS: dict[type[PipelineError], int] = {InvalidRequest: 422, NotReady: 409, LimitReached: 429}


def as_api_error(exc: ApiError | PipelineError | MediaError) -> ApiError:
    """The API's error for one of the pipeline's or media's own errors (an ApiError as it is)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, MediaError):
        return ApiError(exc.status, exc.code, exc.message)
    status = next((s for cls, s in _PIPELINE_STATUS.items() if isinstance(exc, cls)), 400)
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, LimitReached) else None
    return ApiError(status, exc.code, exc.message, headers=headers, extra={"field": exc.field} if exc.field is not None else None)


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, (ApiError, PipelineError, MediaError))
    return error_response(as_api_error(exc))


_HTTP_CODES = {
    400: ("bad_request", "The request could not be understood."),
    404: ("not_found", "There is nothing at this address."),
    405: ("method_not_allowed", "This address does not accept that method."),
    413: ("too_large", "The request body is too large."),
}


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code, message = _HTTP_CODES.get(exc.status_code, ("http_error", str(exc.detail)))
    return error_response(ApiError(exc.status_code, code, message, headers=dict(exc.headers or {})))


async def unhandled_error_handler(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log; the client gets no paths and no stack.
    if isinstance(exc, StoreUnavailable):
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return error_response(unexpected(exc))
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(unexpected(exc))


def unexpected(exc: BaseException) -> ApiError:
    """The answer for an exception no route turned into an ApiError.

    A data folder that cannot be written (read-only, wrong owner) or a full
    disk is the operator's problem, not a bug: say so, with a status a client
    can retry on, instead of a 500.
    """
    if isinstance(exc, (ApiError, PipelineError, MediaError)):
        return as_api_error(exc)
    if isinstance(exc, StoreUnavailable):
        # A cluster's database or object storage is away (a failover, a restart):
        # nothing was accepted, and the client can simply try again.
        return ApiError(
            503, "store_unavailable", f"The server cannot reach its {exc.what} right now; nothing was stored. Try again shortly.",
            headers={"Retry-After": "5"},
        )
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ApiError(507, "insufficient_storage", "The server ran out of disk space; try again later.", headers={"Retry-After": "60"})
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ApiError(
            503, "storage_unavailable", "The server cannot write its files right now; the operator has been told. Try again later.",
            headers={"Retry-After": "60"},
        )
    return ApiError(500, "internal_error", "The server hit an unexpected error; it has been logged. Try again.")


class UnhandledErrors:
    """Pure ASGI, innermost: answers an unexpected exception itself and returns normally.

    Starlette's handler for ``Exception`` answers too, but then re-raises, and
    uvicorn drops the keep-alive connection after every such error; here the
    connection stays usable. Once a response has started it cannot be
    replaced, so the exception goes on to uvicorn, which closes the connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            if started:
                raise
            error = unexpected(exc)
            if isinstance(exc, ApiError):
                pass
            elif error.status == 500:
                log.error("unhandled error on %s %s", scope.get("method"), scope.get("path"), exc_info=exc)
            else:
                log.error("%s on %s %s: %s", error.code, scope.get("method"), scope.get("path"), exc)
            await error_response(error)(scope, receive, send)
