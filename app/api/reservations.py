"""Queue slots reserved when an upload starts, so quotas cannot be raced.

An upload is counted against the limits before its body streams in, but its
job row is written only after: counted by rows alone, eight uploads opened
at once by a key allowed two jobs all saw room and all got 202. So the
check takes a slot at once, in the same step as the count, and the slot is
given back either when the job exists (row written and task started) or
when the upload fails.

The global limit is counted in memory (job tasks + slots), and a slot turns
into a task in one step, so no job is ever counted twice or not at all. A
key's limit is counted from the store, so its count and the step that
turns a slot into a row hold the key's lock.
"""

from __future__ import annotations

import asyncio


class Slot:
    """One reserved place; ``release`` is idempotent."""

    def __init__(self, slots: Slots, owner: str) -> None:
        self._slots = slots
        self.owner = owner
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots._give_back(self.owner)


class Slots:
    def __init__(self) -> None:
        self.total = 0
        self._by_owner: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def held(self, owner: str) -> int:
        return self._by_owner.get(owner, 0)

    def take(self, owner: str) -> Slot:
        self.total += 1
        self._by_owner[owner] = self._by_owner.get(owner, 0) + 1
        return Slot(self, owner)

    def lock(self, owner: str) -> asyncio.Lock:
        """Held while a key's jobs are counted, and while a slot of the key becomes a row."""
        # Owners are key ids (or the one anonymous owner), so this stays as small as the keys file.
        lock = self._locks.get(owner)
        if lock is None:
            lock = self._locks[owner] = asyncio.Lock()
        return lock

    def _give_back(self, owner: str) -> None:
        self.total -= 1
        left = self._by_owner[owner] - 1
        if left:
            self._by_owner[owner] = left
        else:
            del self._by_owner[owner]
