"""The fallback encoder cache: bounded in bytes, least recently stored out first."""

from __future__ import annotations

import numpy as np
import pytest

from batching.encoder_cache import EncoderCache


def out(value: float, rows: int = 10) -> np.ndarray:
    return np.full((rows, 4), value, dtype=np.float32)  # 160 bytes at 10 rows


def test_take_answers_a_copy_once() -> None:
    cache = EncoderCache(1000)
    kept = out(1.0)
    assert cache.put(("job", 0), kept)
    kept[:] = 7.0  # the model reuses its buffers: the cache must not see that
    got = cache.take(("job", 0))
    assert got is not None and float(got[0, 0]) == 1.0
    assert cache.take(("job", 0)) is None
    st = cache.stats
    assert (st.hits, st.misses, st.entries, st.bytes) == (1, 1, 0, 0)


def test_bounded_in_bytes_oldest_out_first() -> None:
    cache = EncoderCache(400)  # two entries of 160 bytes fit, three do not
    for i in range(3):
        cache.put(("job", i), out(float(i)))
    assert not cache.peek(("job", 0))
    assert cache.peek(("job", 1)) and cache.peek(("job", 2))
    st = cache.stats
    assert st.evicted == 1 and st.bytes == 320 and st.bytes <= cache.max_bytes


def test_an_entry_bigger_than_the_bound_is_not_kept() -> None:
    cache = EncoderCache(100)
    assert not cache.put(("job", 0), out(1.0))
    assert cache.stats.entries == 0
    assert not EncoderCache(0).put(("job", 0), out(1.0, rows=1))


def test_storing_the_same_key_again_replaces_it() -> None:
    cache = EncoderCache(1000)
    cache.put(("job", 0), out(1.0))
    cache.put(("job", 0), out(2.0))
    assert cache.stats.bytes == 160
    got = cache.take(("job", 0))
    assert got is not None and float(got[0, 0]) == 2.0


def test_a_cancelled_jobs_entries_go() -> None:
    cache = EncoderCache(10_000)
    cache.put(("a", 0), out(1.0))
    cache.put(("a", 1), out(1.0))
    cache.put(("b", 0), out(1.0))
    assert cache.discard_job("a") == 2
    assert cache.stats.entries == 1 and cache.peek(("b", 0))


def test_negative_bound_is_refused() -> None:
    with pytest.raises(ValueError):
        EncoderCache(-1)
