"""Subtitle formats (SRT, WebVTT, JSON, TXT) and validation of edited transcripts.

Rendering is pure: segments in, text out. Every renderer works from integer
milliseconds, so rounding can never produce a ``,1000`` field, and from cleaned
text, so a cue can never contain a blank line (which ends a cue in SRT and
WebVTT) or a ``-->`` (which starts one).

A transcript is plain text, never markup, in every rendering: ASS override
blocks (``{\\an8}``) are dropped, SRT lines get an invisible word joiner after
``<``, ``{`` and ``\\`` so players show ``<b>`` or ``<font>`` as typed, WebVTT
escapes ``&``, ``<`` and ``>``, and TXT is otherwise the text as typed. The JSON keeps
each segment's text exactly as stored. SRT and WebVTT come from one writer,
:func:`to_subtitles`, for downloads and for exported subtitle tracks alike
(``app.media.render`` wraps the lines; the burned-in ASS escapes its own way).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from batching.types import Segment, Word

__all__ = [
    "FORMATS",
    "SegmentError",
    "render",
    "segment_to_dict",
    "strip_overrides",
    "to_json",
    "to_srt",
    "to_subtitles",
    "to_txt",
    "to_vtt",
    "transcript_to_dict",
    "validate_segments",
]

# format name -> (media type, file extension)
FORMATS: dict[str, tuple[str, str]] = {
    "json": ("application/json", "json"),
    "srt": ("application/x-subrip; charset=utf-8", "srt"),
    "vtt": ("text/vtt; charset=utf-8", "vtt"),
    "txt": ("text/plain; charset=utf-8", "txt"),
}

# Languages written without spaces between words: joining their segments with
# a space would put spaces in the middle of sentences.
_NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "km", "bo", "yue"})


# --- time and text helpers -------------------------------------------------


def _ms(seconds: float) -> int:
    """Seconds as whole milliseconds, never negative; non-finite becomes 0."""
    if not math.isfinite(seconds) or seconds <= 0:
        return 0
    return int(round(seconds * 1000))


def _clock(ms: int, sep: str) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    # {:02d} grows to three digits past 99 h instead of wrapping.
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{millis:03d}"


def _cue_times(seg: Segment) -> tuple[int, int]:
    start = _ms(seg.start)
    # WebVTT requires end > start, and a zero-length cue never shows anyway.
    end = max(_ms(seg.end), start + 1)
    return start, end


# ASS/SSA override blocks ("{\an8}", "{\c&H0000FF&}", "{\alpha&HFF&}"): styling
# codes that text pasted from another subtitle file brings along, never words.
# Obeyed, they move, recolour or hide a cue; shown, they are noise.
_OVERRIDE = re.compile(r"\{\\[^{}]*\}")
_WJ = "\u2060"  # WORD JOINER: invisible, and breaks up what a parser would read as markup


def strip_overrides(text: str) -> str:
    """``text`` without ASS override blocks; other braces stay.

    Repeated until nothing changes, so a block nested in another goes too and
    stripping twice gives what stripping once did.
    """
    while True:
        stripped = _OVERRIDE.sub("", text)
        if stripped == text:
            return text
        text = stripped


def _srt_escape(line: str) -> str:
    # SRT has no escapes, but players and ffmpeg read <b>, <font>, {...} and \N as
    # markup; a word joiner after "<", "{" and "\" keeps them from being read so.
    # "→" cannot take part in a new "-->", so one replace pass is enough for that.
    return line.replace("-->", "→").replace("\\", "\\" + _WJ).replace("{", "{" + _WJ).replace("<", "<" + _WJ)


def _vtt_escape(line: str) -> str:
    # Escaping ">" also removes every "-->".
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _lines(text: str) -> list[str]:
    """The non-empty, stripped lines of a segment's text."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def _one_line(text: str) -> str:
    """A segment's text on one line for TXT and the full text, override blocks dropped."""
    return " ".join(" ".join(_lines(strip_overrides(text))).split())


# --- dict / JSON ------------------------------------------------------------


def _round(seconds: float) -> float:
    return _ms(seconds) / 1000


