"""A generic dynamic micro-batcher in front of one model on one thread.

Many callers ``await submit(item)``; one loop task groups their items into
batches; ``prepare`` (CPU work such as feature extraction) runs in a small
thread pool while the previous batch runs; ``run`` runs in the one model
thread, because there is one accelerator. It knows nothing of Whisper or HTTP.

The pipeline has three places an item can be, each owned by the event loop:

    queued (FairQueue) -> staged (gathered, being prepared or prepared) -> running

An optional ``finish`` (CPU work on ``run``'s answers, e.g. turning tokens into
text) runs in a thread of its own after ``run`` returns, so the model thread
starts the next batch while the last one is finished; ``drain`` waits for both.

At most one batch is staged, so items that arrive while the model is busy stay
queued and can join the next batch instead of a stale one.

Closing policy. A batch is gathered when the queue holds ``max_batch_size``
items, or when the oldest queued item has waited ``max_wait_s``. While the
model is busy there is no hurry: the batch then closes "just in time", at
``max(oldest + max_wait_s, expected_model_free - 2 * expected_full_prepare)``,
where the model's run time and the per-item prepare time are moving averages
of past batches. The model still finds the next batch prepared when it frees
up, and that batch has absorbed what arrived meanwhile. The margin is generous
because the costs are lopsided: closing a little early only makes the batch a
little smaller, closing late leaves the GPU idle. A staged batch is never
topped up: its payload is opaque, so adding items would mean preparing it
again. Why bother: closing at ``max_wait_s`` alone seals the next batch just
after the current one starts, so whatever arrives during a run waits two runs,
not one. In a simulation (run 0.1 s + 5 ms/item, prepare 1 ms/item, near
saturation) this halved the mean wait, 214 -> 107 ms, with the same number of
batches and no added model idle time.

Habits from ray serve's batching and vLLM's engine: one future per caller; a
failed batch fails every caller; a result-count mismatch is its own error; a
caller cancelled before its batch runs is dropped from it; no future is left
unfinished, and ``stop()`` fails whatever remains.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Sequence, TypeVar, cast

from batching.clock import Clock, MonotonicClock, wait_set
from batching.fair import FairQueue

T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")

logger = logging.getLogger("altyazi.batching")

# weight of the newest batch in the run/prepare time averages
_EMA_ALPHA = 0.3
# a busy model's next batch closes this many full-batch prepare times early
_PREPARE_MARGIN = 2.0
# back-off after an unexpected error in the loop task, so a bug cannot spin a core
_MIN_BACKOFF_S = 0.01
_MAX_BACKOFF_S = 1.0

_QUEUED, _STAGED, _RUNNING, _DONE = range(4)


class BatcherClosed(RuntimeError):
    """The batcher is stopped (or not started); the item was not run."""


class ResultCountMismatch(RuntimeError):
    """``run`` answered a different number of results than it was given items."""


# How an allocation failure reads when it has no type of its own: CTranslate2
# raises a plain RuntimeError carrying the CUDA or cuBLAS status.
_OOM_MARKERS = (
    "out of memory",  # CUDA_ERROR_OUT_OF_MEMORY / cudaErrorMemoryAllocation, torch, CTranslate2
    "cuda_error_out_of_memory",
    "cudaerrormemoryallocation",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "std::bad_alloc",
    "failed to allocate",
)


def default_is_oom(exc: BaseException) -> bool:
    """Whether a failure means "the batch did not fit": halve it and retry.

    By type first (MemoryError, and any ``*OutOfMemoryError`` class such as
    torch's or CuPy's), then by the allocation-failure statuses that
    CTranslate2 reports inside a RuntimeError.
    """
    if isinstance(exc, MemoryError):
        return True
    if any(cls.__name__.endswith("OutOfMemoryError") for cls in type(exc).__mro__):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MARKERS)


def _owner_attr(item: Any) -> str:
    return cast(str, item.owner)


def _job_attr(item: Any) -> str:
    return cast(str, item.job_id)


@dataclass(frozen=True)
class BatcherOptions:
    """How batches close and are prepared; checked here, once, for every batcher.

    No defaults: the server builds these from its config (``app.serving``), and
    a test or benchmark says what it measures.
    """

    max_batch_size: int  # most items in one ``run`` call
    max_wait_s: float  # how long the first arrival waits for company when the model is idle
    prepare_threads: int  # threads running ``prepare`` ahead of the model
    # Most total weight in one ``run`` call (the batcher's ``weight_of``, e.g. the
    # decoder rows of beam search and sampling); 0: items are only counted. An
    # item heavier than this still runs, alone.
    max_batch_weight: int = 0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size!r}")
        if self.max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {self.max_wait_s!r}")
        if self.prepare_threads < 1:
            raise ValueError(f"prepare_threads must be >= 1, got {self.prepare_threads!r}")
        if self.max_batch_weight < 0:
            raise ValueError(f"max_batch_weight must be >= 0, got {self.max_batch_weight!r}")


@dataclass(frozen=True)
class BatcherStats:
    """A snapshot; every counter is cumulative since start unless it says "now"."""

    batches_run: int = 0  # batches handed to the model (OOM halves not counted again)
    items_run: int = 0  # items the model ran (whatever their outcome)
    items_failed: int = 0  # callers that got an exception from prepare/run
    items_cancelled: int = 0  # callers withdrawn before their item ran
    queue_depth: int = 0  # now: items waiting (queued or staged), not running
    running: int = 0  # now: items in the model
    batch_size_histogram: dict[int, int] = field(default_factory=dict)  # size -> batches
    total_wait_s: float = 0.0  # sum over items of submit -> run start
    total_run_s: float = 0.0  # sum of time spent in run()
    total_prepare_s: float = 0.0  # sum of time spent in prepare()
    last_batch_size: int = 0
    ooms_split: int = 0  # times a batch was halved after an out-of-memory error
    # now: the most weight (items, when no weight is set) a batch may have since
    # one of that size ran out of memory; 0: no cap
    oom_cap: int = 0


@dataclass(eq=False)
class _Entry(Generic[T]):
    item: T
    owner: str
    job: str
    future: asyncio.Future[Any]
    enqueued_at: float
    state: int = _QUEUED


@dataclass(eq=False)
class _Staged(Generic[T]):
    entries: list[_Entry[T]]
    prep: asyncio.Future[Any] | None = None  # in flight in the prepare pool
    payload: Any = None
    error: BaseException | None = None
    dirty: bool = False  # a member was cancelled: prepare the rest again


class MicroBatcher(Generic[T, P, R]):
    def __init__(
        self,
        run: Callable[[list[T], P], Sequence[R | BaseException]],
        *,
        prepare: Callable[[list[T]], P] | None = None,
        options: BatcherOptions,
        owner_of: Callable[[T], str] = _owner_attr,
        job_of: Callable[[T], str] = _job_attr,
        clock: Clock | None = None,
        is_oom: Callable[[BaseException], bool] = default_is_oom,
        weight_of: Callable[[T], int] | None = None,
        finish: Callable[[list[T], Sequence[Any]], Sequence[R | BaseException]] | None = None,
        name: str = "model",
    ) -> None:
        self._run = run
        # Optional CPU work on run()'s answers (one thread of its own), so the
        # model thread hands its answers over and starts the next batch at once.
        self._finish_fn = finish
        self._finish_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._finishing: set[_Entry[T]] = set()
        self._prepare = prepare
        self._max_batch_size = options.max_batch_size
        self._max_wait_s = options.max_wait_s
        self._owner_of = owner_of
        self._job_of = job_of
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._prepare_threads = options.prepare_threads
        self._is_oom = is_oom
        self._weight_of = weight_of
        self._max_batch_weight = options.max_batch_weight
        # Set after an out-of-memory error (model thread, read on the loop: an int
        # assignment, so no lock): later batches stay below what failed.
        self._oom_cap = 0
        self._name = name

        self._queue: FairQueue[_Entry[T]] = FairQueue(lambda e: e.owner, lambda e: e.job)
        # queued entries in arrival order: the first one starts the batch timer
        self._arrivals: OrderedDict[_Entry[T], None] = OrderedDict()
        self._live: set[_Entry[T]] = set()  # every caller still awaiting
        self._staged: _Staged[T] | None = None
        self._running: list[_Entry[T]] = []
        self._model_busy = False
        # Set while no batch is on the model or being finished; drain() waits on it.
        self._model_idle = asyncio.Event()
        self._model_idle.set()
        self._run_started_at = 0.0
        self._ema_run_s: float | None = None
        self._ema_prepare_item_s: float | None = None  # prepare time per item

        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._model_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._prepare_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._model_future: concurrent.futures.Future[None] | None = None
        self._started = False
        self._closed = False

        self._batches_run = 0
        self._items_run = 0
        self._items_failed = 0
        self._items_cancelled = 0
        self._histogram: dict[int, int] = {}
        self._total_wait_s = 0.0
        self._total_run_s = 0.0
        self._total_prepare_s = 0.0
        self._last_batch_size = 0
        self._ooms_split = 0

    # ------------------------------------------------------------------ public

    async def start(self) -> None:
        """Start the loop task and the model thread."""
        if self._started:
            raise RuntimeError(f"{self._name} batcher already started")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._model_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"altyazi-{self._name}-model"
        )
        if self._prepare is not None:
            self._prepare_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._prepare_threads, thread_name_prefix=f"altyazi-{self._name}-prepare"
            )
        if self._finish_fn is not None:
            self._finish_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"altyazi-{self._name}-finish"
            )
        self._task = asyncio.create_task(self._serve(), name=f"altyazi-batcher-{self._name}")
        self._task.add_done_callback(self._on_task_done)

    async def stop(self) -> None:
        """Stop: fail what is queued or staged with BatcherClosed, let the running
        batch finish, join the threads. A hung ``run`` hangs this too, so callers
        bound it with a timeout; if this is cancelled, every future is still failed.
        """
        if self._closed:
            return
        self._closed = True
        closed = BatcherClosed(f"the {self._name} batcher is stopped")
        try:
            if self._task is not None:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            for entry in self._queue.pop_batch(len(self._queue)):
                self._finish(entry, closed)
            self._arrivals.clear()
            if self._staged is not None:
                for entry in self._staged.entries:
                    self._finish(entry, closed)
                self._staged = None
            if self._model_future is not None:
                # the model thread posts its deliveries before this completes,
                # so they have run by the time the await returns
                await asyncio.gather(asyncio.wrap_future(self._model_future), return_exceptions=True)
            await asyncio.to_thread(self._shutdown_pools, True)
        finally:
            self._shutdown_pools(False)
            for entry in list(self._live):
                self._finish(entry, closed)

    async def drain(self, timeout: float) -> bool:
        """Wait until no batch is on the model, at most ``timeout`` seconds; True if none is.

        Queued items stay queued (withdraw them with ``cancel_job`` first); a batch
        that finishes has its results delivered before this returns.
        """
        return await wait_set(self._model_idle, timeout)

    async def submit(self, item: T, *, first: bool = False) -> R:
        """Wait for the item's result. An exception from ``prepare`` or ``run``
        (or an exception element of ``run``'s answer) is raised here.

        ``first`` puts the item ahead of its job's other queued items (not of
        other jobs': fairness between jobs and owners is unchanged)."""
        if self._closed or not self._started or self._loop is None:
            raise BatcherClosed(f"the {self._name} batcher is not running")
        future: asyncio.Future[Any] = self._loop.create_future()
        entry = _Entry(item, self._owner_of(item), self._job_of(item), future, self._clock.now())
        self._queue.push(entry, first=first)
        self._arrivals[entry] = None
        self._live.add(entry)
        self._wakeup.set()
        try:
            return cast(R, await future)
        except asyncio.CancelledError:
            self._withdraw(entry)
            raise
        finally:
            self._live.discard(entry)

    def cancel_job(self, job_id: str) -> int:
        """Drop the job's items that are not yet running; their callers see
        CancelledError. Answers how many were dropped."""
        dropped = self._queue.remove_job(job_id)
        for entry in dropped:
            self._arrivals.pop(entry, None)
            self._cancel_entry(entry)
        staged = self._staged
        if staged is not None:
            for entry in staged.entries:
                if entry.job == job_id and entry.state == _STAGED:
                    self._cancel_entry(entry)
                    staged.dirty = True
                    dropped.append(entry)
        if dropped:
            self._wakeup.set()
        return len(dropped)

    def queue_position(self, job_id: str) -> int | None:
        """Items that will run before the job's next one: 0 when the job is in
        the staged or running batch, None when it has nothing in the batcher."""
        staged = self._staged_live()
        if any(e.job == job_id for e in staged):
            return 0
        if any(e.job == job_id and not e.future.done() for e in self._running):
            return 0
        position = self._queue.position(job_id)
        return None if position is None else len(staged) + position

    @property
    def stats(self) -> BatcherStats:
        return BatcherStats(
            batches_run=self._batches_run,
            items_run=self._items_run,
            items_failed=self._items_failed,
            items_cancelled=self._items_cancelled,
            queue_depth=len(self._queue) + len(self._staged_live()),
            running=sum(1 for e in self._running if e.state == _RUNNING),
            batch_size_histogram=dict(self._histogram),
            total_wait_s=self._total_wait_s,
            total_run_s=self._total_run_s,
            total_prepare_s=self._total_prepare_s,
            last_batch_size=self._last_batch_size,
            ooms_split=self._ooms_split,
            oom_cap=self._oom_cap,
        )

    # ------------------------------------------------------------ loop task

    async def _serve(self) -> None:
        backoff = _MIN_BACKOFF_S
        while True:
            try:
                # clear before looking, so a wake-up during the step is not lost
                self._wakeup.clear()
                deadline = self._step()
                await self._wait(deadline)
                backoff = _MIN_BACKOFF_S
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("%s batcher: error in the batching loop; continuing", self._name)
                # real time on purpose: a broken clock must not stop the back-off
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)

    def _step(self) -> float | None:
        """Move the pipeline as far as it goes now; answer when to look again
        (None: only when woken)."""
        while True:
            staged = self._staged
            if staged is not None and staged.prep is None:
                if staged.dirty:
                    self._restage(staged)
                    continue
                if staged.error is not None:
                    self._staged = None
                    self._fail_batch(staged.entries, staged.error, "prepare")
                    continue
                if not self._model_busy:
                    self._staged = None
                    self._dispatch(staged)
                    continue
            if self._staged is None and self._arrivals:
                close_at = self._close_at()
                # Counted in items: with weights or an OOM cap a batch may fill
                # sooner, and then waits at most max_wait_s more.
                if len(self._queue) >= self._max_batch_size or self._clock.now() >= close_at:
                    self._gather()
                    continue
                return close_at
            return None

    async def _wait(self, deadline: float | None) -> None:
        if deadline is None:
            await self._wakeup.wait()
            return
        woken = asyncio.ensure_future(self._wakeup.wait())
        timer = asyncio.ensure_future(self._clock.sleep_until(deadline))
        try:
            await asyncio.wait((woken, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            timer.cancel()
        if timer.done() and not timer.cancelled() and timer.exception() is not None:
            raise cast(BaseException, timer.exception())

    def _close_at(self) -> float:
        oldest = next(iter(self._arrivals)).enqueued_at
        close_at = oldest + self._max_wait_s
        if self._model_busy and self._ema_run_s is not None:
            expected_free = self._run_started_at + self._ema_run_s
            # prepare cost grows with the batch; assume the batch will be full
            prepare_s = (self._ema_prepare_item_s or 0.0) * self._max_batch_size
            close_at = max(close_at, expected_free - _PREPARE_MARGIN * prepare_s)
        return close_at

    def _weight(self, entry: _Entry[T]) -> int:
        """An entry's share of a batch: 1 per item unless ``weight_of`` says more."""
        if self._weight_of is None:
            return 1
        return max(1, int(self._weight_of(entry.item)))

    def _gather(self) -> None:
        """Take the next batch in fair order, within the size, weight and OOM caps."""
        limit = self._max_batch_weight if self._weight_of is not None else 0
        if self._oom_cap:
            limit = min(limit, self._oom_cap) if limit else self._oom_cap
        entries: list[_Entry[T]] = []
        total = 0
        while len(entries) < self._max_batch_size:
            nxt = self._queue.peek()
            if nxt is None:
                break
            w = self._weight(nxt)
            if entries and limit and total + w > limit:
                break
            entries.extend(self._queue.pop_batch(1))
            total += w
        for entry in entries:
            self._arrivals.pop(entry, None)
            entry.state = _STAGED
        staged: _Staged[T] = _Staged(entries)
        self._staged = staged
        self._start_prepare(staged)

    def _restage(self, staged: _Staged[T]) -> None:
        live = [e for e in staged.entries if e.state == _STAGED]
        if not live:
            self._staged = None
            return
        fresh: _Staged[T] = _Staged(live)
        self._staged = fresh
        self._start_prepare(fresh)

    def _start_prepare(self, staged: _Staged[T]) -> None:
        items = [e.item for e in staged.entries]
        if self._prepare is None:
            staged.payload = items
            return
        assert self._loop is not None and self._prepare_pool is not None
        try:
            prep = self._loop.run_in_executor(self._prepare_pool, self._timed_prepare, items)
        except RuntimeError as exc:  # the pool is shut down: fail the batch, not the loop
            staged.error = exc
            return
        staged.prep = prep
        prep.add_done_callback(lambda f: self._on_prepared(staged, f))

    def _timed_prepare(self, items: list[T]) -> tuple[Any, float]:
        assert self._prepare is not None
        t0 = self._clock.now()
        payload = self._prepare(items)
        return payload, self._clock.now() - t0

    def _on_prepared(self, staged: _Staged[T], prep: asyncio.Future[Any]) -> None:
        if staged.prep is not prep:
            return
        staged.prep = None
        if prep.cancelled():
            staged.error = BatcherClosed(f"the {self._name} batcher is stopped")
        elif prep.exception() is not None:
            staged.error = prep.exception()
        else:
            staged.payload, seconds = prep.result()
            self._total_prepare_s += seconds
            self._ema_prepare_item_s = _ema(self._ema_prepare_item_s, seconds / len(staged.entries))
        self._wakeup.set()

    def _dispatch(self, staged: _Staged[T]) -> None:
        assert self._model_pool is not None
        now = self._clock.now()
        entries = staged.entries
        for entry in entries:
            entry.state = _RUNNING
            self._total_wait_s += now - entry.enqueued_at
        size = len(entries)
        self._batches_run += 1
        self._histogram[size] = self._histogram.get(size, 0) + 1
        self._last_batch_size = size
        self._running = entries
        self._model_busy = True
        self._model_idle.clear()
        self._run_started_at = now
        self._model_future = self._model_pool.submit(self._model_job, entries, staged.payload)

    # ---------------------------------------------------------- model thread

    # Every _post below is FIFO with the others, so the stats are accounted
    # before the callers they concern see their results.

    def _model_job(self, entries: list[_Entry[T]], payload: Any) -> None:
        t0 = self._clock.now()
        ended = t0
        try:
            ended = self._run_or_split(entries, payload)
        except BaseException as exc:  # a bug here must still finish the callers
            logger.exception("%s batcher: model thread failed", self._name)
            self._post(self._fail_batch, entries, exc, "model thread")
            ended = self._clock.now()
        finally:
            self._post(self._on_model_idle, ended - t0)

    def _run_or_split(self, entries: list[_Entry[T]], payload: Any) -> float:
        """Run, or halve on OOM; answers when the last run() returned (read
        before any result is posted, so it does not include the callers' time)."""
        items = [e.item for e in entries]
        t0 = self._clock.now()
        if self._oom_cap and len(entries) > 1 and sum(self._weight(e) for e in entries) > self._oom_cap:
            # gathered before the cap was set: halve it without a known failure first
            return self._run_halves(entries, t0)
        try:
            results = self._run(items, cast(P, payload))
        except Exception as exc:
            ended = self._clock.now()
            self._post(self._account, ended - t0, 0.0, 0)
            if not (self._is_oom(exc) and len(entries) > 1):
                self._post(self._fail_batch, entries, exc, "run")
                return ended
            self._post(self._account, 0.0, 0.0, 1)
            failed = sum(self._weight(e) for e in entries)
            # Three quarters of what failed: below it, and a few OOMs at most to
            # settle even when the cap first lands just above what fits.
            cap = max(1, failed * 3 // 4)
            self._oom_cap = min(self._oom_cap, cap) if self._oom_cap else cap
            logger.warning(
                "%s batcher: out of memory on a batch of %d (weight %d); halving, later batches capped at %d",
                self._name, len(entries), failed, self._oom_cap,
            )  # fmt: skip
            return self._run_halves(entries, ended)
        ended = self._clock.now()
        self._post(self._account, ended - t0, 0.0, 0)
        try:
            count: int | None = len(results)
        except TypeError:  # a generator or None: not one result per item
            count = None
        if count != len(entries):
            mismatch = ResultCountMismatch(
                f"{self._name}: run() answered {count if count is not None else repr(type(results))}"
                f" results for {len(entries)} items"
            )
            self._post(self._fail_batch, entries, mismatch, "run")
            return ended
        if self._finish_fn is None:
            self._post(self._deliver, entries, list(results))
            return ended
        assert self._finish_pool is not None
        # Posted before the model is reported idle (posts are FIFO), so drain()
        # and the idle check already count this batch as finishing.
        self._post(self._finish_begun, entries)
        try:
            done = self._finish_pool.submit(self._finish_fn, items, list(results))
        except RuntimeError as exc:  # the pool is shut down
            self._post(self._finish_done, entries, None, exc)
            return ended
        done.add_done_callback(lambda f: self._post(self._finish_done, entries, f, None))
        return ended

    def _run_halves(self, entries: list[_Entry[T]], ended: float) -> float:
        mid = len(entries) // 2
        halves = [entries[:mid], entries[mid:]]
        if self._prepare is None:
            prepared: list[concurrent.futures.Future[tuple[Any, float]]] = []
            for half in halves:
                done: concurrent.futures.Future[tuple[Any, float]] = concurrent.futures.Future()
                done.set_result(([e.item for e in half], 0.0))
                prepared.append(done)
        else:
            assert self._prepare_pool is not None
            # both halves at once: the second prepares while the first runs
            prepared = [self._prepare_pool.submit(self._timed_prepare, [e.item for e in h]) for h in halves]
        for half, prep in zip(halves, prepared):
            try:
                payload, seconds = prep.result()
            except Exception as exc:
                self._post(self._fail_batch, half, exc, "prepare")
                continue
            self._post(self._account, 0.0, seconds, 0)
            ended = self._run_or_split(half, payload)
        return ended

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            # the loop is closed: nobody is left to tell
            logger.debug("%s batcher: loop closed; dropping a result", self._name)

    # ------------------------------------------------- back on the loop

    def _finish_begun(self, entries: list[_Entry[T]]) -> None:
        self._finishing.update(entries)
        self._model_idle.clear()

    def _finish_done(
        self, entries: list[_Entry[T]], done: concurrent.futures.Future[Any] | None, error: BaseException | None
    ) -> None:
        self._finishing.difference_update(entries)
        if error is None and done is not None:
            error = done.exception() if not done.cancelled() else BatcherClosed(f"the {self._name} batcher is stopped")
        if error is not None:
            self._fail_batch(entries, error, "finish")
        else:
            assert done is not None
            results = list(done.result())
            if len(results) != len(entries):
                self._fail_batch(entries, ResultCountMismatch(
                    f"{self._name}: finish() answered {len(results)} results for {len(entries)} items"), "finish")  # fmt: skip
            else:
                self._deliver(entries, results)
        if not self._finishing and not self._model_busy:
            self._model_idle.set()

    def _deliver(self, entries: list[_Entry[T]], results: list[Any]) -> None:
        self._items_run += len(entries)
        for entry, result in zip(entries, results):
            if isinstance(result, BaseException):
                self._items_failed += 1
                self._finish(entry, result)
            else:
                self._finish(entry, None, result)

    def _fail_batch(self, entries: list[_Entry[T]], exc: BaseException, where: str) -> None:
        if where != "prepare":
            self._items_run += len(entries)
        logger.warning(
            "%s batcher: %s failed for a batch of %d: %r", self._name, where, len(entries), exc, exc_info=exc
        )
        for entry in entries:
            if entry.state != _DONE:
                self._items_failed += 1
            self._finish(entry, exc)

    def _account(self, run_s: float, prepare_s: float, ooms_split: int) -> None:
        self._total_run_s += run_s
        self._total_prepare_s += prepare_s
        self._ooms_split += ooms_split

    def _on_model_idle(self, wall_s: float) -> None:
        # the whole dispatched batch, OOM halves included: what the next one may cost
        self._ema_run_s = _ema(self._ema_run_s, wall_s)
        leftovers = [e for e in self._running if e.state != _DONE and e not in self._finishing]
        if leftovers:  # cannot happen unless the thread code has a bug; never leave a caller hanging
            self._fail_batch(leftovers, RuntimeError(f"{self._name}: no result was delivered"), "model thread")
        self._running = []
        self._model_busy = False
        if not self._finishing:
            self._model_idle.set()
        self._wakeup.set()

    def _finish(self, entry: _Entry[T], exc: BaseException | None, result: Any = None) -> None:
        entry.state = _DONE
        future = entry.future
        if future.done():  # the caller went away; its result is dropped
            return
        if exc is None:
            future.set_result(result)
            return
        if isinstance(exc, StopIteration):  # asyncio refuses it as a future's exception
            exc = RuntimeError(f"{self._name}: run raised StopIteration")
        future.set_exception(exc)

    def _withdraw(self, entry: _Entry[T]) -> None:
        """The caller was cancelled: take its item out if it has not started."""
        if entry.state == _QUEUED:
            self._queue.remove(entry)
            self._arrivals.pop(entry, None)
            self._cancel_entry(entry)
            self._wakeup.set()  # the batch timer may now start later
        elif entry.state == _STAGED and self._staged is not None:
            self._cancel_entry(entry)
            self._staged.dirty = True
            self._wakeup.set()

    def _cancel_entry(self, entry: _Entry[T]) -> None:
        entry.state = _DONE
        self._items_cancelled += 1
        if not entry.future.done():
            entry.future.cancel()

    def _staged_live(self) -> list[_Entry[T]]:
        if self._staged is None:
            return []
        return [e for e in self._staged.entries if e.state == _STAGED]

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # _serve catches Exception, so this is a BaseException
            logger.error("%s batcher: the loop task died", self._name, exc_info=exc)

    def _shutdown_pools(self, wait: bool) -> None:
        # the model pool first: its last batch may still hand work to the finish pool
        for pool in (self._model_pool, self._finish_pool, self._prepare_pool):
            if pool is not None:
                pool.shutdown(wait=wait, cancel_futures=True)


def _ema(previous: float | None, sample: float) -> float:
    return sample if previous is None else previous + _EMA_ALPHA * (sample - previous)
