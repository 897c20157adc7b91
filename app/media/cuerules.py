"""Subtitle line rules: segments in, cues that subtitlers and players accept out.

A decoded segment is a sentence or two of any length; a subtitle cue has at
most ``max_lines_per_cue`` lines of at most ``max_chars_per_line`` columns and
stays on screen between ``min_cue_duration_s`` and ``max_cue_duration_s``.
:func:`apply_rules` re-splits every segment into cues at word boundaries and
lays each cue out in balanced lines; :func:`retime` then keeps cues apart by
``min_gap_s`` and lengthens the ones too short, or too fast to read
(``max_cps``), into the silence after them.

Where a cue is cut comes from the words' own times when the segment has them
and they spell its text; otherwise (an edited text, a transcript made without
word timestamps) each word gets a share of the segment's time in proportion to
its characters. A word is never cut, except a run of CJK characters, which has
no spaces and breaks between characters; a single word wider than a line
(a URL) stays whole on a line of its own. Widths count East Asian wide
characters as two columns and combining marks as none. Text is kept in logical
order, so right-to-left scripts come out as they went in.

Everything here is pure and synchronous: segments in, cues out.
"""

from __future__ import annotations

import bisect
import functools
import math
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from app.media.formats import strip_overrides
from batching.types import Segment

__all__ = [
    "ALIASES",
    "DEFAULT_RULES",
    "PRESETS",
    "PRESET_KEY",
    "RULE_KEYS",
    "Cue",
    "CueRules",
    "RuleError",
    "Token",
    "apply_rules",
    "cue_segments",
    "layout",
    "parse_overrides",
    "resolve",
    "retime",
    "split_segment",
    "tokens_of",
    "width",
]


@dataclass(frozen=True)
class CueRules:
    """The rules one rendering follows; ``enabled=False`` passes segments through raw."""

    max_chars_per_line: int = 42
    max_lines_per_cue: int = 2
    max_cue_duration_s: float = 7.0
    min_cue_duration_s: float = 0.833  # 20 frames at 24 fps
    min_gap_s: float = 0.083  # 2 frames at 24 fps
    max_cps: float = 17.0  # characters per second; 0: no limit
    enabled: bool = True


DEFAULT_RULES = CueRules()
# Well-known style guides, approximately: Netflix's English timed-text guide
# (42 x 2, 17 characters per second for all audiences, 7 s, 5/6 s, 2 frames)
# and the BBC's subtitle guidelines (37 columns; about 160-180 words a minute,
# some 15 characters per second). "none" (or "raw") keeps the decoder's segments.
PRESETS: dict[str, CueRules] = {
    "netflix": DEFAULT_RULES,
    "bbc": CueRules(max_chars_per_line=37, max_cps=15.0, max_cue_duration_s=7.0, min_cue_duration_s=1.0, min_gap_s=0.08),
    "none": CueRules(enabled=False),
    "raw": CueRules(enabled=False),
}
# Request parameter -> CueRules field, and the whisper command line's spellings.
RULE_KEYS = ("max_chars_per_line", "max_lines_per_cue", "max_cue_duration_s", "min_cue_duration_s", "min_gap_s", "max_cps")
ALIASES = {"max_line_width": "max_chars_per_line", "max_line_count": "max_lines_per_cue"}
PRESET_KEY = "subtitle_preset"
# name -> (lowest, highest, whole numbers only)
_RANGES: dict[str, tuple[float, float, bool]] = {
    "max_chars_per_line": (10, 200, True),
    "max_lines_per_cue": (1, 4, True),
    "max_cue_duration_s": (1, 60, False),
    "min_cue_duration_s": (0, 10, False),
    "min_gap_s": (0, 2, False),
    "max_cps": (0, 100, False),
}