def _word_to_dict(word: Word) -> dict[str, Any]:
    return {
        "start": _round(word.start),
        "end": _round(word.end),
        "word": word.word,
        "probability": round(float(word.probability), 4),
    }


def segment_to_dict(seg: Segment, index: int, *, scores: bool = False) -> dict[str, Any]:
    """One segment as the API shows it; ``words`` only when the job asked for them.

    ``scores`` adds the decoder's numbers (kept in the stored transcript for the
    OpenAI route's ``verbose_json``; the job API does not show them).
    """
    out: dict[str, Any] = {
        "id": index,
        "start": _round(seg.start),
        "end": _round(seg.end),
        "text": seg.text.strip(),
    }
    if seg.words is not None:
        out["words"] = [_word_to_dict(w) for w in seg.words]
    if scores:
        out.update(avg_logprob=round(seg.avg_logprob, 4), no_speech_prob=round(seg.no_speech_prob, 4), temperature=seg.temperature)
    return out


def _full_text(segments: Iterable[Segment], language: str | None) -> str:
    sep = "" if (language or "").lower() in _NO_SPACE_LANGUAGES else " "
    return sep.join(t for t in (_one_line(s.text) for s in segments) if t)


def transcript_to_dict(
    segments: Sequence[Segment], *, language: str | None, duration_s: float | None, scores: bool = False
) -> dict[str, Any]:
    """The transcript document; ``scores`` keeps the decoder's numbers (the stored original does)."""
    return {
        "language": language,
        "duration_s": None if duration_s is None else _round(duration_s),
        "text": _full_text(segments, language),
        "segments": [segment_to_dict(s, i, scores=scores) for i, s in enumerate(segments)],
    }


def to_json(
    segments: Sequence[Segment], *, language: str | None = None, duration_s: float | None = None
) -> str:
    return json.dumps(
        transcript_to_dict(segments, language=language, duration_s=duration_s),
        ensure_ascii=False,
    )


# --- subtitle text formats ---------------------------------------------------


def to_subtitles(segments: Sequence[Segment], fmt: Literal["srt", "vtt"], *, lines: Callable[[str], list[str]] = _lines) -> str:
    """SRT or WebVTT: the one writer, for downloads and for exported subtitle tracks.

    A transcript is plain text, never markup (the policy at the top of this
    module): override blocks are dropped, SRT lines get a word joiner after
    ``<``, ``{`` and ``\\``, WebVTT lines are escaped. ``lines`` cuts a segment's
    text into the cue's lines (exports wrap them); a segment without text gets
    no cue, since an empty cue breaks the numbering in strict players.
    """
    escape, sep = (_srt_escape, ",") if fmt == "srt" else (_vtt_escape, ".")
    parts = ["WEBVTT\n\n"] if fmt == "vtt" else []
    number = 0
    for seg in segments:
        text = [escape(line) for line in lines(strip_overrides(seg.text))]
        if not text:
            continue
        number += 1
        start, end = _cue_times(seg)
        head = f"{number}\n" if fmt == "srt" else ""
        parts.append(f"{head}{_clock(start, sep)} --> {_clock(end, sep)}\n" + "\n".join(text) + "\n\n")
    return "".join(parts)


def to_srt(segments: Sequence[Segment]) -> str:
    return to_subtitles(segments, "srt")


def to_vtt(segments: Sequence[Segment]) -> str:
    return to_subtitles(segments, "vtt")


def to_txt(segments: Sequence[Segment]) -> str:
    lines = [t for t in (_one_line(s.text) for s in segments) if t]
    return "".join(line + "\n" for line in lines)


def render(
    fmt: str,
    segments: Sequence[Segment],
    *,
    language: str | None = None,
    duration_s: float | None = None,
) -> str:
    """The transcript in format ``fmt`` (a key of :data:`FORMATS`)."""
    if fmt == "json":
        return to_json(segments, language=language, duration_s=duration_s)
    if fmt == "srt":
        return to_srt(segments)
    if fmt == "vtt":
        return to_vtt(segments)
    if fmt == "txt":
        return to_txt(segments)
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


