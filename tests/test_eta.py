"""app/pipeline/eta.py: the measured rate and the ETA formulas, on a fake clock."""

from __future__ import annotations

import pytest

from app.pipeline.eta import MIN_SPAN_S, WINDOW_S, Throughput, queued_eta, running_eta


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_is_measured_over_busy_time_only() -> None:
    clock = Clock()
    rates = Throughput(clock)
    assert rates.rate is None
    clock.now += 3600  # an idle hour counts for nothing
    rates.busy()
    clock.now += 10
    rates.add(300.0)  # 300 s of audio in 10 s
    assert rates.rate == pytest.approx(30.0)


def test_a_result_right_at_the_start_is_not_a_measurement() -> None:
    clock = Clock()
    rates = Throughput(clock)
    rates.busy()
    clock.now += MIN_SPAN_S / 2
    rates.add(30.0)
    assert rates.rate is None


def test_rate_is_smoothed_and_kept_across_idle_periods() -> None:
    clock = Clock()
    rates = Throughput(clock)
    rates.busy()
    for _ in range(30):  # a steady 10x
        clock.now += 3
        rates.add(30.0)
    assert rates.rate == pytest.approx(10.0, rel=0.05)
    clock.now += 3
    rates.add(300.0)  # one big batch at once moves it, but not all the way
    assert 10.0 < rates.rate < 10.0 + 300.0 / WINDOW_S
    rates.idle()
    assert rates.rate is not None  # the best guess for the next job
    clock.now += 500
    rates.busy()
    clock.now += 5
    rates.add(50.0)
    assert rates.rate is not None and rates.rate < 20


def test_running_jobs_share_the_model() -> None:
    assert running_eta(100.0, [], None) is None
    assert running_eta(100.0, [], 10.0) == pytest.approx(10.0)
    # Another job with more left shares every second until this one is done.
    assert running_eta(100.0, [500.0], 10.0) == pytest.approx(20.0)
    # One with less left shares only until it is done.
    assert running_eta(100.0, [20.0], 10.0) == pytest.approx(12.0)


def test_queued_job_waits_for_the_work_ahead() -> None:
    assert queued_eta(60.0, [100.0, 40.0], 10.0) == pytest.approx(20.0)
    assert queued_eta(60.0, [], 0.0) is None