class RuleError(ValueError):
    """A bad rule parameter; ``field`` names it as the client spelled it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = f"{field}: {message}"


def _rule_value(name: str, raw: Any) -> int | float:
    low, high, whole = _RANGES[ALIASES.get(name, name)]
    kind = "a whole number" if whole else "a number"
    expected = f"expected {kind} from {low:g} to {high:g}"
    if isinstance(raw, bool):
        raise RuleError(name, f"{expected}, got {raw!r}")
    try:
        value = float(str(raw).strip()) if not isinstance(raw, (int, float)) else float(raw)
    except ValueError:
        raise RuleError(name, f"{expected}, got {str(raw)[:40]!r}") from None
    if not math.isfinite(value) or not low <= value <= high or (whole and not value.is_integer()):
        raise RuleError(name, f"{expected}, got {str(raw)[:40]}")
    return int(value) if whole else value


def parse_overrides(raw: Mapping[str, Any], *, preset_names: Sequence[str] = (PRESET_KEY,)) -> dict[str, Any]:
    """The rule parameters among ``raw`` (others are ignored), checked, under their canonical names.

    ``preset_names`` are the spellings accepted for the preset (the download's
    query also takes ``preset``). Raises :class:`RuleError` for a bad value or
    for a rule given under two names.
    """
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if value is None or value == "":
            continue
        if key in preset_names:
            name = str(value).strip().lower()
            if name not in PRESETS:
                raise RuleError(key, f"{name[:40]!r} is not a preset; use one of {', '.join(PRESETS)}")
            out[PRESET_KEY] = name
        elif key in RULE_KEYS or key in ALIASES:
            canonical = ALIASES.get(key, key)
            if canonical in out:
                raise RuleError(key, f"given twice (as {key} and as {canonical}); send one")
            out[canonical] = _rule_value(key, value)
    return out


def resolve(base: CueRules, *layers: Mapping[str, Any]) -> CueRules:
    """``base`` with each layer of overrides applied in turn.

    A layer's preset replaces everything before it; its rule values then change
    single rules. A rule value on top of the rules turned off (preset ``none``)
    turns them back on, from the default rules.
    """
    rules = base
    for layer in layers:
        if PRESET_KEY in layer:
            rules = PRESETS[layer[PRESET_KEY]]
        values = {k: v for k, v in layer.items() if k in RULE_KEYS}
        if values:
            rules = replace(rules if rules.enabled else DEFAULT_RULES, **values)
    check(rules)
    return rules


def check(rules: CueRules) -> None:
    for f in fields(CueRules):
        if f.name in _RANGES:
            _rule_value(f.name, getattr(rules, f.name))
    if rules.min_cue_duration_s > rules.max_cue_duration_s:
        raise RuleError(
            "min_cue_duration_s",
            f"{rules.min_cue_duration_s:g} s is longer than max_cue_duration_s ({rules.max_cue_duration_s:g} s)",
        )


# --- text: tokens and widths ---------------------------------------------------


@dataclass(frozen=True)
class Token:
    """A word (or a CJK character) with its time; ``space`` says whether a space goes before it."""

    text: str
    start: float
    end: float
    space: bool = True
    timed: bool = False  # the time is the word's own, not a share of the segment's


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    lines: tuple[tuple[Token, ...], ...]

    @property
    def text(self) -> str:
        return "\n".join(join(line) for line in self.lines)

    @property
    def tokens(self) -> tuple[Token, ...]:
        return tuple(t for line in self.lines for t in line)


def join(tokens: Sequence[Token]) -> str:
    return "".join((" " if t.space and i else "") + t.text for i, t in enumerate(tokens))


def _char_width(ch: str) -> int:
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


@functools.lru_cache(maxsize=4096)
def width(text: str) -> int:
    """Columns ``text`` takes on screen: wide CJK characters two, combining marks none."""
    return sum(_char_width(ch) for ch in text)


def _is_cjk(ch: str) -> bool:
    # Scripts written without spaces between words: wide CJK characters, Thai,
    # Lao, Khmer and Myanmar.
    o = ord(ch)
    return unicodedata.east_asian_width(ch) in ("W", "F") or 0x0E00 <= o <= 0x0EFF or 0x1000 <= o <= 0x109F or 0x1780 <= o <= 0x17FF


# Punctuation that must not start a line (closing) or end one (opening), CJK and Latin.
_CLOSING = set("、。，．！？：；）」』】〕〉》〗〙〛ー・…,.!?:;)]}%'\"”’")
_OPENING = set("（「『【〔〈《〖〘〚([{\"“‘")
_SENTENCE_END = set(".!?。！？…")
_CLAUSE_END = set(",;:、，；：—–")


def _pieces(word: str) -> list[str]:
    """``word`` cut between its CJK characters, punctuation kept with its neighbour."""
    if not any(_is_cjk(ch) for ch in word):
        return [word]
    out: list[str] = []
    pending = ""  # opening punctuation, waiting for the character it opens
    for ch in word:
        if ch in _OPENING:
            pending += ch
            continue
        last = out[-1][-1] if out else ""
        if out and (ch in _CLOSING or not (_is_cjk(ch) or _is_cjk(last) or last in _CLOSING)):
            out[-1] += pending + ch  # closing punctuation, or a run of Latin letters or digits in CJK text
        else:
            out.append(pending + ch)
        pending = ""
    if pending:
        if out:
            out[-1] += pending
        else:
            out.append(pending)
    return out


def _spread(pieces: Sequence[str], start: float, end: float, first_space: bool, timed: bool) -> list[Token]:
    """Tokens for ``pieces`` of one word, its time shared in proportion to their characters."""
    total = sum(max(1, len(p)) for p in pieces)
    out, done = [], 0
    for i, piece in enumerate(pieces):
        t0 = start + (end - start) * done / total
        done += max(1, len(piece))
        t1 = start + (end - start) * done / total
        out.append(Token(piece, t0, t1, first_space if i == 0 else False, timed))
    return out


def _squash(text: str) -> str:
    return "".join(text.split())


def tokens_of(seg: Segment, max_chars: int = 0) -> list[Token]:
    """The segment's words as tokens, timed by the words when they spell its text.

    CJK runs are cut into characters when there are no word times, and when a
    timed word is wider than ``max_chars``.
    """
    text = " ".join(strip_overrides(seg.text).split())
    start, end = seg.start, max(seg.end, seg.start)
    words = [w for w in (seg.words or ()) if w.word.strip()]
    if words and _squash("".join(w.word for w in words)) == _squash(text):
        out: list[Token] = []
        pos = 0
        for w in words:
            # Spacing comes from the text: some decoders put no space before a
            # word, others before every one.
            space = False
            while pos < len(text) and text[pos] == " ":
                space, pos = True, pos + 1
            need = len(_squash(w.word))
            while need and pos < len(text):
                need -= text[pos] != " "
                pos += 1
            # Within the segment, and never before the word before (decoders overlap words a little).
            w_start = min(max(w.start, start, out[-1].end if out else start), end)
            w_end = min(max(w.end, w_start), end)
            piece_text = _squash(w.word)
            cut = _pieces(piece_text) if max_chars and width(piece_text) > max_chars else [piece_text]
            out.extend(_spread(cut, w_start, w_end, space, True))
        return _glue(out)
    pieces: list[tuple[str, bool]] = []
    for word in text.split(" "):
        if word:
            pieces.extend((p, i == 0) for i, p in enumerate(_pieces(word)))
    total = sum(len(p) for p, _ in pieces) or 1
    done = 0
    out = []
    for p, space in pieces:
        t0 = start + (end - start) * done / total
        done += len(p)
        out.append(Token(p, t0, start + (end - start) * done / total, space, False))
    return out


def _glue(tokens: list[Token]) -> list[Token]:
    """Words the decoder gave in pieces ("o" + "'clock") as one token: a line never breaks inside them.

    Only CJK characters, which have no spaces between words, stay apart.
    """
    out: list[Token] = []
    for t in tokens:
        if out and not t.space and not (_is_cjk(out[-1].text[-1]) or _is_cjk(t.text[0])):
            prev = out[-1]
            out[-1] = Token(prev.text + t.text, prev.start, max(prev.end, t.end), prev.space, prev.timed and t.timed)
        else:
            out.append(t)
    return out


# --- laying out one cue in lines ----------------------------------------------------


def _break_cost(tokens: Sequence[Token], i: int) -> float:
    """How bad a break before ``tokens[i]`` is: after punctuation is good, inside a number poor."""
    before = tokens[i - 1].text
    if not tokens[i].space:
        cost = 0.6  # between CJK characters: allowed, but a word boundary is no better known
    else:
        cost = 1.0
    if before[-1] in _SENTENCE_END:
        cost = 0.0
    elif before[-1] in _CLAUSE_END:
        cost = min(cost, 0.3)
    elif before[-1].isdigit() and tokens[i].text[:1].isalpha():
        cost += 0.5  # "10 | km"
    elif len(before) <= 3 and before.isalpha() and before.islower():
        cost += 0.2  # after a short function word ("a", "the", "of")
    return cost


def _widths(tokens: Sequence[Token]) -> tuple[list[int], list[int]]:
    """Prefix sums of token widths and of the spaces before tokens, for line widths in O(1)."""
    tw, sp = [0], [0]
    for t in tokens:
        tw.append(tw[-1] + width(t.text))
        sp.append(sp[-1] + (1 if t.space else 0))
    return tw, sp


def layout(tokens: Sequence[Token], rules: CueRules) -> tuple[tuple[Token, ...], ...] | None:
    """``tokens`` in the fewest lines that fit, balanced; None when they need more than the rules allow.

    A line is at most ``max_chars_per_line`` wide, except a line holding a
    single wider token. Among layouts with the fewest lines, the one with the
    most even lines and the best break points (after punctuation) wins.
    """
    n = len(tokens)
    if n == 0:
        return ()
    limit = rules.max_chars_per_line
    tw, sp = _widths(tokens)

    def line_width(i: int, j: int) -> int:
        # the spaces between the line's tokens, not the one before its first
        return tw[j] - tw[i] + sp[j] - sp[i + 1]

    def fits(i: int, j: int) -> bool:
        return j - i == 1 or line_width(i, j) <= limit

    if fits(0, n):
        return (tuple(tokens),)
    total = line_width(0, n)
    for count in range(2, rules.max_lines_per_cue + 1):
        target = total / count
        # best[k][j]: (cost, breaks) of the first j tokens in k lines
        best: list[dict[int, tuple[float, tuple[int, ...]]]] = [{0: (0.0, ())}]
        for k in range(1, count + 1):
            row: dict[int, tuple[float, tuple[int, ...]]] = {}
            for i, (cost_i, breaks) in best[k - 1].items():
                ends = (n,) if k == count else range(i + 1, n)
                for j in ends:
                    if not fits(i, j):
                        break
                    w = line_width(i, j)
                    cost = cost_i + ((w - target) / max(limit, 1)) ** 2 + (_break_cost(tokens, j) * 0.15 if j < n else 0.0)
                    if j not in row or cost < row[j][0]:
                        row[j] = (cost, (*breaks, j))
            best.append(row)
        if n in best[count]:
            cuts = (0, *best[count][n][1])
            return tuple(tuple(tokens[a:b]) for a, b in zip(cuts, cuts[1:]))
    return None


# --- cutting a segment into cues ------------------------------------------------------------


class _Prefix:
    """Widths and lengths of runs of a segment's tokens in O(1), and whether a run fits a cue."""

    def __init__(self, tokens: Sequence[Token], rules: CueRules) -> None:
        self.rules = rules
        self.tw, self.sp = _widths(tokens)
        self.chars = [0]
        for t in tokens:
            self.chars.append(self.chars[-1] + len(t.text) + (1 if t.space else 0))
        self.reach = [self.tw[e] + self.sp[e] for e in range(len(tokens) + 1)]

    def text_len(self, i: int, j: int) -> int:
        """len() of the run as one line of text."""
        return self.chars[j] - self.chars[i] - (self.sp[i + 1] - self.sp[i])

    def fits(self, i: int, j: int) -> bool:
        """Whether tokens[i:j] fit in the allowed lines (greedy filling is optimal for the count)."""
        limit, pos = self.rules.max_chars_per_line, i
        for _ in range(self.rules.max_lines_per_cue):
            # The furthest e with width(pos..e) <= limit, at least one token.
            bound = limit + self.tw[pos] + self.sp[pos + 1]
            e = max(pos + 1, bisect.bisect_right(self.reach, bound, pos + 1, j + 1) - 1)
            if e >= j:
                return True
            pos = e
        return False


