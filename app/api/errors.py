"""The one error shape of the API, and the handlers that keep tracebacks out of responses."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.media.probe import MediaError
from app.pipeline.errors import InvalidRequest, LimitReached, NotReady, PipelineError

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
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(
        ApiError(500, "internal_error", "The server hit an unexpected error; it has been logged. Try again.")
    )
