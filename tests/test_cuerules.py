"""Subtitle line rules (app/media/cuerules.py): hard cases and properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.media.cuerules import (
    DEFAULT_RULES,
    PRESETS,
    CueRules,
    RuleError,
    apply_rules,
    cue_segments,
    layout,
    parse_overrides,
    resolve,
    split_segment,
    tokens_of,
    width,
)
from batching.types import Segment, Word

RULES = DEFAULT_RULES


def timed(text: str, start: float = 0.0, step: float = 0.3) -> Segment:
    """A segment whose words are timed one after another, ``step`` seconds each."""
    words = tuple(Word(start + i * step, start + (i + 1) * step - 0.05, " " + w, 0.9) for i, w in enumerate(text.split()))
    return Segment(start, start + len(words) * step, text, words=words)


def lines_of(cues: list) -> list[str]:
    return [line for c in cues for line in c.text.split("\n")]


def test_short_segment_is_one_cue_with_its_own_times() -> None:
    cues = apply_rules([Segment(1.0, 3.0, "  Hello   there. ")], RULES)
    assert [(c.start, c.end, c.text) for c in cues] == [(1.0, 3.0, "Hello there.")]


def test_two_lines_are_balanced_and_never_over_the_limit() -> None:
    text = "one two three four five six seven eight nine ten eleven twelve"
    (cue,) = apply_rules([Segment(0, 5, text)], RULES)
    top, bottom = cue.text.split("\n")
    assert abs(len(top) - len(bottom)) <= 8
    assert " ".join([top, bottom]) == text


def test_long_text_becomes_several_cues_split_at_word_times() -> None:
    text = " ".join(f"word{i}" for i in range(60))
    seg = timed(text)
    cues = apply_rules([seg], RULES)
    assert len(cues) > 2
    assert all(width(line) <= 42 for line in lines_of(cues))
    assert all(len(c.text.split("\n")) <= 2 for c in cues)
    # Inner cue edges are the words' own times.
    starts = {w.start for w in seg.words or ()}
    assert all(c.start in starts for c in cues[1:])
    assert " ".join(c.text.replace("\n", " ") for c in cues) == text


def test_prefers_a_break_after_punctuation() -> None:
    text = "We went to the park yesterday, and then we had lunch by the river."
    (cue,) = apply_rules([Segment(0, 6.5, text)], RULES)
    assert cue.text.split("\n")[0].endswith("yesterday,")


def test_cues_split_at_sentence_ends() -> None:
    text = "This is the first sentence of the story here. And this is the second one, which goes on for a while longer."
    cues = apply_rules([timed(text)], RULES)
    assert cues[0].text.replace("\n", " ").endswith("here.")


def test_one_very_long_word_stays_whole_on_its_own_line() -> None:
    word = "Pneumonoultramicroscopicsilicovolcanoconiosis" * 2
    cues = apply_rules([Segment(0, 4, f"say {word} again")], RULES)
    assert word in lines_of(cues)
    assert "".join(c.text.replace("\n", "").replace(" ", "") for c in cues) == f"say{word}again"


def test_url_is_never_cut() -> None:
    url = "https://example.org/some/very/long/path/to/a/page/that/goes/on.html?q=1&r=2"
    cues = apply_rules([Segment(0, 5, f"Read more at {url} today, please.")], RULES)
    assert url in lines_of(cues)


def test_numbers_stay_whole() -> None:
    text = "The company reported revenue of 1,234,567.89 dollars in 2024, up 3.5 percent from the year before."
    cues = apply_rules([Segment(0, 6, text)], RULES)
    words = [w for c in cues for w in c.text.split()]
    assert "1,234,567.89" in words and "3.5" in words
    assert not any(line.rstrip().endswith(("1,234,567.89", "3.5")) for line in lines_of(cues))


def test_cjk_without_spaces_splits_between_characters_by_width() -> None:
    text = "我们今天去公园散步，天气非常好，阳光明媚，大家都很开心。然后我们一起吃了午饭，聊了很多有趣的事情。"
    cues = apply_rules([Segment(0, 6, text)], RULES)
    assert len(cues) >= 2
    assert all(width(line) <= 42 for line in lines_of(cues))
    assert "".join(c.text.replace("\n", "") for c in cues) == text  # no spaces added, nothing lost
    # Closing punctuation never starts a line; a line break falls after a comma.
    assert not any(line[0] in "，。" for line in lines_of(cues))
    assert cues[0].text.split("\n")[0].endswith("，")


def test_width_counts_wide_and_combining_characters() -> None:
    assert width("abc") == 3
    assert width("日本語") == 6
    assert width("e\u0301") == 1  # e + combining acute


def test_japanese_mixed_with_latin_keeps_latin_words_whole() -> None:
    text = "今日はNetflixで映画を見ました。とても面白かったです。明日もまた見たいと思っています。"
    cues = apply_rules([Segment(0, 6, text)], RULES)
    assert any("Netflix" in line for line in lines_of(cues))
    assert "".join(c.text.replace("\n", "") for c in cues) == text


def test_rtl_text_keeps_logical_order() -> None:
    text = "שלום לכולם, היום נדבר על הדרך שבה אנחנו כותבים כתוביות טובות לסרטים ולסדרות."
    (cue,) = apply_rules([Segment(0, 5, text)], RULES)
    assert cue.text.replace("\n", " ") == text
    assert all(width(line) <= 42 for line in cue.text.split("\n"))
    arabic = "مرحبا بكم جميعا في هذا البرنامج الجديد عن كتابة الترجمات الجيدة للأفلام والمسلسلات"
    cues = apply_rules([Segment(0, 6, arabic)], RULES)
    assert " ".join(c.text.replace("\n", " ") for c in cues) == arabic


def test_without_words_times_follow_characters() -> None:
    text = " ".join(["abcd"] * 40)  # 199 characters over 10 s
    cues = split_segment(Segment(0, 10, text), RULES)
    assert cues[0].start == 0 and cues[-1].end == 10
    for a, b in zip(cues, cues[1:]):
        assert a.end <= b.start
    # Each cue's share of time follows its share of characters (within a gap).
    for c in cues:
        share = len(c.text.replace("\n", " ")) / len(text) * 10
        assert abs((c.end - c.start) - share) < 0.1


def test_edited_text_that_no_longer_matches_its_words_falls_back_to_characters() -> None:
    seg = timed("the original words here")
    edited = Segment(seg.start, seg.end, "a completely different text", words=seg.words)
    tokens = tokens_of(edited)
    assert [t.text for t in tokens] == ["a", "completely", "different", "text"]
    assert not any(t.timed for t in tokens)
    assert all(t.timed for t in tokens_of(seg))


def test_max_duration_splits_slow_speech() -> None:
    seg = timed("slow words spoken over a long time", step=2.0)  # 7 words, 14 s
    cues = apply_rules([seg], RULES)
    assert all(c.end - c.start <= 7.0 + 1e-9 for c in cues)
    assert len(cues) >= 2


def test_min_duration_and_reading_speed_lengthen_into_silence() -> None:
    a = Segment(0.0, 0.3, "Hi.")
    b = Segment(0.5, 1.0, "This sentence is read far too fast.")
    c = Segment(10.0, 11.0, "Later.")
    cues = apply_rules([a, b, c], RULES)
    assert cues[0].end == pytest.approx(0.5 - RULES.min_gap_s)  # as long as the gap allows
    assert cues[1].end - cues[1].start >= len("This sentence is read far too fast.") / RULES.max_cps - 1e-9
    assert cues[1].end <= cues[2].start - RULES.min_gap_s
    assert cues[2].end - cues[2].start >= RULES.min_cue_duration_s


def test_gap_between_touching_cues() -> None:
    cues = apply_rules([Segment(0, 2, "First."), Segment(2.0, 4, "Second.")], RULES)
    assert cues[1].start - cues[0].end == pytest.approx(RULES.min_gap_s)


def test_overlapping_segments_never_give_overlapping_cues() -> None:
    cues = apply_rules([Segment(0, 2.005, "First."), Segment(2.0, 4, "Second.")], RULES)
    assert cues[0].end <= cues[1].start


def test_rules_off_pass_segments_through() -> None:
    segs = [Segment(0, 5, "x " * 100)]
    assert cue_segments(segs, PRESETS["none"]) == segs


def test_more_lines_and_narrower_lines() -> None:
    rules = CueRules(max_chars_per_line=20, max_lines_per_cue=3)
    text = "one two three four five six seven eight nine ten eleven twelve thirteen"
    cues = apply_rules([Segment(0, 6, text)], rules)
    assert all(width(line) <= 20 for line in lines_of(cues))
    assert all(len(c.lines) <= 3 for c in cues)
    assert len(cues) == 2 or len(cues[0].lines) == 3


def test_layout_reports_what_does_not_fit() -> None:
    tokens = tokens_of(Segment(0, 1, "aaaa " * 30))
    assert layout(tokens, RULES) is None
    assert layout(tokens[:3], RULES) is not None


def test_parse_overrides_aliases_and_errors() -> None:
    assert parse_overrides({"max_line_width": "30", "max_line_count": 3, "other": "x"}) == {"max_chars_per_line": 30, "max_lines_per_cue": 3}
    assert parse_overrides({"preset": "BBC"}, preset_names=("preset",)) == {"subtitle_preset": "bbc"}
    assert parse_overrides({"max_cps": "0", "min_gap_s": "0.1"}) == {"max_cps": 0.0, "min_gap_s": 0.1}
    for bad in ({"max_chars_per_line": "5"}, {"max_chars_per_line": "4.5x"}, {"max_lines_per_cue": "1.5"}, {"max_cps": "nan"}, {"subtitle_preset": "vogue"}):
        with pytest.raises(RuleError) as err:
            parse_overrides(bad)
        assert err.value.field == next(iter(bad))
    with pytest.raises(RuleError, match="twice"):
        parse_overrides({"max_line_width": 30, "max_chars_per_line": 32})


def test_resolve_layers() -> None:
    job = parse_overrides({"subtitle_preset": "bbc", "max_lines_per_cue": "1"})
    rules = resolve(DEFAULT_RULES, job)
    assert (rules.max_chars_per_line, rules.max_lines_per_cue, rules.max_cps) == (37, 1, 15.0)
    assert not resolve(DEFAULT_RULES, job, {"subtitle_preset": "none"}).enabled
    back_on = resolve(PRESETS["raw"], {"max_chars_per_line": 30})
    assert back_on.enabled and back_on.max_chars_per_line == 30 and back_on.max_lines_per_cue == 2
    with pytest.raises(RuleError, match="min_cue_duration_s"):
        resolve(DEFAULT_RULES, {"min_cue_duration_s": 8.0})


# --- properties -------------------------------------------------------------------------

_word = st.text(alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyzABCÉ0123456789.,?!-'/:"), min_size=1, max_size=60)
_rules = st.builds(
    CueRules,
    max_chars_per_line=st.integers(10, 60),
    max_lines_per_cue=st.integers(1, 3),
    max_cue_duration_s=st.floats(1, 10),
    min_cue_duration_s=st.floats(0, 1),
    min_gap_s=st.floats(0, 0.2),
    max_cps=st.sampled_from([0.0, 15.0, 17.0, 25.0]),
)


@st.composite
def _segments(draw: st.DrawFn) -> list[Segment]:
    """Segments in time order, some with word times, some without."""
    out, t = [], draw(st.floats(0, 5))
    for _ in range(draw(st.integers(1, 4))):
        words = draw(st.lists(_word, min_size=1, max_size=40))
        with_times = draw(st.booleans())
        if with_times:
            gaps = draw(st.lists(st.floats(0, 2), min_size=len(words), max_size=len(words)))
            lens = draw(st.lists(st.floats(0, 1.5), min_size=len(words), max_size=len(words)))
            # Some words come in pieces, the way decoders time "o'clock" (" o" + "'clock").
            spaced = [True] + draw(st.lists(st.booleans(), min_size=len(words) - 1, max_size=len(words) - 1))
            timed_words, cur = [], t
            for w, g, n, sp in zip(words, gaps, lens, spaced):
                timed_words.append(Word(cur + g, cur + g + n, (" " if sp else "") + w, 0.5))
                cur += g + n
            seg = Segment(t, cur, "".join(w.word for w in timed_words).strip(), words=tuple(timed_words))
        else:
            seg = Segment(t, t + draw(st.floats(0.01, 30)), " ".join(words))
        out.append(seg)
        t = seg.end + draw(st.floats(0, 3))
    return out


@settings(max_examples=150, deadline=None)
@given(_segments(), _rules)
def test_resplitting_keeps_every_word_once_and_in_order(segments: list[Segment], rules: CueRules) -> None:
    cues = apply_rules(segments, rules)
    assert [w for c in cues for w in c.text.split()] == [w for s in segments for w in s.text.split()]
    for c in cues:
        assert len(c.lines) <= rules.max_lines_per_cue
        for line in c.lines:
            assert len(line) == 1 or width(" ".join(t.text for t in line)) <= rules.max_chars_per_line


@settings(max_examples=150, deadline=None)
@given(_segments(), _rules)
def test_cue_times_are_monotonic_and_split_cues_stay_in_their_segment(segments: list[Segment], rules: CueRules) -> None:
    for seg in segments:
        cues = split_segment(seg, rules)
        for c in cues:
            assert seg.start <= c.start <= c.end <= seg.end
            if len(c.tokens) > 1:
                assert c.end - c.start <= rules.max_cue_duration_s + 1e-9
        for a, b in zip(cues, cues[1:]):
            assert a.end <= b.start
    cues = apply_rules(segments, rules)
    for a, b in zip(cues, cues[1:]):
        assert a.start <= a.end <= b.start
    assert all(c.start >= segments[0].start for c in cues)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from("日本語の字幕は難しい。、漢字かなカナabc 1（）「」()[]\"'"), min_size=1, max_size=300))
def test_cjk_text_loses_nothing(text: str) -> None:
    cues = apply_rules([Segment(0, 20, text)], RULES)
    assert "".join("".join(c.text.split()) for c in cues) == "".join(text.split())
    assert all(len(line) == 1 or width(" ".join(t.text for t in line)) <= 42 for c in cues for line in c.lines)


def test_a_word_the_decoder_gave_in_pieces_is_never_split() -> None:
    # Whisper times "o'clock" as " o" + "'clock", "3.5%" as " 3.5" + "%".
    pieces = [" It", " is", " six", " o", "'clock", " and", " up", " 3.5", "%"] * 6
    words = tuple(Word(i * 0.3, i * 0.3 + 0.25, w, 0.9) for i, w in enumerate(pieces))
    text = "".join(pieces).strip()
    cues = apply_rules([Segment(0, len(pieces) * 0.3, text, words=words)], CueRules(max_chars_per_line=10, max_lines_per_cue=1))
    got = [w for c in cues for w in c.text.split()]
    assert got == text.split()
    assert "o'clock" in got and "3.5%" in got