def split_segment(seg: Segment, rules: CueRules) -> list[Cue]:
    """One segment as cues that fit the rules, cut where the text and the timing read best.

    The first cue starts when the segment does and the last ends when it does;
    cues in between start and end with their words.
    """
    tokens = tokens_of(seg, rules.max_chars_per_line)
    n = len(tokens)
    if n == 0:
        return []
    capacity = rules.max_chars_per_line * rules.max_lines_per_cue
    runs = _Prefix(tokens, rules)

    def bounds(i: int, j: int) -> tuple[float, float]:
        return (seg.start if i == 0 else tokens[i].start, seg.end if j == n else tokens[j - 1].end)

    # best[j]: (cost, where the last cue starts) of cutting tokens[:j] into cues
    best: list[tuple[float, int]] = [(0.0, -1)] + [(math.inf, -1)] * n
    for j in range(1, n + 1):
        for i in range(j - 1, -1, -1):
            if not runs.fits(i, j):
                break  # more tokens in front will not fit either
            t0, t1 = bounds(i, j)
            duration = t1 - t0
            if j - i > 1 and duration > rules.max_cue_duration_s:
                break
            if best[i][0] == math.inf:
                continue
            chars = runs.text_len(i, j)
            cost = best[i][0] + 1.0 + 0.5 * (chars / capacity) ** 2
            if j < n:
                cost += 0.5 * _break_cost(tokens, j)
                pause = tokens[j].start - tokens[j - 1].end
                cost -= 0.5 * min(max(pause, 0.0), 1.0)
            if rules.min_cue_duration_s and duration < rules.min_cue_duration_s and n > 1:
                cost += 0.5
            if rules.max_cps and duration > 0 and chars / duration > rules.max_cps:
                cost += 0.2
            if cost < best[j][0]:
                best[j] = (cost, i)
    cues: list[Cue] = []
    j = n
    while j > 0:
        i = best[j][1]
        lines = layout(tokens[i:j], rules)
        assert lines is not None
        t0, t1 = bounds(i, j)
        cues.append(Cue(t0, max(t1, t0), lines))
        j = i
    cues.reverse()
    return cues


