"""Latency histograms as the kernel keeps them, and the percentiles read from them.

Log2 buckets of nanoseconds: bucket 0 is [0, 512 ns), bucket b >= 1 is
[2^(b+8), 2^(b+9)) ns, the last one also takes everything longer (bpf/latency.h).
A percentile's rank is located in its bucket and interpolated geometrically inside it
(linearly in bucket 0), so it is exact to within the bucket's factor of two; a known
maximum caps every percentile. Engine-agnostic: any engine that keeps these buckets
reports stages the same way.
"""

from __future__ import annotations

from typing import Any

BUCKETS = 32
BUCKET0_SHIFT = 9
PERCENTILES = (("p50_us", 0.50), ("p90_us", 0.90), ("p99_us", 0.99))


def bucket_bounds(b: int) -> tuple[float, float]:
    """[lo, hi) of bucket b, nanoseconds."""
    if b == 0:
        return 0.0, float(1 << BUCKET0_SHIFT)
    return float(1 << (b + BUCKET0_SHIFT - 1)), float(1 << (b + BUCKET0_SHIFT))


def percentile_ns(slots: list[int], q: float, max_ns: int = 0) -> float | None:
    """The q-quantile (0 < q <= 1) of a log2 histogram, interpolated inside its bucket."""
    count = sum(slots)
    if count <= 0:
        return None
    rank = max(q * count, 1e-9)
    cum = 0
    for b, c in enumerate(slots):
        if c and cum + c >= rank:
            frac = (rank - cum) / c
            lo, hi = bucket_bounds(b)
            v = lo + (hi - lo) * frac if b == 0 else lo * 2.0 ** frac
            return min(v, float(max_ns)) if max_ns else v
        cum += c
    return float(max_ns) if max_ns else bucket_bounds(BUCKETS - 1)[1]


def stage_summary(slots: list[int], sum_ns: int, max_ns: int = 0) -> dict[str, Any]:
    """{"count", "p50_us", "p90_us", "p99_us", "mean_us"[, "max_us"], "buckets"}; nulls when there is
    no sample. "buckets" are the kernel's own: [upper bound in ns, samples] of each non-empty
    bucket, ascending (the last bucket's bound is null: it takes everything longer), so a
    consumer (the exporter) can re-bucket exactly instead of trusting percentiles."""
    count = sum(slots)
    d: dict[str, Any] = {"count": count}
    for name, q in PERCENTILES:
        v = percentile_ns(slots, q, max_ns)
        d[name] = None if v is None else round(v / 1000, 3)
    d["mean_us"] = round(sum_ns / count / 1000, 3) if count else None
    if max_ns:
        d["max_us"] = round(max_ns / 1000, 3)
    last = len(slots) - 1
    d["buckets"] = [[None if b == last else int(bucket_bounds(b)[1]), c] for b, c in enumerate(slots) if c]
    return d


# RTT samples per connection (Flow.rtt_hist), as the flow engine keeps them in the kernel
# (RTT_BUCKETS in bpf/flows.h): log2 buckets of microseconds. Bucket 0 holds [0, 2) us,
# bucket b >= 1 holds [2^b, 2^(b+1)) us; a bucket is named by its exclusive upper bound
# 2^(b+1). The last bucket, [2^27, 2^28) us (134-268 s), also takes anything longer, which
# TCP does not measure: an unacknowledged segment is retransmitted within TCP_RTO_MAX
# (120 s), and Karn's rule keeps retransmitted segments out of the estimator.
RTT_BUCKETS = 28
RTT_UPPER_US: tuple[int, ...] = tuple(2 << b for b in range(RTT_BUCKETS))


def rtt_bucket(us: int) -> int:
    """The bucket an RTT sample of `us` microseconds is counted in."""
    return min(max(us, 1).bit_length() - 1, RTT_BUCKETS - 1)


def rtt_hist(counts) -> tuple[tuple[int, int], ...]:
    """(upper bound in us, samples) of each non-empty bucket, ascending, from per-bucket counts."""
    return tuple((RTT_UPPER_US[b], n) for b, n in enumerate(counts) if n)
