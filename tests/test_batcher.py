from __future__ import annotations

import asyncio
import logging
import random
import threading
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import pytest

from batching.batcher import (
    BatcherClosed,
    BatcherOptions,
    BatcherStats,
    MicroBatcher,
    ResultCountMismatch,
    default_is_oom,
)
from batching.clock import FakeClock, MonotonicClock

# Only a safety net so a broken batcher fails the test instead of hanging it;
# nothing here waits for time to pass.
GUARD_S = 5.0


@dataclass(frozen=True)
class W:
    owner: str
    job_id: str
    n: int

    def __str__(self) -> str:
        return f"{self.job_id}#{self.n}"


def answer(item: W) -> str:
    return f"done {item}"


class FakeModel:
    """``run``/``prepare`` that record what they saw; ``gate`` holds ``run``."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.batches: list[list[W]] = []
        self.prepared: list[list[W]] = []
        self.run_threads: set[int] = set()
        self.prepare_threads: set[int] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.entered: asyncio.Queue[list[W]] = asyncio.Queue()
        self.prepare_entered: asyncio.Queue[list[W]] = asyncio.Queue()
        self.behaviour: Callable[[list[W]], Sequence[Any]] = lambda items: [answer(i) for i in items]
        self.prepare_error: BaseException | None = None  # raised once by the next prepare

    def prepare(self, items: list[W]) -> tuple[str, list[W]]:
        self.prepare_threads.add(threading.get_ident())
        error, self.prepare_error = self.prepare_error, None
        if error is not None:
            raise error
        self.prepared.append(list(items))
        self.loop.call_soon_threadsafe(self.prepare_entered.put_nowait, list(items))
        return ("prepared", list(items))

    def run(self, items: list[W], prepared: Any) -> Sequence[Any]:
        self.run_threads.add(threading.get_ident())
        # the payload must be the one prepared for exactly these items
        assert prepared == items or prepared == ("prepared", items), (prepared, items)
        self.batches.append(list(items))
        self.loop.call_soon_threadsafe(self.entered.put_nowait, list(items))
        assert self.gate.wait(GUARD_S), "test never opened the gate"
        return self.behaviour(items)

    def sizes(self) -> list[int]:
        return [len(b) for b in self.batches]


Factory = Callable[..., Awaitable["tuple[MicroBatcher[W, Any, str], FakeModel]"]]


@pytest.fixture
async def make() -> AsyncIterator[Factory]:
    made: list[tuple[MicroBatcher[W, Any, str], FakeModel]] = []

    async def factory(*, with_prepare: bool = False, **kwargs: Any) -> tuple[MicroBatcher[W, Any, str], FakeModel]:
        model = FakeModel()
        kwargs.setdefault("clock", FakeClock())
        kwargs["options"] = BatcherOptions(
            max_batch_size=kwargs.pop("max_batch_size", 16),
            max_wait_s=kwargs.pop("max_wait_s", 0.01),
            prepare_threads=kwargs.pop("prepare_threads", 2),
            max_batch_weight=kwargs.pop("max_batch_weight", 0),
        )
        batcher: MicroBatcher[W, Any, str] = MicroBatcher(
            model.run, prepare=model.prepare if with_prepare else None, **kwargs
        )
        await batcher.start()
        made.append((batcher, model))
        return batcher, model

    yield factory
    for batcher, model in made:
        model.gate.set()
        await asyncio.wait_for(batcher.stop(), GUARD_S)


def submit_all(batcher: MicroBatcher[W, Any, str], items: list[W]) -> list[asyncio.Task[str]]:
    return [asyncio.create_task(batcher.submit(i)) for i in items]


async def results(tasks: Sequence[asyncio.Future[Any]]) -> list[Any]:
    return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), GUARD_S)


async def next_batch(queue: asyncio.Queue[list[W]]) -> list[W]:
    return await asyncio.wait_for(queue.get(), GUARD_S)


def items(owner: str, job: str, count: int, start: int = 0) -> list[W]:
    return [W(owner, job, n) for n in range(start, start + count)]


# ------------------------------------------------------------ closing a batch


async def test_full_batch_goes_at_once_and_size_is_capped(make: Factory) -> None:
    clock = FakeClock()
    batcher, model = await make(clock=clock, max_batch_size=4, max_wait_s=1.0)
    work = items("A", "a", 10)
    tasks = submit_all(batcher, work)
    # two full batches run without the clock moving at all
    assert await results(tasks[:8]) == [answer(i) for i in work[:8]]
    assert model.sizes() == [4, 4]
    assert clock.now() == 0.0
    # the remaining two wait for the timer
    assert await asyncio.wait_for(clock.wait_for_sleeper(), GUARD_S) == 1.0
    clock.advance_to(1.0)
    assert await results(tasks[8:]) == [answer(i) for i in work[8:]]
    assert model.sizes() == [4, 4, 2]
    stats = batcher.stats
    assert stats.batch_size_histogram == {4: 2, 2: 1}
    assert stats.batches_run == 3 and stats.items_run == 10 and stats.last_batch_size == 2


async def test_max_wait_runs_at_the_deadline_of_the_first_item(make: Factory) -> None:
    clock = FakeClock()
    batcher, model = await make(clock=clock, max_batch_size=8, max_wait_s=0.5)
    x, y = W("A", "a", 0), W("B", "b", 0)
    tx = asyncio.create_task(batcher.submit(x))
    assert await asyncio.wait_for(clock.wait_for_sleeper(), GUARD_S) == 0.5
    clock.advance_to(0.25)
    ty = asyncio.create_task(batcher.submit(y))
    # y's arrival does not restart the timer: it still ends at x's deadline
    assert await asyncio.wait_for(clock.wait_for_sleeper(0.5), GUARD_S) == 0.5
    assert model.batches == [] and batcher.stats.running == 0
    assert batcher.stats.queue_depth == 2
    clock.advance_to(0.5)
    assert await results([tx, ty]) == [answer(x), answer(y)]
    assert model.batches == [[x, y]]
    assert batcher.stats.total_wait_s == pytest.approx(0.5 + 0.25)


async def test_zero_wait_runs_at_once(make: Factory) -> None:
    batcher, model = await make(max_batch_size=8, max_wait_s=0.0)
    assert await asyncio.wait_for(batcher.submit(W("A", "a", 0)), GUARD_S) == "done a#0"


async def test_busy_model_closes_the_next_batch_just_in_time(make: Factory) -> None:
    clock = FakeClock()
    batcher, model = await make(clock=clock, max_batch_size=8, max_wait_s=0.0625)
    a, b, c, d = W("A", "a", 0), W("A", "a", 1), W("A", "a", 2), W("A", "a", 3)
    # batch [a] teaches the batcher that a batch takes 4 s
    model.gate.clear()
    ta = asyncio.create_task(batcher.submit(a))
    await asyncio.wait_for(clock.wait_for_sleeper(0.0625), GUARD_S)
    clock.advance_to(0.0625)
    assert await next_batch(model.entered) == [a]
    clock.advance_to(4.0625)
    model.gate.set()
    assert await results([ta]) == [answer(a)]
    # batch [b] runs from 4.125 and is expected to end at 8.125
    model.gate.clear()
    tb = asyncio.create_task(batcher.submit(b))
    await asyncio.wait_for(clock.wait_for_sleeper(4.125), GUARD_S)
    clock.advance_to(4.125)
    assert await next_batch(model.entered) == [b]
    tc = asyncio.create_task(batcher.submit(c))
    # c's own deadline (4.1875) passes, but the batch waits for the model
    assert await asyncio.wait_for(clock.wait_for_sleeper(8.125), GUARD_S) == 8.125
    clock.advance_to(4.1875)
    td = asyncio.create_task(batcher.submit(d))
    await asyncio.sleep(0)  # one turn so the task has pushed d (no time passes)
    await asyncio.wait_for(clock.wait_for_sleeper(8.125), GUARD_S)
    assert batcher.stats.queue_depth == 2 and len(model.batches) == 2
    clock.advance_to(8.125)
    model.gate.set()
    assert await results([tb, tc, td]) == [answer(b), answer(c), answer(d)]
    assert model.batches[2] == [c, d]


# -------------------------------------------------------------------- fairness


async def test_fair_order_across_owners_and_jobs(make: Factory) -> None:
    clock = FakeClock()
    batcher, model = await make(clock=clock, max_batch_size=4, max_wait_s=1.0)
    model.gate.clear()
    big = items("A", "a1", 20)
    small = items("B", "b1", 2)
    tasks = submit_all(batcher, big + small)
    assert await next_batch(model.entered) == [big[0], small[0], big[1], small[1]]
    model.gate.set()
    clock.advance_to(1.0)  # so the last, partial batch may go too
    await results(tasks)
    # then A alone, FIFO within its job
    assert [i for b in model.batches[1:] for i in b] == big[2:]


async def test_jobs_of_one_owner_alternate(make: Factory) -> None:
    clock = FakeClock()
    batcher, model = await make(clock=clock, max_batch_size=4, max_wait_s=1.0)
    model.gate.clear()
    tasks = submit_all(batcher, items("A", "a1", 3) + items("A", "a2", 3))
    assert [str(i) for i in await next_batch(model.entered)] == ["a1#0", "a2#0", "a1#1", "a2#1"]
    model.gate.set()
    clock.advance_to(1.0)
    await results(tasks)
    assert [str(i) for i in model.batches[1]] == ["a1#2", "a2#2"]


async def test_a_retry_goes_ahead_of_its_job_s_later_items(make: Factory) -> None:
    clock = FakeClock()
    batcher, model = await make(clock=clock, max_batch_size=1, max_wait_s=1.0)
    model.gate.clear()
    tasks = submit_all(batcher, items("A", "a1", 4))
    assert [str(i) for i in await next_batch(model.entered)] == ["a1#0"]
    await asyncio.sleep(0)  # a1#1 staged meanwhile; a1#2 and a1#3 still queued
    retry = asyncio.create_task(batcher.submit(W("A", "a1", 0), first=True))
    await asyncio.sleep(0)
    model.gate.set()
    clock.advance_to(1.0)
    await results([*tasks, retry])
    # the staged batch goes as it was; the retry is next, before a1#2 and a1#3
    assert [str(b[0]) for b in model.batches] == ["a1#0", "a1#1", "a1#0", "a1#2", "a1#3"]


async def test_queue_position(make: Factory) -> None:
    clock = FakeClock()
    batcher, model = await make(clock=clock, with_prepare=True, max_batch_size=2, max_wait_s=1.0)
    model.gate.clear()
    tasks = submit_all(batcher, items("P", "p", 2))
    assert await next_batch(model.entered) == items("P", "p", 2)
    tasks += submit_all(batcher, items("A", "a", 3) + items("B", "b", 1))
    await next_batch(model.prepare_entered)
    assert await next_batch(model.prepare_entered) == [W("A", "a", 0), W("B", "b", 0)]  # staged
    tasks += submit_all(batcher, items("C", "c", 1))  # queue: a#1, a#2, c#0
    await asyncio.sleep(0)  # one turn so the task has pushed (no time passes)
    assert batcher.queue_position("p") == 0  # running
    assert batcher.queue_position("a") == 0  # staged
    assert batcher.queue_position("c") == 3  # two staged, then a#1
    assert batcher.queue_position("nobody") is None
    assert batcher.stats.queue_depth == 5 and batcher.stats.running == 2
    model.gate.set()
    clock.advance_to(1.0)
    await results(tasks)
    assert batcher.queue_position("a") is None


# ----------------------------------------------------------------- cancelling


async def test_cancel_before_run_drops_the_item(make: Factory) -> None:
    clock = FakeClock()
    batcher, model = await make(clock=clock, with_prepare=True, max_batch_size=2, max_wait_s=1.0)
    model.gate.clear()
    a = items("A", "a", 2)
    b = items("B", "b", 2)
    c = W("C", "c", 0)
    ta = submit_all(batcher, a)
    assert await next_batch(model.entered) == a
    tb = submit_all(batcher, b)
    assert await next_batch(model.prepare_entered) == a
    assert await next_batch(model.prepare_entered) == b  # staged and prepared
    tc = asyncio.create_task(batcher.submit(c))
    await asyncio.sleep(0)  # one turn so the task has pushed c (no time passes)
    tb[0].cancel()  # staged
    tc.cancel()  # queued
    assert all(isinstance(r, asyncio.CancelledError) for r in await results([tb[0], tc]))
    # the staged batch is prepared again without the cancelled item
    assert await next_batch(model.prepare_entered) == [b[1]]
    model.gate.set()
    assert await results(ta + [tb[1]]) == [answer(a[0]), answer(a[1]), answer(b[1])]
    assert model.batches == [a, [b[1]]]
    assert batcher.stats.items_cancelled == 2
    # and c never comes back: the next item runs alone
    d = W("D", "d", 0)
    td = asyncio.create_task(batcher.submit(d))
    deadline = await asyncio.wait_for(clock.wait_for_sleeper(), GUARD_S)
    clock.advance_to(deadline)
    assert await results([td]) == [answer(d)]
    assert model.batches == [a, [b[1]], [d]]


async def test_cancel_while_running_discards_the_result(make: Factory) -> None:
    batcher, model = await make(max_batch_size=2, max_wait_s=0.0)
    model.gate.clear()
    ta = submit_all(batcher, items("A", "a", 2))
    await next_batch(model.entered)
    ta[0].cancel()
    model.gate.set()
    first, second = await results(ta)
    assert isinstance(first, asyncio.CancelledError) and second == "done a#1"
    assert batcher.stats.items_run == 2 and batcher.stats.items_cancelled == 0


async def test_cancel_job(make: Factory) -> None:
    batcher, model = await make(with_prepare=True, max_batch_size=2, max_wait_s=1.0)
    model.gate.clear()
    running = submit_all(batcher, items("O1", "x", 2))
    await next_batch(model.entered)
    ty = submit_all(batcher, [W("O2", "y", 0)])
    tx = submit_all(batcher, items("O1", "x", 3, start=2))
    await next_batch(model.prepare_entered)
    assert await next_batch(model.prepare_entered) == [W("O2", "y", 0), W("O1", "x", 2)]  # staged
    assert batcher.cancel_job("x") == 3  # x#2 staged, x#3 and x#4 queued; running x#0, x#1 untouched
    assert batcher.cancel_job("x") == 0
    assert all(isinstance(r, asyncio.CancelledError) for r in await results(tx))
    model.gate.set()
    assert await results(running + ty) == ["done x#0", "done x#1", "done y#0"]
    assert model.batches == [items("O1", "x", 2), [W("O2", "y", 0)]]
    assert batcher.stats.items_cancelled == 3
    assert model.prepared[-1] == [W("O2", "y", 0)]  # the staged batch, prepared again


# ---------------------------------------------------------------------- errors


async def test_run_raising_fails_every_caller_and_the_loop_goes_on(make: Factory) -> None:
    batcher, model = await make(max_batch_size=3, max_wait_s=0.0)
    boom = ValueError("boom")

    def fail_once(batch: list[W]) -> Sequence[str]:
        model.behaviour = lambda b: [answer(i) for i in b]
        raise boom

    model.behaviour = fail_once
    tasks = submit_all(batcher, items("A", "a", 3))
    assert await results(tasks) == [boom, boom, boom]
    assert await results(submit_all(batcher, items("A", "a", 3, start=3))) == ["done a#3", "done a#4", "done a#5"]
    assert batcher.stats.items_failed == 3


async def test_exception_element_fails_only_that_caller(make: Factory) -> None:
    batcher, model = await make(max_batch_size=3, max_wait_s=1.0)
    bad = KeyError("window 1")
    model.behaviour = lambda b: [bad if i.n == 1 else answer(i) for i in b]
    got = await results(submit_all(batcher, items("A", "a", 3)))
    assert got == ["done a#0", bad, "done a#2"]
    assert batcher.stats.items_failed == 1


async def test_result_count_mismatch_fails_everyone(make: Factory) -> None:
    batcher, model = await make(max_batch_size=3, max_wait_s=1.0)
    model.behaviour = lambda b: [answer(i) for i in b][:-1]
    got = await results(submit_all(batcher, items("A", "a", 3)))
    assert all(isinstance(r, ResultCountMismatch) for r in got)
    assert "2 results for 3 items" in str(got[0])


async def test_out_of_memory_splits_the_batch_in_halves(make: Factory) -> None:
    batcher, model = await make(with_prepare=True, max_batch_size=8, max_wait_s=1.0)

    def small_only(batch: list[W]) -> Sequence[str]:
        if len(batch) > 2:
            raise RuntimeError("CUDA failed with error out of memory")
        return [answer(i) for i in batch]

    model.behaviour = small_only
    work = items("A", "a", 8)
    assert await results(submit_all(batcher, work)) == [answer(i) for i in work]
    # 8 fails (cap 6), its first half of 4 fails (cap 3), so the second half of 4
    # is halved without being tried
    assert model.sizes() == [8, 4, 2, 2, 2, 2]
    assert [len(p) for p in model.prepared] == [8, 4, 4, 2, 2, 2, 2]  # every half prepared again
    stats = batcher.stats
    assert stats.ooms_split == 2 and stats.batches_run == 1 and stats.items_failed == 0
    assert stats.oom_cap == 3


async def test_out_of_memory_at_size_one_reaches_the_caller(make: Factory) -> None:
    batcher, model = await make(max_batch_size=2, max_wait_s=1.0)
    oom = MemoryError()

    def never_fits(batch: list[W]) -> Sequence[str]:
        raise oom

    model.behaviour = never_fits
    assert await results(submit_all(batcher, items("A", "a", 2))) == [oom, oom]
    assert model.sizes() == [2, 1, 1] and batcher.stats.ooms_split == 1


def test_default_is_oom() -> None:
    assert default_is_oom(MemoryError())
    assert default_is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not default_is_oom(RuntimeError("device-side assert"))
    assert not default_is_oom(ValueError("out of memory"))


def test_default_is_oom_knows_allocation_failures_by_type_and_status() -> None:
    class OutOfMemoryError(RuntimeError):  # torch.cuda's and CuPy's name
        pass

    class DeviceOOM(OutOfMemoryError):
        pass

    assert default_is_oom(OutOfMemoryError("no message"))
    assert default_is_oom(DeviceOOM(""))
    # what CTranslate2 raises when cuBLAS or the allocator fails
    assert default_is_oom(RuntimeError("cuBLAS failed with status CUBLAS_STATUS_ALLOC_FAILED"))
    assert default_is_oom(RuntimeError("CUDA failed with error cudaErrorMemoryAllocation"))
    assert default_is_oom(RuntimeError("std::bad_alloc"))
    assert not default_is_oom(RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED"))


async def test_out_of_memory_caps_later_batches_below_the_size_that_failed(make: Factory) -> None:
    batcher, model = await make(max_batch_size=8, max_wait_s=0.0)

    def fits_six(batch: list[W]) -> Sequence[str]:
        if len(batch) > 6:
            raise RuntimeError("CUDA failed with error out of memory")
        return [answer(i) for i in batch]

    model.behaviour = fits_six
    model.gate.clear()
    first = submit_all(batcher, items("A", "a", 8))
    await next_batch(model.entered)
    later = submit_all(batcher, items("B", "b", 8))
    model.gate.set()
    assert all(isinstance(r, str) for r in await results(first + later))
    assert model.sizes()[:3] == [8, 4, 4]
    assert batcher.stats.oom_cap == 6  # three quarters of 8
    # the waiting 8 never ran whole again: 6 + 2 if gathered after the failure,
    # halves if it was already staged
    assert model.sizes()[3:] in ([6, 2], [4, 4])
    assert batcher.stats.ooms_split == 1


async def test_weights_count_against_the_batch_limit(make: Factory) -> None:
    # beam search: a window at beam 5 takes 5 decoder rows
    def rows(item: W) -> int:
        return 5 if item.job_id == "beam" else 1

    batcher, model = await make(max_batch_size=16, max_wait_s=0.0, max_batch_weight=8, weight_of=rows)
    model.gate.clear()
    blocker = submit_all(batcher, items("Z", "z", 1))
    await next_batch(model.entered)
    work = submit_all(batcher, items("A", "beam", 3) + items("B", "greedy", 6))
    model.gate.set()
    await results(blocker + work)
    weights = [sum(rows(i) for i in b) for b in model.batches[1:]]
    assert all(w <= 8 for w in weights), weights
    assert sum(len(b) for b in model.batches[1:]) == 9


async def test_an_item_heavier_than_the_limit_still_runs_alone(make: Factory) -> None:
    batcher, model = await make(max_batch_size=4, max_wait_s=0.0, max_batch_weight=2, weight_of=lambda i: 5)
    assert await results(submit_all(batcher, items("A", "a", 2))) == ["done a#0", "done a#1"]
    assert model.sizes() == [1, 1]


async def test_prepare_overlaps_the_running_batch_off_the_model_thread(make: Factory) -> None:
    batcher, model = await make(with_prepare=True, max_batch_size=2, max_wait_s=1.0)
    model.gate.clear()
    first, second = items("A", "a", 2), items("B", "b", 2)
    tasks = submit_all(batcher, first)
    assert await next_batch(model.entered) == first
    tasks += submit_all(batcher, second)
    assert await next_batch(model.prepare_entered) == first
    assert await next_batch(model.prepare_entered) == second
    # batch 2 was prepared while batch 1 is still held in the model
    assert model.batches == [first] and not model.gate.is_set()
    assert batcher.stats.running == 2
    model.gate.set()
    assert await results(tasks) == [answer(i) for i in first + second]
    loop_thread = threading.get_ident()
    assert len(model.run_threads) == 1
    assert loop_thread not in model.run_threads | model.prepare_threads
    assert not model.run_threads & model.prepare_threads


# ------------------------------------------------------------ life and death


async def test_stop_fails_what_is_pending_and_lets_the_running_batch_finish(make: Factory) -> None:
    batcher, model = await make(with_prepare=True, max_batch_size=2, max_wait_s=1.0)
    model.gate.clear()
    running = submit_all(batcher, items("A", "a", 2))
    await next_batch(model.entered)
    pending = submit_all(batcher, items("B", "b", 2) + items("C", "c", 1))  # staged + queued
    await asyncio.sleep(0)  # one turn so the tasks have pushed (no time passes)
    stopping = asyncio.create_task(batcher.stop())
    assert all(isinstance(r, BatcherClosed) for r in await results(pending))
    model.gate.set()
    await asyncio.wait_for(stopping, GUARD_S)
    assert await results(running) == ["done a#0", "done a#1"]
    assert all(t.done() for t in running + pending)
    with pytest.raises(BatcherClosed):
        await batcher.submit(W("A", "a", 9))
    assert batcher.queue_position("b") is None and batcher.cancel_job("b") == 0


async def test_submit_before_start_is_refused() -> None:
    batcher: MicroBatcher[W, Any, str] = MicroBatcher(lambda items, p: [], options=BatcherOptions(16, 0.01, 2), clock=FakeClock())
    with pytest.raises(BatcherClosed):
        await batcher.submit(W("A", "a", 0))
    await batcher.stop()


@pytest.mark.parametrize(
    "kwargs", [{"max_batch_size": 0}, {"max_wait_s": -1.0}, {"prepare_threads": 0}]
)
def test_bad_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        BatcherOptions(**{"max_batch_size": 4, "max_wait_s": 0.01, "prepare_threads": 2, **kwargs})


class FlakyClock(FakeClock):
    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def sleep_until(self, deadline: float) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("clock broke")
        await super().sleep_until(deadline)


async def test_loop_errors_are_logged_and_serving_goes_on(make: Factory, caplog: pytest.LogCaptureFixture) -> None:
    clock = FlakyClock()
    batcher, model = await make(clock=clock, max_batch_size=4, max_wait_s=0.5)
    with caplog.at_level(logging.ERROR, logger="altyazi.batching"):
        task = asyncio.create_task(batcher.submit(W("A", "a", 0)))
        await asyncio.wait_for(clock.wait_for_sleeper(0.5), GUARD_S)
        clock.advance_to(0.5)
        assert await results([task]) == ["done a#0"]
    assert any(r.exc_info and "clock broke" in str(r.exc_info[1]) for r in caplog.records)


async def test_prepare_raising_fails_that_batch_only(make: Factory) -> None:
    batcher, model = await make(with_prepare=True, max_batch_size=2, max_wait_s=1.0)
    broken = OSError("cannot read the audio")
    model.prepare_error = broken
    assert await results(submit_all(batcher, items("A", "a", 2))) == [broken, broken]
    assert await results(submit_all(batcher, items("A", "a", 2, start=2))) == ["done a#2", "done a#3"]
    assert model.batches == [items("A", "a", 2, start=2)]
    assert batcher.stats.items_failed == 2


async def test_stats_is_a_snapshot(make: Factory) -> None:
    batcher, model = await make(max_batch_size=1, max_wait_s=1.0)
    await results(submit_all(batcher, items("A", "a", 1)))
    stats = batcher.stats
    assert isinstance(stats, BatcherStats)
    stats.batch_size_histogram[1] = 99
    assert batcher.stats.batch_size_histogram == {1: 1}


# ---------------------------------------------------------------------- stress


async def test_stress_every_future_finishes(make: Factory) -> None:
    rng = random.Random(1234)
    batcher, model = await make(
        clock=MonotonicClock(), with_prepare=True, max_batch_size=16, max_wait_s=0.001
    )
    def bad(item: W) -> bool:
        return (int(item.job_id[3:]) * 10 + item.n) % 37 == 0

    model.behaviour = lambda b: [ValueError(str(i)) if bad(i) else answer(i) for i in b]
    work = [W(f"owner{j % 10}", f"job{j}", n) for n in range(10) for j in range(50)]
    tasks: list[asyncio.Task[str]] = []
    cancelled_jobs: set[str] = set()
    for start in range(0, len(work), 25):
        tasks += submit_all(batcher, work[start : start + 25])
        await asyncio.sleep(0)  # the new tasks push their items (no time passes)
        for _ in range(rng.randint(0, 6)):
            rng.choice(tasks).cancel()
        if rng.random() < 0.15:
            job = f"job{rng.randrange(50)}"
            batcher.cancel_job(job)
            cancelled_jobs.add(job)
        await asyncio.sleep(0)  # let some batches form between bursts (no time passes)
    done, pending = await asyncio.wait(tasks, timeout=GUARD_S)
    assert not pending
    ran = {i for b in model.batches for i in b}
    assert sum(len(b) for b in model.batches) == len(ran)  # nothing ran twice
    for item, task in zip(work, tasks):
        if task.cancelled():
            continue
        exc = task.exception()
        if bad(item):
            assert isinstance(exc, ValueError)
        else:
            assert exc is None and task.result() == answer(item)
        assert item in ran
    stats = batcher.stats
    assert stats.items_run + stats.items_cancelled == len(work)
    assert stats.items_run == len(ran)
    assert stats.queue_depth == 0 and stats.running == 0
    assert any(t.cancelled() for t in tasks) and len(ran) < len(work)


# ------------------------------------------------------------ finishing off the model thread


async def test_finish_runs_off_the_model_thread_while_the_next_batch_runs() -> None:
    model = FakeModel()
    finish_gate = threading.Event()
    finish_threads: set[int] = set()

    def finish(items: list[W], raw: Sequence[Any]) -> list[str]:
        finish_threads.add(threading.get_ident())
        assert finish_gate.wait(GUARD_S)
        return [f"{r}, finished" for r in raw]

    batcher: MicroBatcher[W, Any, str] = MicroBatcher(
        model.run, finish=finish, clock=FakeClock(),
        options=BatcherOptions(max_batch_size=2, max_wait_s=0.0, prepare_threads=1),
    )  # fmt: skip
    await batcher.start()
    try:
        first = submit_all(batcher, items("A", "a", 2))
        assert await next_batch(model.entered) == items("A", "a", 2)
        second = submit_all(batcher, items("B", "b", 2))
        # the first batch is still being finished, yet the model takes the second
        assert await next_batch(model.entered) == items("B", "b", 2)
        assert not any(t.done() for t in first)
        assert not await batcher.drain(0.05)  # finishing counts as busy
        finish_gate.set()
        assert await results(first + second) == [f"done {i}, finished" for i in items("A", "a", 2) + items("B", "b", 2)]
        assert await batcher.drain(GUARD_S)
        assert finish_threads.isdisjoint(model.run_threads)
    finally:
        finish_gate.set()
        await batcher.stop()


async def test_a_failing_finish_fails_its_batch_only() -> None:
    model = FakeModel()
    boom = RuntimeError("finish broke")

    def finish(items: list[W], raw: Sequence[Any]) -> list[str]:
        if items[0].job_id == "bad":
            raise boom
        return list(raw)

    batcher: MicroBatcher[W, Any, str] = MicroBatcher(
        model.run, finish=finish, clock=FakeClock(),
        options=BatcherOptions(max_batch_size=1, max_wait_s=0.0, prepare_threads=1),
    )  # fmt: skip
    await batcher.start()
    try:
        got = await results(submit_all(batcher, items("A", "bad", 1) + items("B", "good", 1)))
        assert got == [boom, "done good#0"]
        assert batcher.stats.items_failed == 1
    finally:
        await batcher.stop()
