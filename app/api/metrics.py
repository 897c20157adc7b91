"""Prometheus metrics: one registry per app, an HTTP middleware, and /metrics.

Two kinds of numbers. Request counts and durations are pushed by
:class:`HttpMetricsMiddleware` as requests finish. Everything else (jobs by
status, the batcher's counters, ffmpeg, uploads, SSE, loop lag) is read from
the running parts when /metrics is scraped, so nothing on the hot path updates
a gauge. The registry is the app's own, never prometheus_client's global one,
so several servers in one test process do not clash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.looplag import LoopLagMonitor
from storage.states import FINAL, Status

log = logging.getLogger("altyazi.metrics")
access_log = logging.getLogger("altyazi.access")

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Probes and scrapes every few seconds would drown the access log; they go at DEBUG.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
UNMATCHED = "unmatched"
SAMPLE_INTERVAL_S = 0.1  # how often the batcher's totals are read into histograms
# Seconds: model and feature times per batch, window waits, whole jobs and exports.
BATCH_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
JOB_SECONDS_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0)


@dataclass
class _Scraped:
    """What the async part of a scrape gathered, for the synchronous collector."""

    state: Any = None
    jobs: dict[str, int] = field(default_factory=dict)


class Metrics:
    """The app's registry and instruments; ``render`` answers a scrape."""

    def __init__(self, lag: LoopLagMonitor | None = None) -> None:
        self.registry = CollectorRegistry()
        self.lag = lag or LoopLagMonitor()
        self.http_requests = Counter(
            "altyazi_http_requests", "HTTP requests answered, by route template, method and status.",
            ("route", "method", "status"), registry=self.registry,
        )
        self.http_duration = Histogram(
            "altyazi_http_request_duration_seconds",
            "Time from request start to the end of the response body (SSE streams: the stream's life).",
            ("route", "method"), registry=self.registry,
        )
        self.http_in_progress = Gauge(
            "altyazi_http_requests_in_progress", "Requests being handled now (open SSE streams included).",
            registry=self.registry,
        )
        self.batch_run = Histogram(
            "altyazi_batch_run_seconds", "Time the model spent on one batch.",
            buckets=BATCH_SECONDS_BUCKETS, registry=self.registry,
        )
        self.batch_prepare = Histogram(
            "altyazi_batch_prepare_seconds", "Time spent preparing one batch (feature extraction).",
            buckets=BATCH_SECONDS_BUCKETS, registry=self.registry,
        )
        self.window_wait = Histogram(
            "altyazi_window_wait_seconds", "Time an audio window waited from submission to its batch starting.",
            buckets=BATCH_SECONDS_BUCKETS, registry=self.registry,
        )
        self.jobs_finished = Counter(
            "altyazi_jobs_finished", "Jobs that reached a final status in this process, by status.",
            ("status",), registry=self.registry,
        )
        self.job_duration = Histogram(
            "altyazi_job_duration_seconds", "Upload accepted to final status, queueing included, by status.",
            ("status",), buckets=JOB_SECONDS_BUCKETS, registry=self.registry,
        )
        self.exports_created = Counter(
            "altyazi_exports_created", "Exports requested.", registry=self.registry,
        )
        self.exports_finished = Counter(
            "altyazi_exports_finished", "Exports that ended, by status (done, failed, cancelled).",
            ("status",), registry=self.registry,
        )
        self.export_duration = Histogram(
            "altyazi_export_duration_seconds", "Export requested to its end, waiting for ffmpeg included, by status.",
            ("status",), buckets=JOB_SECONDS_BUCKETS, registry=self.registry,
        )
        for status in sorted(FINAL):
            self.jobs_finished.labels(status)
            self.exports_finished.labels(status)
        # Start times of what is in flight, for the durations above; entries leave
        # with their final event (jobs recovered after a restart have none).
        self._job_started: dict[str, float] = {}
        self._export_started: dict[str, float] = {}
        self._last_totals: dict[str, tuple[float, float]] = {}  # per histogram: (count, sum) observed so far
        self._sampler: asyncio.Task[None] | None = None
        self._scraped = _Scraped()
        self.registry.register(_StateCollector(self))
        self.registry.register(ProcessCollector(registry=None))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "OTHER"
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_duration.labels(route, method).observe(seconds)

    def on_event(self, job_id: str, type: str, data: dict[str, Any]) -> None:
        """An event just published on a job's stream (an EventHub listener)."""
        now = time.monotonic()
        if type == "status" and data.get("status") == Status.QUEUED and job_id not in self._job_started:
            self._job_started[job_id] = now
        elif type in FINAL:
            self.jobs_finished.labels(type).inc()
            started = self._job_started.pop(job_id, None)
            if started is not None:
                self.job_duration.labels(type).observe(now - started)
        elif type == "export_queued":
            self.exports_created.inc()
            self._export_started[str(data.get("export_id"))] = now
        elif type in ("export_done", "export_failed"):
            status = str(data.get("status") or ("done" if type == "export_done" else "failed"))
            self.exports_finished.labels(status).inc()
            started = self._export_started.pop(str(data.get("export_id")), None)
            if started is not None:
                self.export_duration.labels(status).observe(now - started)

    def sample_batcher(self, stats: Any) -> None:
        """Turn the batcher's running totals into per-batch observations.

        The batcher keeps sums, not samples. Read every SAMPLE_INTERVAL_S (and
        at each scrape), a batch (0.1-1 s each) usually is the only one that
        finished since the last read, and its time is then exact; when several
        did, each gets their mean. A batch counts once its time is in: the one
        on the model now (one model thread, so at most one) is left for later,
        and time that arrives before its count waits for it, so the sums stay exact.
        """
        running = 1 if stats.running else 0
        self._observe(self.batch_run, "run", stats.batches_run - running, stats.total_run_s)
        self._observe(self.batch_prepare, "prepare", stats.batches_run, stats.total_prepare_s)
        self._observe(self.window_wait, "wait", stats.items_run, stats.total_wait_s)

    def _observe(self, histogram: Histogram, name: str, count: float, total: float) -> None:
        last_count, last_total = self._last_totals.get(name, (0.0, 0.0))
        n = int(count - last_count)
        if n <= 0:
            return
        mean = max(0.0, (float(total) - last_total) / n)
        for _ in range(n):
            histogram.observe(mean)
        self._last_totals[name] = (float(count), float(total))

    def start(self, state: Any) -> None:
        """Start the owned tasks: loop lag, and the batcher sampler; stop them with ``stop``."""
        self.lag.start()
        state.hub.listeners.append(self.on_event)

        async def sample() -> None:
            while True:
                self.sample_batcher(state.engine.stats)
                await asyncio.sleep(SAMPLE_INTERVAL_S)

        self._sampler = asyncio.create_task(sample(), name="metrics-sampler")

    async def stop(self) -> None:
        task, self._sampler = self._sampler, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.lag.stop()

    async def render(self, state: Any) -> bytes:
        scraped = _Scraped(state=state)
        if state is not None:
            self.sample_batcher(state.engine.stats)  # a scrape sees every batch finished before it
            for status in Status:
                scraped.jobs[status] = await state.store.count_jobs((status,))
        self._scraped = scraped
        return generate_latest(self.registry)

    async def endpoint(self, request: Request) -> Response:
        state = getattr(request.app.state, "altyazi", None)
        return Response(await self.render(state), media_type=CONTENT_TYPE_LATEST)


