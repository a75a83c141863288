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
                                          "mean_us": None}
