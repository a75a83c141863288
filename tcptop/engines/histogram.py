"""Latency histograms as the kernel keeps them, and the percentiles read from them.

Log-linear buckets of nanoseconds (bpf/latency.h): bucket 0 is [0, 128 ns); above it every
power of two is cut into 8 sub-buckets spaced nearly evenly on a log scale (starts at
2^m * (64 + s) / 64 for s in SUB_STARTS), so no bucket is more than 9.7 % wide; the last
bucket also takes everything longer. A percentile's rank is located in its bucket and
interpolated geometrically inside it (linearly in bucket 0): the estimate lies in the same
bucket as the true value, so it is within 9.7 % of it. Means are exact (the kernel sums
nanoseconds). Engine-agnostic: any engine that keeps these buckets reports stages the same way.

RTT samples per connection (Flow.rtt_hist) are kept apart, in log2 buckets of microseconds
(RTT_BUCKETS, at the end).
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import accumulate
from typing import Any, Iterable, Sequence

BUCKETS = 256
MIN_SHIFT = 7
SUB_STARTS = (0, 6, 12, 19, 27, 35, 44, 53)  # round(64 * (2^(k/8) - 1)), as LAT_SUB_STARTS
GROUPS = BUCKETS // 8
PERCENTILES = (("p50_us", 0.50), ("p90_us", 0.90), ("p99_us", 0.99))


def _lower(b: int) -> int:
    if b == 0:
        return 0
    m, s = MIN_SHIFT + (b - 1) // 8, (b - 1) % 8
    return ((64 + SUB_STARTS[s]) << m) >> 6


LOWER_NS: tuple[int, ...] = tuple(_lower(b) for b in range(BUCKETS))
# Upper bound of each bucket as the JSON contract writes it: the next bucket's start; None for the last.
UPPER_NS: tuple[int | None, ...] = LOWER_NS[1:] + (None,)


def bucket_of(ns: int) -> int:
    """The bucket the kernel puts a duration in (the same arithmetic as bucket_of() in latency.bpf.c)."""
    if ns < 1 << MIN_SHIFT:
        return 0
    m = ns.bit_length() - 1
    mant = (ns >> (m - 6)) & 63
    sub = sum(1 for start in SUB_STARTS[1:] if mant >= start)
    return min(1 + ((m - MIN_SHIFT) << 3) + sub, BUCKETS - 1)


def bucket_bounds(b: int) -> tuple[float, float]:
    """[lo, hi) of bucket b, nanoseconds (hi is infinite for the last)."""
    hi = UPPER_NS[b]
    return float(LOWER_NS[b]), float("inf") if hi is None else float(hi)


def _value_at(b: int, frac: float) -> float:
    lo, hi = bucket_bounds(b)
    if b == 0:
        return hi * frac
    if hi == float("inf"):
        return lo
    return lo * (hi / lo) ** frac


def percentiles_ns(pairs: Sequence[tuple[int, int]], qs: Iterable[float]) -> list[float | None]:
    """The q-quantiles (0 < q <= 1, ascending) of a histogram given as (bucket, samples) pairs of
    its non-empty buckets, ascending; None for each when it is empty."""
    qs = list(qs)
    count = sum(c for _, c in pairs)
    if count <= 0:
        return [None] * len(qs)
    out: list[float | None] = []
    it = iter(pairs)
    b, c = next(it)
    cum = 0
    for q in qs:
        rank = max(q * count, 1e-9)
        while cum + c < rank:
            cum += c
            b, c = next(it)
        out.append(_value_at(b, (rank - cum) / c))
    return out


def percentile_ns(slots: Sequence[int], q: float) -> float | None:
    """The q-quantile of a histogram given as one count per bucket."""
    return percentiles_ns([(b, c) for b, c in enumerate(slots) if c], [q])[0]


_LO = tuple(float(x) for x in LOWER_NS)
_RATIO = tuple(UPPER_NS[b] / LOWER_NS[b] if b and UPPER_NS[b] else 0.0 for b in range(BUCKETS))


def summary_of_pairs(pairs: Sequence[tuple[int, int]], sum_ns: int) -> dict[str, Any]:
    """{"count", "p50_us", "p90_us", "p99_us", "mean_us", "buckets"}; nulls when there is no
    sample. "buckets" are the kernel's own: [upper bound in ns, samples] of each non-empty
    bucket, ascending (the last bucket's bound is null: it takes everything longer), so a
    consumer (the exporter) can re-bucket exactly instead of trusting percentiles.

    The same figures as percentiles_ns(), written for speed: a window can hold thousands of
    flow stages, and each is summarised once."""
    if not pairs:
        return {"count": 0, "p50_us": None, "p90_us": None, "p99_us": None, "mean_us": None, "buckets": []}
    key = tuple(pairs)
    shape = _SHAPES.get(key)
    if shape is None:
        shape = _SHAPES[key] = _shape(pairs)
        if len(_SHAPES) > 8192:  # windows of few packets repeat a few shapes; keep the newest
            del _SHAPES[next(iter(_SHAPES))]
    total = shape[0]
    d = dict(zip(_SHAPE_KEYS, shape))
    d["mean_us"] = round(sum_ns / total / 1000, 3)
    d["buckets"] = shape[4]
    return d


_SHAPE_KEYS = ("count", *(name for name, _ in PERCENTILES))
_SHAPES: dict[tuple, tuple] = {}


def _shape(pairs: Sequence[tuple[int, int]]) -> tuple:
    """(count, p50_us, p90_us, p99_us, buckets) of a histogram: all but the mean depend only on
    the counts, and short windows bring the same few histograms again and again."""
    counts = [c for _, c in pairs]
    cum = list(accumulate(counts))
    total = cum[-1]
    out: list[Any] = [total]
    for _, q in PERCENTILES:
        rank = max(q * total, 1e-9)
        i = bisect_left(cum, rank)
        b = pairs[i][0]
        frac = (rank - (cum[i - 1] if i else 0)) / counts[i]
        r = _RATIO[b]
        v = _LO[b] * r ** frac if r else (UPPER_NS[0] * frac if b == 0 else _LO[b])
        out.append(round(v / 1000, 3))
    out.append([[UPPER_NS[b], c] for b, c in pairs])  # shared by summaries of the same shape: read-only
    return tuple(out)


def stage_summary(slots: Sequence[int], sum_ns: int, max_ns: int = 0) -> dict[str, Any]:
    """summary_of_pairs() of a histogram given as one count per bucket. With a known maximum
    (an engine that keeps one), no percentile exceeds it and "max_us" says it."""
    d = summary_of_pairs([(b, c) for b, c in enumerate(slots) if c], sum_ns)
    if max_ns and d["count"]:
        cap = round(max_ns / 1000, 3)
        d = dict(d, **{name: min(d[name], cap) for name, _ in PERCENTILES}, max_us=cap)
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