class _StateCollector:
    """Reads the running parts at scrape time (after ``Metrics.render`` gathered the async bits)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        yield from self._lag()
        scraped = self._metrics._scraped
        state = scraped.state
        if state is None:
            return
        yield _gauge("altyazi_ready", "1 when the model is loaded and the server takes jobs.", float(state.ready and not state.draining))
        yield _gauge("altyazi_draining", "1 while shutting down (uploads get 503).", float(state.draining))
        info = GaugeMetricFamily("altyazi_model_info", "The resident model.", labels=("model", "multilingual"))
        info.add_metric((str(state.model_name), str(bool(state.multilingual)).lower()), 1.0)
        yield info

        jobs = GaugeMetricFamily("altyazi_jobs", "Jobs in the store, by status.", labels=("status",))
        for status, count in scraped.jobs.items():
            jobs.add_metric((status,), float(count))
        yield jobs
        yield _gauge("altyazi_jobs_active", "Job tasks in this process (waiting for admission or running).", state.manager.active)

        stats = state.engine.stats
        yield _gauge("altyazi_queue_depth", "Audio windows waiting for the model (queued or being prepared).", stats.queue_depth)
        yield _gauge("altyazi_batch_running_windows", "Audio windows in the model now.", stats.running)
        batches = stats.batches_run
        items = stats.items_run
        yield _counter("altyazi_batches", "Batches handed to the model.", batches)
        yield _counter("altyazi_batch_windows_run", "Audio windows the model ran.", items)
        yield _counter("altyazi_batch_windows_failed", "Audio windows whose batch failed.", stats.items_failed)
        yield _counter("altyazi_batch_windows_cancelled", "Audio windows withdrawn before they ran.", stats.items_cancelled)
        yield _counter("altyazi_batch_oom_splits", "Batches halved after an out-of-memory error.", stats.ooms_split)
        yield _counter("altyazi_fallbacks", "Audio windows decoded again one temperature warmer.", stats.fallbacks)
        yield _counter(
            "altyazi_encoder_cache_hits", "Fallback windows that reused their kept encoder output.", stats.encoder_cache_hits
        )
        yield _batch_size_histogram(stats.batch_size_histogram)
        run_s = float(stats.total_run_s)
        audio_s = float(state.manager.audio_seconds_done)
        yield _counter("altyazi_audio_seconds_processed", "Seconds of audio transcribed.", audio_s)
        # Model time per audio second: 0.07 means 14x faster than real time.
        yield _gauge(
            "altyazi_realtime_factor", "Model run seconds per audio second transcribed, since start (lower is faster).",
            run_s / audio_s if audio_s > 0 and run_s > 0 else 0.0,
        )

        yield _gauge("altyazi_ffmpeg_processes_busy", "ffmpeg/ffprobe processes running.", state.pool.busy)
        yield _gauge("altyazi_ffmpeg_processes_waiting", "ffmpeg/ffprobe calls waiting for a process slot.", state.pool.waiting)
        yield _gauge("altyazi_uploads_in_flight", "Uploads being received now.", state.uploads_in_flight)
        yield _gauge("altyazi_sse_streams_open", "Open job event streams.", state.sse_streams)
        yield _gauge("altyazi_exports_active", "Exports queued for or running in ffmpeg now.", state.exports.active)

    def _lag(self) -> Iterable[Metric]:
        snap = self._metrics.lag.snapshot()
        buckets = [(_le(bound), float(count)) for bound, count in snap.buckets]
        buckets.append(("+Inf", float(snap.count)))
        yield HistogramMetricFamily(
            "altyazi_event_loop_lag_seconds", "How late the event loop wakes a periodic timer.",
            buckets=buckets, sum_value=snap.sum_s,
        )
        # No precomputed p99/max gauges: they cannot be aggregated across servers or
        # over other windows; histogram_quantile() over the buckets gives both.


def _le(bound: float) -> str:
    return repr(float(bound))


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=float(value))


def _batch_size_histogram(sizes: dict[int, int]) -> HistogramMetricFamily:
    buckets = []
    for bound in BATCH_SIZE_BUCKETS:
        total = sum(n for size, n in sizes.items() if size <= bound)
        buckets.append((_le(bound), float(total)))
    count = sum(sizes.values())
    windows = sum(size * n for size, n in sizes.items())
    buckets.append(("+Inf", float(count)))
    return HistogramMetricFamily(
        "altyazi_batch_size", "Audio windows per batch handed to the model.", buckets=buckets, sum_value=float(windows)
    )


def route_template(scope: Scope) -> str:
    """The matched route's path template (``/v1/jobs/{job_id}``), never the raw path.

    Raw paths carry job ids, which would make one time series per job.
    """
    app = scope.get("app")
    partial: str | None = None
    for route in getattr(app, "routes", ()):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return str(getattr(route, "path", UNMATCHED))
        if match == Match.PARTIAL and partial is None:
            partial = str(getattr(route, "path", UNMATCHED))  # right path, other method: a 405
    return partial or UNMATCHED


class HttpMetricsMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware, which buffers and breaks streaming).

    Counts every response by route template and status, and writes the access
    log line (uvicorn's own access log is off, so there is one format).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering
        # Matched before the app runs: a Mount (/static) rewrites the scope's
        # root_path on the way in, and would no longer match afterwards.
        route = route_template(scope)

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.http_in_progress.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.http_in_progress.dec()
            elapsed = time.perf_counter() - started
            method = str(scope.get("method", "GET"))
            self.metrics.observe_request(route, method, status, elapsed)
            scope_state = scope.get("state") or {}
            owner = scope_state.get("key_name") or scope_state.get("owner")  # a name or id, never the key
            access_log.log(
                logging.DEBUG if route in QUIET_ROUTES else logging.INFO,
                "%s %s %d %.3fs",
                method,
                scope.get("path", ""),
                status,
                elapsed,
                extra={
                    "method": method,
                    "route": route,
                    "path": scope.get("path", ""),  # no query string: it may carry a key
                    "status": status,
                    "duration_s": round(elapsed, 4),
                    **({"owner": owner} if isinstance(owner, str) else {}),
                },
            )