# --- validation of edited transcripts ----------------------------------------

# How far an edited end may run past the media's duration: durations come from
# ffprobe and segment ends from the decoder, which disagree by a few frames.
END_TOLERANCE_S = 0.5
# How much one segment may overlap the next: timestamp rounding in editors.
OVERLAP_TOLERANCE_S = 0.010

_SEGMENT_KEYS = frozenset({"start", "end", "text", "words", "id"})
_WORD_KEYS = frozenset({"start", "end", "word", "probability"})
# Keys of our own JSON output, accepted (and ignored) so a client can PUT back
# exactly what it got from GET ?format=json after editing it.
_TRANSCRIPT_KEYS = frozenset({"segments", "language", "duration_s", "text"})
# C0 and C1 control characters except "\n" (after CR/CRLF became "\n").
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


class SegmentError(ValueError):
    """An edited transcript is invalid; ``message`` says what to fix."""

    def __init__(self, message: str, *, index: int | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.index = index
        self.field = field


def _s(value: float) -> str:
    """Seconds for a message: 13.0, 12.5, 1.234."""
    text = f"{value:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _where(index: int, word: int | None = None) -> str:
    # Counted from 1, as the page, SRT and people number them; ``index`` stays 0-based.
    return f"segment {index + 1}" if word is None else f"segment {index + 1}, word {word + 1}"


def _number(obj: Mapping[str, Any], key: str, index: int, word: int | None = None) -> float:
    where = _where(index, word)
    if key not in obj:
        raise SegmentError(f'{where}: "{key}" is missing', index=index, field=key)
    value = obj[key]
    # bool is an int subclass; true/false as a time is a client bug.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SegmentError(
            f'{where}: "{key}" must be a number of seconds, not {json.dumps(value)[:40]}',
            index=index,
            field=key,
        )
    if not math.isfinite(value):
        raise SegmentError(f'{where}: "{key}" must be a finite number', index=index, field=key)
    return float(value)


def _text(value: object, key: str, index: int, max_chars: int, word: int | None = None) -> str:
    where = _where(index, word)
    if not isinstance(value, str):
        raise SegmentError(f'{where}: "{key}" must be a string', index=index, field=key)
    text = value.replace("\r\n", "\n").replace("\r", "\n")
    if len(text) > max_chars:
        raise SegmentError(
            f'{where}: "{key}" is {len(text)} characters long; the limit is {max_chars}',
            index=index,
            field=key,
        )
    bad = _CONTROL.search(text)
    if bad:
        raise SegmentError(
            f'{where}: "{key}" contains the control character U+{ord(bad.group()):04X} '
            f"at position {bad.start()}; remove it (only newlines are allowed)",
            index=index,
            field=key,
        )
    return text


def _unknown_keys(obj: Mapping[str, Any], allowed: frozenset[str], where: str, index: int | None) -> None:
    extra = sorted(str(k) for k in obj if k not in allowed)
    if extra:
        raise SegmentError(
            f"{where}: unknown key {json.dumps(extra[0])}; allowed keys are "
            + ", ".join(f'"{k}"' for k in sorted(allowed)),
            index=index,
            field=extra[0],
        )


