"""/metrics on a live server (fake engine), the HTTP middleware, and the loop-lag monitor."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.api.looplag import LoopLagMonitor
from tests.conftest import LiveServer, wait_done, wait_export
from tests.media import speak


def scrape(client: httpx.Client) -> dict[str, list[Any]]:
    """Samples by sample name (``altyazi_jobs``, ``altyazi_batch_size_bucket``, ...)."""
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    for s in samples.get(name, []):
        if all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no sample {name} {labels}; have {sorted(samples)}")


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speak("one two three four", tmp_path_factory.mktemp("metrics") / "speech.wav")


def test_metrics_move_after_a_job(make_server: Callable[..., LiveServer], wav: Path) -> None:
    live = make_server()
    with live.client() as client:
        before = scrape(client)
        assert value(before, "altyazi_jobs", status="done") == 0
        assert value(before, "altyazi_audio_seconds_processed_total") == 0
        assert value(before, "altyazi_ready") == 1
        with open(wav, "rb") as fh:
            r = client.post("/v1/jobs", files={"file": ("speech.wav", fh)}, data={"vad": "false"})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert wait_done(client, job_id)["status"] == "done"
        client.get("/v1/jobs/does-not-exist")
        after = scrape(client)

    assert value(after, "altyazi_jobs", status="done") == 1
    assert value(after, "altyazi_jobs", status="queued") == 0
    assert value(after, "altyazi_audio_seconds_processed_total") > 1.0
    assert value(after, "altyazi_batch_windows_run_total") >= 1  # the fake engine's "completed"
    # Route templates, never raw paths: the job id must not become a label.
    assert value(after, "altyazi_http_requests_total", route="/v1/jobs", method="POST", status="202") == 1
    assert value(after, "altyazi_http_requests_total", route="/v1/jobs/{job_id}", method="GET", status="200") >= 1
    assert value(after, "altyazi_http_requests_total", route="/v1/jobs/{job_id}", method="GET", status="404") == 1
    assert not any(job_id in str(s.labels) for samples in after.values() for s in samples)
    # Everything the load test and the dashboards read is there.
    for name in (
        "altyazi_queue_depth",
        "altyazi_batch_size_bucket",
        "altyazi_batch_run_seconds_sum",
        "altyazi_window_wait_seconds_count",
        "altyazi_fallbacks_total",
        "altyazi_encoder_cache_hits_total",
        "altyazi_batch_oom_splits_total",
        "altyazi_realtime_factor",
        "altyazi_ffmpeg_processes_busy",
        "altyazi_ffmpeg_processes_waiting",
        "altyazi_uploads_in_flight",
        "altyazi_sse_streams_open",
        "altyazi_event_loop_lag_seconds_bucket",
        "altyazi_http_request_duration_seconds_bucket",
        "process_resident_memory_bytes",
    ):
        assert name in after, name
    assert value(after, "altyazi_event_loop_lag_seconds_count") > 0  # the monitor runs in the lifespan
    # No lag past 1 s: every sample is in the le="1.0" bucket.
    assert value(after, "altyazi_event_loop_lag_seconds_bucket", le="1.0") == value(after, "altyazi_event_loop_lag_seconds_count")


def test_unmatched_and_wrong_method_use_bounded_labels(make_server: Callable[..., LiveServer]) -> None:
    live = make_server()
    with live.client() as client:
        assert client.get("/no/such/path/abc123").status_code == 404
        assert client.patch("/v1/jobs").status_code == 405
        samples = scrape(client)
    assert value(samples, "altyazi_http_requests_total", route="unmatched", status="404") == 1
    assert value(samples, "altyazi_http_requests_total", route="/v1/jobs", method="PATCH", status="405") == 1


def test_two_servers_have_separate_registries(make_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    a = make_server(data_dir=tmp_path / "a")
    b = make_server(data_dir=tmp_path / "b")
    with a.client() as ca, b.client() as cb:
        for _ in range(3):
            ca.get("/healthz")
        assert value(scrape(ca), "altyazi_http_requests_total", route="/healthz") == 3
        assert "altyazi_http_requests_total" not in scrape(cb) or all(
            s.labels["route"] != "/healthz" for s in scrape(cb)["altyazi_http_requests_total"]
        )


async def test_loop_lag_sees_a_blocked_loop() -> None:
    monitor = LoopLagMonitor(interval_s=0.01)
    monitor.start()
    try:
        await asyncio.sleep(0.05)
        time.sleep(0.2)  # noqa: ASYNC251 - block the loop on purpose
        await asyncio.sleep(0.05)
    finally:
        await monitor.stop()
    snap = monitor.snapshot()
    assert snap.count >= 3
    assert 0.15 <= snap.max_s < 1.0
    assert snap.buckets[-1][1] == snap.count  # every sample below 5 s
    bounds = dict(snap.buckets)
    assert bounds[0.1] < snap.count <= bounds[0.25]  # exactly one sample was that late


def test_loop_lag_histogram_is_cumulative() -> None:
    monitor = LoopLagMonitor()
    for lag in (0.0005, 0.003, 0.003, 0.2, 7.0, -0.001):
        monitor.record(lag)
    snap = monitor.snapshot()
    bounds = dict(snap.buckets)
    assert bounds[0.001] == 2  # 0.0005 and the negative one, clamped to 0
    assert bounds[0.005] == 4
    assert bounds[0.25] == 5
    assert bounds[5.0] == 5 and snap.count == 6  # 7 s only lands in +Inf
    assert snap.max_s == 7.0
    assert snap.p99_s == 7.0


def test_static_routes_finished_jobs_and_exports(make_server: Callable[..., LiveServer], wav: Path) -> None:
    live = make_server()
    with live.client() as client:
        assert client.get("/static/app.js").status_code == 200
        with open(wav, "rb") as fh:
            job_id = client.post("/v1/jobs", files={"file": ("speech.wav", fh)}, data={"vad": "false"}).json()["id"]
        assert wait_done(client, job_id)["status"] == "done"
        export_id = client.post(f"/v1/jobs/{job_id}/exports", json={"mode": "soft", "container": "mkv"}).json()["id"]
        assert wait_export(client, job_id, export_id)["status"] == "done"
        time.sleep(0.3)  # one sampler pass after the last batch
        samples = scrape(client)
    # Static files are their mount's route, not "unmatched".
    assert value(samples, "altyazi_http_requests_total", route="/static", method="GET", status="200") == 1
    assert not [s for s in samples["altyazi_http_requests_total"] if s.labels["route"] == "unmatched"]
    assert value(samples, "altyazi_jobs_finished_total", status="done") == 1
    assert value(samples, "altyazi_jobs_finished_total", status="failed") == 0
    assert value(samples, "altyazi_job_duration_seconds_count", status="done") == 1
    assert value(samples, "altyazi_exports_created_total") == 1
    assert value(samples, "altyazi_exports_finished_total", status="done") == 1
    assert value(samples, "altyazi_export_duration_seconds_count", status="done") == 1
    assert value(samples, "altyazi_exports_active") == 0
    # Histograms with buckets, not count/sum summaries; no precomputed quantile gauges.
    for name in ("altyazi_batch_run_seconds", "altyazi_batch_prepare_seconds", "altyazi_window_wait_seconds"):
        assert f"{name}_bucket" in samples, name
    assert value(samples, "altyazi_window_wait_seconds_count") >= 1
    assert "altyazi_event_loop_lag_p99_seconds" not in samples and "altyazi_event_loop_lag_max_seconds" not in samples


def test_sampler_turns_totals_into_observations() -> None:
    from types import SimpleNamespace

    from app.api.metrics import Metrics

    m = Metrics()
    stats = SimpleNamespace(batches_run=0, running=0, total_run_s=0.0, total_prepare_s=0.0, items_run=0, total_wait_s=0.0)
    m.sample_batcher(stats)
    stats.batches_run, stats.running, stats.items_run = 1, 4, 4  # on the model: its time is not in yet
    m.sample_batcher(stats)
    assert m.registry.get_sample_value("altyazi_batch_run_seconds_count") == 0
    stats.running, stats.total_run_s, stats.total_wait_s = 0, 0.3, 2.0
    m.sample_batcher(stats)
    stats.batches_run, stats.total_run_s = 3, 0.5  # two batches in one interval: 0.1 s each
    m.sample_batcher(stats)
    assert m.registry.get_sample_value("altyazi_batch_run_seconds_count") == 3
    assert m.registry.get_sample_value("altyazi_batch_run_seconds_sum") == pytest.approx(0.5)
    assert m.registry.get_sample_value("altyazi_batch_run_seconds_bucket", {"le": "0.1"}) == 2
    assert m.registry.get_sample_value("altyazi_batch_run_seconds_bucket", {"le": "0.25"}) == 2
    assert m.registry.get_sample_value("altyazi_window_wait_seconds_count") == 4
