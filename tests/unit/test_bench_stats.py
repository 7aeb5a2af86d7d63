"""The bench's percentile and summary arithmetic (the benchmarks themselves are never tests)."""

from __future__ import annotations

import pytest

from foreman.bench.stats import percentile, ratio, summarize


def test_percentile_is_nearest_rank_an_observed_value():
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    # Nearest rank rounds the rank up: never interpolates between two samples.
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.51) == 3.0


def test_percentile_of_one_value_and_tiny_fraction():
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([1.0, 2.0, 3.0], 0.0001) == 1.0


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.01])
def test_percentile_rejects_fractions_outside_0_1(fraction):
    with pytest.raises(ValueError, match="fraction"):
        percentile([1.0], fraction)


def test_percentile_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)


def test_summarize_converts_seconds_to_milliseconds_and_counts_rate():
    latencies = [0.001 * v for v in range(100, 0, -1)]  # unsorted on purpose: 100 ms .. 1 ms
    summary = summarize(latencies, errors=3, duration_s=2.0)
    assert summary.operations == 100
    assert summary.errors == 3
    assert summary.per_s == pytest.approx(50.0)  # successes only
    assert summary.p50_ms == pytest.approx(50.0)
    assert summary.p99_ms == pytest.approx(99.0)
    assert summary.max_ms == pytest.approx(100.0)


def test_summarize_without_successes_has_no_latency_and_zero_rate():
    summary = summarize([], errors=12, duration_s=5.0)
    assert summary.per_s == 0.0
    assert summary.errors == 12
    assert (summary.p50_ms, summary.p99_ms, summary.max_ms) == (None, None, None)


def test_summarize_rejects_an_empty_window():
    with pytest.raises(ValueError, match="duration_s"):
        summarize([0.1], errors=0, duration_s=0.0)


def test_summary_as_dict_uses_prefixed_rounded_keys():
    summary = summarize([0.0012345, 0.002], errors=1, duration_s=1.0)
    assert summary.as_dict("api_get_task") == {
        "api_get_task_p50_ms": 1.23,
        "api_get_task_p99_ms": 2.0,
        "api_get_task_max_ms": 2.0,
        "api_get_task_errors": 1,
        "api_get_task_operations": 2,
    }


def test_ratio_handles_missing_and_zero():
    assert ratio(3.0, 4.0) == 0.75
    assert ratio(None, 4.0) is None
    assert ratio(3.0, None) is None
    assert ratio(3.0, 0.0) is None
