from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from batching.fair import FairQueue


@dataclass(frozen=True)
class Item:
    owner: str
    job_id: str
    n: int


def make_queue() -> FairQueue[Item]:
    return FairQueue(lambda i: i.owner, lambda i: i.job_id)


def names(items: list[Item]) -> list[str]:
    return [f"{i.job_id}#{i.n}" for i in items]


def test_small_owner_is_not_starved_by_a_big_one() -> None:
    q = make_queue()
    for n in range(20):
        q.push(Item("A", "a1", n))
    for n in range(2):
        q.push(Item("B", "b1", n))
    assert names(q.pop_batch(4)) == ["a1#0", "b1#0", "a1#1", "b1#1"]
    # B is done, A goes on alone, FIFO
    assert names(q.pop_batch(3)) == ["a1#2", "a1#3", "a1#4"]
    assert len(q) == 15


def test_jobs_of_one_owner_alternate_fifo_within_a_job() -> None:
    q = make_queue()
    for n in range(3):
        q.push(Item("A", "a1", n))
    q.push(Item("A", "a2", 0))
    for n in range(2):
        q.push(Item("B", "b1", n))
    assert names(q.pop_batch(10)) == ["a1#0", "b1#0", "a2#0", "b1#1", "a1#1", "a1#2"]
    assert len(q) == 0
    assert q.pop_batch(3) == []


def test_first_goes_ahead_of_its_own_job_only() -> None:
    q = make_queue()
    for n in range(3):
        q.push(Item("A", "a1", n))
    q.push(Item("B", "b1", 0))
    assert names(q.pop_batch(1)) == ["a1#0"]
    # a1#0 comes back (a retry): ahead of a1#1 and a1#2, but B's turn is B's
    q.push(Item("A", "a1", 0), first=True)
    assert q.position("a1") == 1
    assert names(q.pop_batch(4)) == ["b1#0", "a1#0", "a1#1", "a1#2"]


def test_owner_that_ran_empty_rejoins_at_the_back() -> None:
    q = make_queue()
    q.push(Item("A", "a1", 0))
    q.push(Item("B", "b1", 0))
    q.push(Item("B", "b1", 1))
    assert names(q.pop_batch(2)) == ["a1#0", "b1#0"]
    q.push(Item("A", "a1", 1))
    q.push(Item("C", "c1", 0))
    # rotation now: B (still had an item), then A, then C
    assert names(q.pop_batch(3)) == ["b1#1", "a1#1", "c1#0"]


def test_remove_job_and_remove_by_identity() -> None:
    q = make_queue()
    twin_a, twin_b = Item("A", "a1", 7), Item("A", "a1", 7)  # equal, not identical
    q.push(twin_a)
    q.push(Item("A", "a2", 0))
    q.push(twin_b)
    q.push(Item("B", "b1", 0))
    assert q.remove(twin_b) is True
    assert q.remove(twin_b) is False
    assert q.remove(Item("Z", "z", 0)) is False
    assert len(q) == 3
    assert names(q.remove_job("a2")) == ["a2#0"]
    assert q.remove_job("a2") == []
    assert "a2" not in q and "a1" in q
    batch = q.pop_batch(5)
    assert batch[0] is twin_a and names(batch) == ["a1#7", "b1#0"]
    assert len(q) == 0


def test_a_job_id_cannot_change_owner() -> None:
    q = make_queue()
    q.push(Item("A", "j", 0))
    with pytest.raises(ValueError, match="'j'"):
        q.push(Item("B", "j", 1))


def test_pop_batch_rejects_negative() -> None:
    with pytest.raises(ValueError):
        make_queue().pop_batch(-1)


def test_position_examples() -> None:
    q = make_queue()
    for n in range(20):
        q.push(Item("A", "a1", n))
    for n in range(2):
        q.push(Item("B", "b1", n))
    assert q.position("a1") == 0
    assert q.position("b1") == 1
    assert q.position("nope") is None


def test_position_matches_the_pop_order_on_random_queues() -> None:
    rng = random.Random(7)
    for _ in range(200):
        q = make_queue()
        for n in range(rng.randint(1, 40)):
            owner = rng.choice("ABCD")
            q.push(Item(owner, f"{owner}{rng.randint(1, 3)}", n))
        if rng.random() < 0.5:  # rotate a bit so the front is not the first pushed
            q.pop_batch(rng.randint(0, 5))
        jobs = {f"{o}{k}" for o in "ABCD" for k in range(1, 4)}
        expected = {job: q.position(job) for job in jobs}
        order = [i.job_id for i in q.pop_batch(len(q))]
        for job in jobs:
            first = order.index(job) if job in order else None
            assert expected[job] == first, (job, order)
