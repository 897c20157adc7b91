"""The names of a job's and an export's states: the one list that the store, the
pipeline, the API, the metrics and the web page's labels (a test checks them) share.

Members are strings, so records, JSON and SQLite hold the plain names.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Where a job (or an export) is in its life; the last three are final."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = frozenset({Status.DONE, Status.FAILED, Status.CANCELLED})
ACTIVE = (Status.QUEUED, Status.RUNNING)


class Stage(StrEnum):
    """What a job is doing now, finer than its status (``job.stage``, ``progress`` events)."""

    QUEUED = "queued"
    EXTRACTING = "extracting"  # ffmpeg decodes the audio to 16 kHz PCM
    DETECTING_SPEECH = "detecting_speech"  # VAD cuts it into windows
    TRANSCRIBING = "transcribing"
    FINALIZING = "finalizing"  # the transcript is written
    EXPORTING = "exporting"  # an export renders (progress events carry its export_id)
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