def _words(raw: object, index: int, start: float, end: float, max_chars: int) -> tuple[Word, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise SegmentError(f'{_where(index)}: "words" must be a list or null', index=index, field="words")
    words: list[Word] = []
    prev_start = -math.inf
    for j, item in enumerate(raw):
        where = _where(index, j)
        if not isinstance(item, dict):
            raise SegmentError(f"{where}: must be an object", index=index, field="words")
        _unknown_keys(item, _WORD_KEYS, where, index)
        w_start = _number(item, "start", index, j)
        w_end = _number(item, "end", index, j)
        if w_end < w_start:
            raise SegmentError(
                f"{where}: end ({_s(w_end)} s) is before start ({_s(w_start)} s)", index=index, field="words"
            )
        if w_start < start - OVERLAP_TOLERANCE_S or w_end > end + OVERLAP_TOLERANCE_S:
            raise SegmentError(
                f"{where}: {_s(w_start)}-{_s(w_end)} s lies outside its segment "
                f"({_s(start)}-{_s(end)} s); fix the word times or drop \"words\"",
                index=index,
                field="words",
            )
        if w_start < prev_start:
            raise SegmentError(
                f"{where}: starts ({_s(w_start)} s) before the word before it ({_s(prev_start)} s)",
                index=index,
                field="words",
            )
        prev_start = w_start
        if "word" not in item:
            raise SegmentError(f'{where}: "word" is missing', index=index, field="words")
        text = _text(item["word"], "word", index, max_chars, j)
        prob = 1.0  # a word a person typed is as certain as it gets
        if "probability" in item:
            prob = _number(item, "probability", index, j)
            if not 0.0 <= prob <= 1.0:
                raise SegmentError(
                    f'{where}: "probability" must be between 0 and 1', index=index, field="words"
                )
        words.append(Word(start=w_start, end=w_end, word=text, probability=prob))
    return tuple(words)


def validate_segments(
    raw: object,
    *,
    duration_s: float | None,
    max_segments: int = 20000,
    max_text_chars: int = 2000,
) -> list[Segment]:
    """Check an edited transcript (the parsed JSON body of ``PUT .../transcript``).

    ``raw`` is a list of segments or an object with a ``"segments"`` list (our
    own JSON output is accepted as is). Segments must be in time order and may
    overlap the next one by at most 10 ms. Raises :class:`SegmentError` naming
    the first offending segment: the message counts from 1 ("segment 1" is the
    first, as the page and SRT number them); ``index`` is its 0-based position
    (the ``id`` of our JSON output).
    """
    if isinstance(raw, dict):
        _unknown_keys(raw, _TRANSCRIPT_KEYS, "transcript", None)
        if "segments" not in raw:
            raise SegmentError('transcript: "segments" is missing', field="segments")
        raw = raw["segments"]
    if not isinstance(raw, list):
        raise SegmentError(
            'transcript: send a list of segments or an object with a "segments" list', field="segments"
        )
    if len(raw) > max_segments:
        raise SegmentError(
            f"transcript: {len(raw)} segments is more than the limit of {max_segments}", field="segments"
        )

    out: list[Segment] = []
    prev: Segment | None = None
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise SegmentError(
                f'{_where(i)}: must be an object with "start", "end" and "text"', index=i
            )
        _unknown_keys(item, _SEGMENT_KEYS, _where(i), i)
        start = _number(item, "start", i)
        end = _number(item, "end", i)
        if start < 0:
            raise SegmentError(f"{_where(i)}: start ({_s(start)} s) is negative", index=i, field="start")
        if end <= start:
            what = "equals" if end == start else "is before"
            raise SegmentError(
                f"{_where(i)}: end ({_s(end)} s) {what} start ({_s(start)} s)", index=i, field="end"
            )
        if duration_s is not None and end > duration_s + END_TOLERANCE_S:
            raise SegmentError(
                f"{_where(i)}: end ({_s(end)} s) is past the end of the media ({_s(duration_s)} s)",
                index=i,
                field="end",
            )
        if prev is not None:
            if start < prev.start:
                raise SegmentError(
                    f"{_where(i)}: start ({_s(start)} s) is before the start of {_where(i - 1)} "
                    f"({_s(prev.start)} s); segments must be in time order",
                    index=i,
                    field="start",
                )
            if start < prev.end - OVERLAP_TOLERANCE_S:
                raise SegmentError(
                    f"{_where(i)}: start ({_s(start)} s) overlaps {_where(i - 1)}, which ends at "
                    f"{_s(prev.end)} s; move one of them",
                    index=i,
                    field="start",
                )
        if "text" not in item:
            raise SegmentError(f'{_where(i)}: "text" is missing', index=i, field="text")
        text = _text(item["text"], "text", i, max_text_chars)
        words = _words(item.get("words"), i, start, end, max_text_chars)
        seg = Segment(start=start, end=end, text=text, words=words)
        out.append(seg)
        prev = seg
    return out
