"""Percentiles from the kernel's log2 histograms (no kernel needed)."""

import pytest

from tcptop.engines.histogram import percentile_ns, stage_summary


def test_percentiles_interpolate_inside_log2_buckets():
    slots = [0] * 32
    slots[5] = 100  # [8192, 16384) ns
    assert 8192 <= percentile_ns(slots, 0.5) < 16384
    assert percentile_ns(slots, 0.5) == pytest.approx(8192 * 2 ** 0.5)
    assert percentile_ns(slots, 0.99, max_ns=10_000) == 10_000
    assert stage_summary([0] * 32, 0) == {"count": 0, "p50_us": None, "p90_us": None, "p99_us": None,
                                          "mean_us": None, "buckets": []}


def test_summary_carries_the_kernels_own_buckets():
    """Non-empty buckets with their upper bounds, so the exporter re-buckets exactly; the last
    bucket is open-ended."""
    slots = [0] * 32
    slots[0], slots[5], slots[31] = 3, 100, 1
    s = stage_summary(slots, 100 * 10_000)
    assert s["buckets"] == [[512, 3], [16384, 100], [None, 1]]
    assert s["count"] == sum(c for _, c in s["buckets"])