def retime(cues: Sequence[Cue], rules: CueRules) -> list[Cue]:
    """Keep cues ``min_gap_s`` apart and lengthen short or fast ones into the silence after them.

    A cue never starts earlier than it did, never overlaps the next, and never
    gets longer than ``max_cue_duration_s`` by being lengthened.
    """
    out = list(cues)
    for k, cue in enumerate(out):
        nxt = out[k + 1].start if k + 1 < len(out) else math.inf
        start, end = cue.start, cue.end
        if end - start > rules.max_cue_duration_s and len(cue.tokens) == 1:
            end = start + rules.max_cue_duration_s  # one word held on screen too long
        want = max(end, start + rules.min_cue_duration_s)
        if rules.max_cps:
            want = max(want, start + len(cue.text.replace("\n", " ")) / rules.max_cps)
        want = min(want, max(end, start + rules.max_cue_duration_s))
        end = max(end, min(want, nxt - rules.min_gap_s))
        limit = nxt - rules.min_gap_s
        if end > limit:
            # Too close to the next cue: leave the gap, unless that would leave
            # nothing of this cue (then the two just touch).
            end = limit if limit > start else min(end, nxt)
        out[k] = replace(cue, end=max(min(end, nxt), start))
    return out


def apply_rules(segments: Sequence[Segment], rules: CueRules) -> list[Cue]:
    """All segments as cues, split and laid out by ``rules`` and retimed."""
    ordered = sorted((s for s in segments if s.end >= s.start), key=lambda s: s.start)
    cues: list[Cue] = []
    floor = 0.0
    for seg in ordered:
        for cue in split_segment(seg, rules):
            # Segments that overlap a little (rounding in editors) must not give overlapping cues.
            start = max(cue.start, floor)
            cues.append(replace(cue, start=start, end=max(cue.end, start)))
            floor = cues[-1].end
    return retime(cues, rules)


def cue_segments(segments: Sequence[Segment], rules: CueRules) -> list[Segment]:
    """``segments`` for a subtitle writer: one per cue, lines joined by newlines; raw when the rules are off."""
    if not rules.enabled:
        return list(segments)
    return [Segment(start=c.start, end=c.end, text=c.text) for c in apply_rules(segments, rules)]
