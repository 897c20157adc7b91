"""A queue that shares a batch fairly between owners, then between their jobs.

One person uploading ten long files must not push another person's single
short file behind all of them, so the queue serves owners in turn (one item
each per round), and inside one owner serves that owner's jobs in turn; items
of one job leave in the order they came, except that a retry may go to the
front of its job. An owner or job that runs empty leaves the rotation and
joins at the back when it has work again.

Every operation is O(1) except :meth:`remove` (O(items of that job)) and
:meth:`position` (O(owners + jobs of that owner)).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Round-robin across owners, then across that owner's jobs; FIFO within a job."""

    def __init__(self, owner_of: Callable[[T], str], job_of: Callable[[T], str]) -> None:
        self._owner_of = owner_of
        self._job_of = job_of
        # The first key of each OrderedDict is the next to serve; serving moves
        # it to the end, which is the whole round-robin.
        self._owners: OrderedDict[str, OrderedDict[str, deque[T]]] = OrderedDict()
        self._owner_len: dict[str, int] = {}
        self._job_owner: dict[str, str] = {}
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __contains__(self, job_id: object) -> bool:
        """Whether the job has items waiting here."""
        return job_id in self._job_owner

    def push(self, item: T, *, first: bool = False) -> None:
        """Queue an item at the back of its job's line, or at the front with ``first``
        (a retry of an item that was already served: it is older than the rest)."""
        owner, job = self._owner_of(item), self._job_of(item)
        known = self._job_owner.get(job)
        if known is not None and known != owner:
            # one job id under two owners would make fairness (and removal) ambiguous
            raise ValueError(f"job {job!r} is queued for owner {known!r}, not {owner!r}")
        jobs = self._owners.get(owner)
        if jobs is None:
            jobs = self._owners[owner] = OrderedDict()
            self._owner_len[owner] = 0
        items = jobs.get(job)
        if items is None:
            items = jobs[job] = deque()
            self._job_owner[job] = owner
        if first:
            items.appendleft(item)
        else:
            items.append(item)
        self._owner_len[owner] += 1
        self._len += 1

    def pop_batch(self, n: int) -> list[T]:
        """Take up to ``n`` items in fair order."""
        if n < 0:
            raise ValueError(f"batch size must be >= 0, got {n!r}")
        return [self._pop_one() for _ in range(min(n, self._len))]

    def peek(self) -> T | None:
        """The item ``pop_batch(1)`` would take next, left in place."""
        if not self._len:
            return None
        jobs = next(iter(self._owners.values()))
        return next(iter(jobs.values()))[0]

    def remove_job(self, job_id: str) -> list[T]:
        """Take every item of the job out of the queue; answers them in FIFO order."""
        owner = self._job_owner.pop(job_id, None)
        if owner is None:
            return []
        jobs = self._owners[owner]
        items = jobs.pop(job_id)
        self._shrink(owner, len(items))
        return list(items)

    def remove(self, item: T) -> bool:
        """Take one item out by identity (not equality: equal requests can both be queued)."""
        owner, job = self._owner_of(item), self._job_of(item)
        jobs = self._owners.get(owner)
        items = None if jobs is None else jobs.get(job)
        if jobs is None or items is None:
            return False
        for i, queued in enumerate(items):
            if queued is item:
                del items[i]
                break
        else:
            return False
        if not items:
            del jobs[job]
            del self._job_owner[job]
        self._shrink(owner, 1)
        return True

    def position(self, job_id: str) -> int | None:
        """How many items leave before this job's next one, or None if it has none here.

        Closed form of the round-robin, so the API can ask often: the job is
        ``q`` turns into its owner's rotation, so it leaves on its owner's
        turn ``q + 1``; by then each owner ahead of its owner has had up to
        ``q + 1`` turns and each owner behind it up to ``q`` (fewer if it runs
        out of items first).
        """
        owner = self._job_owner.get(job_id)
        if owner is None:
            return None
        q = _index_of(self._owners[owner], job_id)
        ahead = True
        count = q
        for other in self._owners:  # in rotation order; _owner_len is not
            if other == owner:
                ahead = False
                continue
            count += min(self._owner_len[other], q + 1 if ahead else q)
        return count

    def _pop_one(self) -> T:
        owner, jobs = next(iter(self._owners.items()))
        job, items = next(iter(jobs.items()))
        item = items.popleft()
        if items:
            jobs.move_to_end(job)
        else:
            del jobs[job]
            del self._job_owner[job]
        self._shrink(owner, 1)
        if owner in self._owners:
            self._owners.move_to_end(owner)
        return item

    def _shrink(self, owner: str, n: int) -> None:
        self._len -= n
        self._owner_len[owner] -= n
        if not self._owners[owner]:
            del self._owners[owner]
            del self._owner_len[owner]


def _index_of(keys: OrderedDict[str, deque[T]], key: str) -> int:
    for i, k in enumerate(keys):
        if k == key:
            return i
    raise KeyError(key)
