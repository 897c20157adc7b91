"""Errors the job pipeline raises for a caller to act on.

The pipeline knows nothing of HTTP: these carry a snake_case code, a sentence
and the field at fault, and ``app.api.errors`` maps each class to a status and
the API's error shape, in that one place.
"""

from __future__ import annotations


class PipelineError(Exception):
    """A request the pipeline refuses: code, a sentence a person can act on, the field at fault."""

    def __init__(self, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


class InvalidRequest(PipelineError):
    """An option or body the pipeline cannot run with."""


class NotReady(PipelineError):
    """The job is not yet in the state the operation needs (a transcript to export, say)."""


class LimitReached(PipelineError):
    """The caller holds as many of something as its limit allows; it may try again later."""

    def __init__(self, code: str, message: str, *, retry_after_s: int) -> None:
        super().__init__(code, message)
        self.retry_after_s = retry_after_s
