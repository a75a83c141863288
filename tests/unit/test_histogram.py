"""Percentiles from the kernel's log-linear histograms (no kernel needed)."""

import math
import os
import random
import re

import pytest

from tcptop.engines.histogram import (BUCKETS, LOWER_NS, MIN_SHIFT, SUB_STARTS, UPPER_NS, bucket_bounds, bucket_of,
                                      percentile_ns, percentiles_ns, stage_summary, summary_of_pairs)

HEADER = os.path.join(os.path.dirname(__file__), "..", "..", "bpf", "latency.h")


def test_the_layout_is_the_kernel_sides():
    """bpf/latency.h and this module describe the same buckets."""
    with open(HEADER) as f:
        h = f.read()
    assert int(re.search(r"#define LAT_BUCKETS (\d+)", h).group(1)) == BUCKETS
    assert int(re.search(r"#define LAT_MIN_SHIFT (\d+)", h).group(1)) == MIN_SHIFT
    starts = re.search(r"#define LAT_SUB_STARTS \{([^}]*)\}", h).group(1)
    assert tuple(int(x) for x in starts.split(",")) == SUB_STARTS


def test_buckets_are_contiguous_and_at_most_9_7_percent_wide():
    assert LOWER_NS[0] == 0 and LOWER_NS[1] == 1 << MIN_SHIFT and UPPER_NS[-1] is None
    for b in range(1, BUCKETS - 1):
        lo, hi = bucket_bounds(b)
        assert UPPER_NS[b] == LOWER_NS[b + 1]
        assert 1.05 < hi / lo < 1.097, (b, lo, hi)
    # Every power of two is a bucket boundary (a consumer can merge into powers of two exactly).
    assert {1 << k for k in range(MIN_SHIFT, 38)} <= set(LOWER_NS)


def test_a_duration_lands_in_the_bucket_that_holds_it():
    rng = random.Random(7)
    for ns in [0, 1, 127, 128, 129, 255, 256, 1000, 4096, 10**6, 10**9, 10**12] + \
              [rng.randrange(1, 10**11) for _ in range(5000)]:
        b = bucket_of(ns)
        lo, hi = bucket_bounds(b)
        assert lo <= ns < hi, (ns, b, lo, hi)
    assert bucket_of(10**15) == BUCKETS - 1


@pytest.mark.parametrize("dist", ["uniform", "lognormal", "point", "bimodal"])
def test_any_percentile_is_within_9_7_percent_of_the_exact_one(dist):
    rng = random.Random(dist)
    if dist == "uniform":
        xs = [rng.uniform(1e3, 5e7) for _ in range(20000)]
    elif dist == "lognormal":
        xs = [rng.lognormvariate(10, 2) for _ in range(20000)]
    elif dist == "point":
        xs = [12_345.0] * 1000
    else:
        xs = [rng.gauss(5e3, 300) for _ in range(5000)] + [rng.gauss(4e7, 1e6) for _ in range(5000)]
    xs = sorted(max(x, 1.0) for x in xs)
    slots = [0] * BUCKETS
    for x in xs:
        slots[bucket_of(int(x))] += 1
    for q in (0.01, 0.1, 0.5, 0.9, 0.99, 0.999):
        exact = xs[max(0, math.ceil(q * len(xs)) - 1)]  # the rank-th smallest, as the histogram reads it
        if exact < 1 << MIN_SHIFT:
            continue
        assert abs(percentile_ns(slots, q) - exact) <= 0.097 * exact, (dist, q, exact)


def test_percentiles_interpolate_inside_their_bucket():
    slots = [0] * BUCKETS
    b = bucket_of(10_000)
    slots[b] = 100
    lo, hi = bucket_bounds(b)
    assert percentile_ns(slots, 0.5) == pytest.approx(lo * (hi / lo) ** 0.5)
    assert percentiles_ns([(b, 100)], [0.5, 1.0]) == [pytest.approx(lo * (hi / lo) ** 0.5), pytest.approx(hi)]
    assert stage_summary([0] * BUCKETS, 0) == {"count": 0, "p50_us": None, "p90_us": None, "p99_us": None,
                                               "mean_us": None, "buckets": []}


def test_summary_carries_the_kernels_own_buckets():
    """Non-empty buckets with their upper bounds, so the exporter re-buckets exactly; the last
    bucket is open-ended."""
    slots = [0] * BUCKETS
    slots[0], slots[40], slots[BUCKETS - 1] = 3, 100, 1
    s = stage_summary(slots, 100 * 10_000)
    assert s["buckets"] == [[128, 3], [UPPER_NS[40], 100], [None, 1]]
    assert s["count"] == sum(c for _, c in s["buckets"])
    assert s == summary_of_pairs([(0, 3), (40, 100), (BUCKETS - 1, 1)], 100 * 10_000)
