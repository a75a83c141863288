"""The waterfall says which window its figures come from, and names a stage the engine could not time."""

from rich.console import Console

from factories import make_snapshot
from tcptop.widgets.header import packet_timing_note
from tcptop.widgets.waterfall import render_waterfall


def stage(count, p50=None, p99=None, **extra):
    return {"count": count, "p50_us": p50, "p90_us": p99, "p99_us": p99, "mean_us": p50, "buckets": [], **extra}


SPLIT = {"skbs": 205, "segments": 9000, "why": "they reached the qdisc as GSO skbs ...",
         "short": "GSO skbs split before the driver"}
HOST = {"rx": {"app": stage(500, 30.0, 900.0)}, "tx": {"qdisc": stage(40, 1.0, 3.0)},
        "window": {"id": 9, "end_ts": 1002.0, "s": 0.1, "age_s": 0.4},
        "coverage": {"mode": "budget", "budget_pct": 0.5, "timed_fraction": 0.042}}


def text(flow, host=HOST) -> str:
    console = Console(width=110, record=True)
    console.print(render_waterfall(flow, host, 110, "iperf3 10.0.0.2:5201"))
    return console.export_text()


def flow(qdisc):
    return {"rx": {"app": stage(0)}, "tx": {"tcp+ip": stage(120, 40.0, 900.0), "qdisc": qdisc,
                                         "driver": stage(3000, 3.0, 9.0)},
            "window": {"id": 7, "end_ts": 1000.0, "s": 0.12}}


def test_a_split_qdisc_stage_is_not_observable_rather_than_an_empty_bar():
    out = text(flow(stage(0, unobserved=SPLIT)))
    qdisc = next(line for line in out.splitlines() if line.startswith("qdisc"))
    assert "not observable: GSO skbs split before the driver" in qdisc
    assert "no samples" not in qdisc


def test_a_partly_timed_stage_says_how_many_it_could_not_time():
    out = text(flow(stage(13, 2.0, 5.0, unobserved=SPLIT)))
    assert "only part timed: 205 more not (GSO skbs split before the driver)" in out


def test_the_figures_window_and_age_and_the_coverage_are_shown():
    """The flow's window ended 2 s before the host's, which was taken 0.4 s before the poll."""
    out = text(flow(stage(40, 1.0, 3.0)))
    assert "a 0.12 s window, 2 s ago; 4.2 % of the time timed, within 0.5 % CPU" in out
    # a busy host's windows time well under 1 % of the time: said with its digits, not as 0 %
    busy = dict(HOST, coverage=dict(HOST["coverage"], timed_fraction=0.0042))
    assert "; 0.42 % of the time timed, within 0.5 % CPU" in text(flow(stage(40, 1.0, 3.0)), busy)


def test_continuous_timing_and_old_replays_without_windows():
    host = dict(HOST, coverage={"mode": "continuous", "budget_pct": None, "timed_fraction": 1.0})
    assert "every packet timed, continuously" in text(flow(stage(40, 1.0, 3.0)), host)
    old = {k: v for k, v in flow(stage(40, 1.0, 3.0)).items() if k != "window"}
    out = text(old, {k: v for k, v in HOST.items() if k not in ("window", "coverage")})
    assert "window" not in out and "timed" not in out


def test_the_header_says_continuous_timing_was_asked_for_and_what_it_costs():
    cont = dict(HOST, coverage={"mode": "continuous", "budget_pct": None, "timed_fraction": 1.0, "cost_pct": 3.214})
    assert packet_timing_note(make_snapshot([], latency=cont)) == \
        "every packet timed continuously (asked for): about 3.2 % of busy CPU, yours to pay"
    assert packet_timing_note(make_snapshot([], latency=HOST)) == ""  # the budget's windows: nothing to say
    assert packet_timing_note(make_snapshot([])) == ""
