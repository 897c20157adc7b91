"""What a node holds while it works on a job of a shared store, and the errors of sharing.

A node claims a job with a new ``epoch`` (storage.pg_store.PgJobStore.claim).
While its task runs, :data:`CURRENT` holds that claim; the shared store adds
"and the job still carries this epoch and node" to every write about that job
(records, events, windows), so the writes of an owner that lost the job (it
was paused past its lease, or cut off, and another node claimed the job) change
nothing and raise :class:`Fenced` instead. The single box's SQLite store never
sets or reads it.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Claim:
    job_id: str
    epoch: int
    node: str


# Set in a claimed job's task; tasks it starts inherit it (contextvars are copied).
CURRENT: ContextVar[Claim | None] = ContextVar("altyazi_claim", default=None)


class Fenced(Exception):
    """This node no longer owns the job (a later claim, a cancel, a delete): drop it."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} is no longer ours")
        self.job_id = job_id


class StoreUnavailable(Exception):
    """The shared database or object storage cannot be reached now; try again shortly."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"{what} unavailable: {detail}")
        self.what = what


def claim_for(job_id: str) -> Claim | None:
    """The current task's claim when it is about ``job_id``."""
    claim = CURRENT.get()
    return claim if claim is not None and claim.job_id == job_id else None
