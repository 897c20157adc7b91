"""Turn one window's decoded tokens into timed segments, and say how far they reach.

Whisper writes ``<|t0|> text <|t1|>`` per segment, and two timestamps in a row
(``<|t1|><|t1|>``) where one segment ends and the next begins. How the tokens
end says whether the model accounted for the whole window:

- ``... text <|t|>`` then end of text: the last segment is closed and the model
  says it heard nothing more. Where more than the VAD's padding is left after
  ``t``, the rest is decoded again all the same (the model is wrong about that
  often enough to lose whole sentences).
- ``... <|t|><|t|>`` then end of text, or ``... <|t|><|t|> text`` without a
  closing timestamp: the model stopped early (measured on recorded speech: it
  leaves up to 8 s of a sentence unwritten this way) or ran into the window's
  end mid-sentence. Whisper's own sequential loop decodes again from the last
  closed timestamp, and so does altyazi: the unfinished text is dropped and
  ``covered_until`` says where to go on from. The caller decodes the rest of
  the window there, or, where the window ends mid-speech (a hard cut), the rest
  together with the next window, so no word is cut in half.

Two guards keep this from costing more than it gains: a window whose last
closed segment ends less than ``MIN_PROGRESS_S`` into it keeps everything (no
loop of tiny steps), and a window that ends in a pause keeps everything when
less than ``MIN_REMAINDER_S`` is left after the last timestamp (that is the
VAD's padding, not speech).

Pure functions over token ids: no model, no tokenizer object, so every boundary
case is unit-tested with synthetic tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

TIME_PRECISION = 0.02  # seconds per timestamp token step
MIN_PROGRESS_S = 1.0
# Silence that the VAD pads a window with (0.4 s) plus some slack.
MIN_REMAINDER_S = 1.0


@dataclass(frozen=True)
class RawSegment:
    start: float  # seconds, absolute
    end: float
    tokens: tuple[int, ...]  # timestamps included, as the model wrote them


@dataclass(frozen=True)
class Split:
    segments: tuple[RawSegment, ...]
    covered_until: float  # seconds, absolute: the audio these segments account for
    dropped_tail: bool  # unfinished text was dropped, to be decoded again from covered_until


def split_tokens(
    tokens: list[int] | tuple[int, ...],
    *,
    timestamp_begin: int,
    offset: float,
    duration: float,
    ends_in_speech: bool,
) -> Split:
    """Segments of one window's tokens (no end-of-text token), times absolute.

    ``offset`` is where the window starts in the media, ``duration`` its length;
    ``ends_in_speech`` whether the audio goes on, mid-speech, past its end.
    """
    tokens = tuple(tokens)
    end_of_window = offset + duration

    def ts(token: int) -> float:
        return offset + (token - timestamp_begin) * TIME_PRECISION

    is_ts = [t >= timestamp_begin for t in tokens]
    # Index of the second timestamp of every pair: where a new segment begins.
    pairs = [i for i in range(1, len(tokens)) if is_ts[i] and is_ts[i - 1]]
    single_ending = len(tokens) >= 2 and not is_ts[-2] and is_ts[-1]

    if not pairs:
        # One segment (or none): Whisper's rule is to take the text as one
        # segment up to the last timestamp it wrote, or the whole window, and
        # to go on after the window.
        if all(is_ts):
            return Split((), end_of_window, False)
        stamps = [t for t in tokens if t >= timestamp_begin]
        end = end_of_window
        if stamps and stamps[-1] != timestamp_begin:
            end = ts(stamps[-1])
        start = ts(tokens[0]) if is_ts[0] else offset
        segment = RawSegment(start, end, tokens)
        if single_ending:
            return _closed((segment,), end, offset, end_of_window, ends_in_speech)
        return Split((segment,), end_of_window, False)

    segments: list[RawSegment] = []
    last = 0
    for cut in pairs:
        piece = tokens[last:cut]
        if not all(is_ts[last:cut]):  # "<|a|><|a|>" alone holds no words
            segments.append(RawSegment(ts(piece[0]), ts(piece[-1]), piece))
        last = cut
    tail = tokens[last:]
    if single_ending:
        # Closed: the model says nothing is spoken after its last timestamp.
        # Where that leaves more than the VAD's padding of the window, it was
        # wrong often enough (measured: 20 s of speech skipped in one window of
        # a batch) that the rest is decoded again too.
        segments.append(RawSegment(ts(tail[0]), ts(tail[-1]), tail))
        return _closed(tuple(segments), ts(tail[-1]), offset, end_of_window, ends_in_speech)

    # The model stopped after a pair, or inside a segment.
    has_text = not all(is_ts[last:])
    closed_until = ts(tokens[last - 1])
    progress = closed_until - offset
    remainder = end_of_window - closed_until
    if progress >= MIN_PROGRESS_S and (ends_in_speech or remainder >= MIN_REMAINDER_S):
        return Split(tuple(segments), closed_until, has_text)
    # Going on from there would not pay (see the module's guards): keep what
    # the model wrote, its open tail up to the window's end.
    if has_text:
        segments.append(RawSegment(ts(tail[0]), end_of_window, tail))
    return Split(tuple(segments), end_of_window, False)


def _closed(
    segments: tuple[RawSegment, ...], closed_until: float, offset: float, end_of_window: float, ends_in_speech: bool
) -> Split:
    """Every segment closed at ``closed_until``: the rest of the window is
    decoded again where it may hold speech (see the module's notes)."""
    if closed_until - offset < MIN_PROGRESS_S:
        return Split(segments, end_of_window, False)
    if ends_in_speech or end_of_window - closed_until >= MIN_REMAINDER_S:
        return Split(segments, min(closed_until, end_of_window), False)
    return Split(segments, end_of_window, False)
