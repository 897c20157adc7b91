"""The one error shape of the API, and the handlers that keep tracebacks out of responses."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

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


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


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
