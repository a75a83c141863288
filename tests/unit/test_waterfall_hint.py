"""The waterfall's one-line hint names the stage where a packet's time goes."""

from tcptop.widgets.waterfall import dominant_hint


def stage(count, p50, mean=None):
    d = {"count": count, "p50_us": p50, "p99_us": p50 * 2}
    if mean is not None:
        d["mean_us"] = mean
    return d


def test_slow_reader_dominates_receive():
    rx = {"driver": stage(10, 2, 2), "ip": stage(10, 1, 1), "tcp": stage(10, 3, 3), "app": stage(10, 80_000, 94)}
    assert dominant_hint("rx", rx) == "94% of receive time is waiting for the application to read"


def test_merged_stage_is_named_as_merged_and_p50_used_without_mean():
    tx = {"tcp+ip": stage(5, 30), "qdisc": stage(5, 10), "driver": stage(5, 10)}
    assert dominant_hint("tx", tx) == "60% of transmit time is in TCP and IP (not separable on this kernel)"


def test_no_samples_no_hint():
    assert dominant_hint("rx", {"app": {"count": 0, "p50_us": None, "p99_us": None}}) is None


def test_partial_path_gets_no_hint():
    """A sender's receive side: ACKs pass driver and IP but never reach the application."""
    rx = {"driver": stage(10, 2, 2), "ip": stage(10, 1, 1),
          "tcp": {"count": 0, "p50_us": None, "p99_us": None}, "app": {"count": 0, "p50_us": None, "p99_us": None}}
    assert dominant_hint("rx", rx) is None
