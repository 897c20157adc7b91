"""Word error rate for comparing transcripts with references.

References come in different styles (LibriSpeech: upper case, no punctuation;
others: sentence case with punctuation), so both sides are normalised the same
way before counting edits. Not a test module.
"""

from __future__ import annotations

import re

__all__ = ["normalize", "wer"]

# Apostrophes are dropped, not turned into spaces, so "QUILTER'S" and
# "Quilter's" both become one word "quilters".
_APOSTROPHES = re.compile(r"['\u2019\u02bc`]")
# A number keeps its inner "." and "," (3.5, 1,000); any other run of letters
# and digits is a word; everything else separates words.
_TOKEN = re.compile(r"\d+(?:[.,]\d+)+|[^\W_]+")


def normalize(text: str) -> list[str]:
    """Lower-cased words without punctuation; numbers as written."""
    return _TOKEN.findall(_APOSTROPHES.sub("", text.lower()))


def wer(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance divided by the reference's word count.

    With an empty reference the answer is the number of inserted words (0.0
    when both are empty). It can exceed 1 when the hypothesis adds many words.
    """
    ref = normalize(reference)
    hyp = normalize(hypothesis)
    if not ref:
        return float(len(hyp))
    # One row of the edit-distance table at a time.
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / len(ref)
