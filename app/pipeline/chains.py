"""Decode a job's windows so that no speech is lost or doubled at their edges.

Windows come from the VAD (``app.pipeline.windows``) in order. Most end in a pause:
they are independent, decoded in parallel, and batched with everybody else's
windows. When the model stops before a window's end (batching.segmenting says
so with ``covered_until``), the rest of the window is decoded again from the
end of its last finished segment. A window that ends mid-speech
(``ends_in_speech``) hands that rest to the next window instead: the model
cannot finish the words cut at its end, so decoding goes on *from the end of
its last finished segment*, into the next window. Windows joined that way form a **chain**, decoded one after
another (Whisper's own seek loop), while separate chains run side by side. With
``condition_on_previous_text`` the whole job is one chain, so every window can
hear the text before it.

A chain hands out :class:`Piece` s in order: one decoded window each, with the
sample where the next piece starts. The job announces and saves pieces in
media order, and a restarted job resumes from the last saved piece's
:class:`ResumePoint`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from app.pipeline.windows import WindowSpan
from batching.types import SAMPLE_RATE, WINDOW_SAMPLES, WindowResult

# Whisper's rule (faster-whisper's prompt_reset_on_temperature): text decoded
# this warm is too unsure to condition the next window on.
PROMPT_RESET_TEMPERATURE = 0.5
# A remainder shorter than this after a cut holds no word worth a decoder pass.
MIN_PIECE_SAMPLES = SAMPLE_RATE // 10
# Whisper never looks further back than this (half its text context).
MAX_CONTEXT_TOKENS = 223


@dataclass(frozen=True)
class Piece:
    """One decoded window of a chain."""

    start: int  # first sample decoded
    stop: int  # sample after the last one decoded
    next: int  # where the job's decoding goes on: ``stop``, or earlier after a cut
    carry: bool  # decoding goes on from ``next`` in the chain's *following* window
    result: WindowResult


@dataclass(frozen=True)
class ResumePoint:
    """Where a job interrupted after some saved pieces picks up again."""

    next: int = 0
    carry: bool = False

    @classmethod
    def after(cls, payload: dict[str, Any]) -> ResumePoint:
        return cls(int(payload["next"]), bool(payload.get("carry")))

    def remaining(self, span: WindowSpan) -> tuple[bool, int | None]:
        """For a planned window, in order until the first one left to decode:
        (still to decode?, sample to start it from where that is not its start)."""
        if span.end_sample <= self.next:
            return False, None
        if self.carry:
            if span.start_sample < self.next:
                # The saved piece ended inside this window and carried on into
                # the next one: this window's rest is decoded as part of that one.
                return False, None
            return True, self.next
        return True, (self.next if self.next > span.start_sample else None)


Decode = Callable[[int, int, bool, tuple[int, ...]], Awaitable[WindowResult]]


@dataclass
class Chain:
    """Windows decoded one after another; fed as the VAD finds them."""

    decode: Decode  # (start sample, stop sample, ends_in_speech, previous tokens) -> result
    conditioned: bool
    carry: int | None = None  # start of the first window, when not its planned start
    # Context for the next window when conditioned (empty after a restart: the
    # tokens of saved windows are not kept).
    previous_tokens: tuple[int, ...] = ()
    inbox: asyncio.Queue[WindowSpan | None] = field(default_factory=asyncio.Queue)
    out: asyncio.Queue[Piece | None] = field(default_factory=asyncio.Queue)

    def add(self, span: WindowSpan) -> None:
        self.inbox.put_nowait(span)

    def close(self) -> None:
        self.inbox.put_nowait(None)

    async def pieces(self) -> AsyncIterator[Piece]:
        while (piece := await self.out.get()) is not None:
            yield piece

    async def run(self) -> None:
        """Decode every window added until :meth:`close`; pieces go to ``out``."""
        try:
            last: WindowSpan | None = None
            while (span := await self.inbox.get()) is not None:
                last = span
                await self._span(span)
            if self.carry is not None and last is not None and last.end_sample - self.carry >= MIN_PIECE_SAMPLES:
                # The chain was closed after a window that ended mid-speech (the
                # file's audio stops there): what is left of it is all there is.
                await self._piece(self.carry, last.end_sample, False, False)
        finally:
            self.out.put_nowait(None)

    async def _span(self, span: WindowSpan) -> None:
        pos = self.carry if self.carry is not None else span.start_sample
        self.carry = None
        end = span.end_sample
        while end - pos >= MIN_PIECE_SAMPLES:
            stop = min(end, pos + WINDOW_SAMPLES)
            cut = stop < end or span.ends_in_speech
            covered = await self._piece(pos, stop, cut, stop == end and span.ends_in_speech)
            if covered >= end:
                return
            if stop == end and span.ends_in_speech:
                # Cut at the window's end: the unfinished words go with the next window.
                self.carry = covered
                return
            pos = covered  # the model stopped early: decode the rest of this window

    async def _piece(self, start: int, stop: int, cut: bool, at_window_end: bool) -> int:
        # The rest of a window after the model stopped early is given the
        # context before it only when the job asks for conditioning, like
        # every other window.
        previous = self.previous_tokens if self.conditioned else ()
        result = await self.decode(start, stop, cut, previous)
        covered = stop
        if result.covered_until is not None:
            # Forward progress is guaranteed by batching.segmenting (at least
            # MIN_PROGRESS_S); the clamp only guards against a broken engine.
            covered = min(stop, max(start + 1, round(result.covered_until * SAMPLE_RATE)))
        carry = covered < stop and at_window_end
        self.out.put_nowait(Piece(start, stop, covered, carry, result))
        if result.temperature > PROMPT_RESET_TEMPERATURE:
            self.previous_tokens = ()
        else:
            self.previous_tokens = (self.previous_tokens + result.tokens)[-MAX_CONTEXT_TOKENS:]
        return covered
