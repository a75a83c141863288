"""The packet-level engine's duty cycle: windows sized so the engine's cost stays within its budget (no kernel)."""

import pytest

from tcptop.engines.core.latency_budget import (AIM, MIN_WINDOW_S, NS_PER_RUN, OWN_FLOOR_NS_PER_S, OWN_SHARE, Budget, Cycle,
                                               Plan)

BUSY_2_CPUS = 1_600_000_000  # ns of busy CPU per second: a machine at 80 % of two CPUs


def cycle(runs_per_s: float, open_s: float, elapsed_s: float = 1.0, busy_per_s: float = BUSY_2_CPUS,
          own_ns: int = 0) -> Cycle:
    return Cycle(open_s=open_s, open_runs=int(runs_per_s * open_s), drain_runs=0, elapsed_s=elapsed_s,
                 busy_ns=int(busy_per_s * elapsed_s), own_ns=own_ns)


def cost_pct(b: Budget, runs_per_s: float) -> float:
    """What the planned windows would cost, in % of busy CPU, at this traffic."""
    p = b.plan
    return 100 * runs_per_s * p.window_s * NS_PER_RUN / (BUSY_2_CPUS * p.period_s)


def test_busy_traffic_gets_windows_whose_cost_is_within_the_budget():
    """redis-like: 1.3 million program runs a second if every packet were timed (26 % of busy CPU)."""
    b = Budget(0.5, period_s=1.0)
    runs = 1_300_000
    for _ in range(10):
        b.observe(cycle(runs, b.plan.window_s))
    assert not b.plan.continuous
    assert cost_pct(b, runs) == pytest.approx(0.5 * AIM, rel=0.01)
    assert b.cost_pct() <= 0.5


def test_quiet_traffic_is_timed_continuously():
    b = Budget(0.5, period_s=1.0)
    for _ in range(12):
        b.observe(cycle(1_000, b.plan.window_s if not b.plan.continuous else 1.0))
    assert b.plan.continuous


def test_windows_grow_at_most_twofold_a_cycle_and_shrink_at_once():
    b = Budget(0.5, period_s=1.0)
    for _ in range(3):
        w0 = b.plan.window_s
        b.observe(cycle(100, w0))
        assert b.plan.window_s == pytest.approx(2 * w0)
    w0 = b.plan.window_s
    b.observe(cycle(1_300_000, w0))  # traffic jumps
    assert b.plan.window_s < w0 / 2


def test_on_a_quiet_host_windows_grow_per_base_period_and_reach_continuous_timing_in_two_cycles():
    """The thread's own cost spaces cycles 5 s apart (base period 1 s): traffic far within the
    budget lets a window double per second the cycle lasted (5 ms -> 160 ms -> continuous),
    where busier traffic (half the budget's allowance if timed throughout) still doubles per
    cycle."""
    quiet, busy = Budget(0.5, period_s=1.0), Budget(0.5, period_s=1.0)
    own = int(5.0 * OWN_FLOOR_NS_PER_S)  # 10 ms a cycle at the floor: a cycle every 5 s
    busy_runs = 0.5 * AIM * 0.005 * BUSY_2_CPUS / NS_PER_RUN
    windows, continuous = [], []
    for _ in range(2):
        quiet.observe(cycle(100, quiet.plan.window_s, elapsed_s=5.0, own_ns=own))
        busy.observe(cycle(busy_runs, busy.plan.window_s, elapsed_s=5.0, own_ns=own))
        windows.append((quiet.plan.window_s, busy.plan.window_s))
        continuous.append(quiet.plan.continuous)
    assert windows[0] == pytest.approx((MIN_WINDOW_S * 32, MIN_WINDOW_S * 2))
    assert windows[1][1] == pytest.approx(MIN_WINDOW_S * 4)
    assert continuous == [False, True] and not busy.plan.continuous


def test_traffic_too_heavy_for_the_shortest_window_spaces_windows_out():
    b = Budget(0.5, period_s=1.0)
    runs = 100_000_000  # a 5 ms window costs more than a second's budget
    for _ in range(5):
        b.observe(cycle(runs, b.plan.window_s, elapsed_s=b.plan.period_s))
    assert b.plan.window_s == MIN_WINDOW_S and b.plan.period_s > 1.0
    assert cost_pct(b, runs) == pytest.approx(0.5 * AIM, rel=0.01)


def test_an_expensive_summary_spaces_windows_out_and_lengthens_them():
    """The engine's own thread spent 40 ms on a window's flows: at a quarter of 0.5 % of 1.6
    CPUs (2 ms a second) windows come every ~20 s instead of every second, each longer, so the
    share of time timed stays what the BPF budget allows."""
    runs = 1_300_000
    cheap, costly = Budget(0.5, period_s=1.0), Budget(0.5, period_s=1.0)
    for _ in range(10):
        cheap.observe(cycle(runs, cheap.plan.window_s, own_ns=1_000_000))
        costly.observe(cycle(runs, costly.plan.window_s, elapsed_s=costly.plan.period_s, own_ns=40_000_000))
    assert cheap.plan.period_s == 1.0
    assert costly.plan.period_s == pytest.approx(40_000_000 / (OWN_SHARE * 0.005 * BUSY_2_CPUS), rel=0.01)
    assert costly.plan.window_s / costly.plan.period_s == pytest.approx(cheap.plan.window_s, rel=0.05)


def test_on_a_quiet_host_the_engine_may_spend_its_floor():
    b = Budget(0.5, period_s=1.0)
    for _ in range(3):
        b.observe(cycle(10, b.plan.window_s, busy_per_s=50_000_000, own_ns=OWN_FLOOR_NS_PER_S // 2))
    assert b.plan.period_s == 1.0


def test_more_segments_than_when_measured_shrink_the_next_window_before_it_opens():
    b = Budget(0.5, period_s=1.0)
    for _ in range(6):
        b.observe(Cycle(open_s=b.plan.window_s, open_runs=int(1_300_000 * b.plan.window_s), drain_runs=0,
                        elapsed_s=1.0, busy_ns=BUSY_2_CPUS, packets_open=int(100_000 * b.plan.window_s)))
    w = b.plan.window_s
    assert b.adjust_for_load(200_000).window_s == pytest.approx(w / 2, rel=0.01)


def test_after_a_burst_the_next_window_comes_when_the_traffic_now_affords_it():
    """A window measured 5 million runs a second at 200,000 packets a second: the budget
    spaces windows out. When the packet rate falls tenfold before the next window, the
    period is what the budget would choose for a tenth of that traffic (never under the base
    period or the thread's own floor, never longer than planned); when it does not fall, the
    plan stands."""
    b = Budget(0.5, period_s=1.0)
    runs, packets = 5_000_000, 200_000
    b.observe(Cycle(open_s=MIN_WINDOW_S, open_runs=int(runs * MIN_WINDOW_S), drain_runs=0, elapsed_s=1.0,
                    busy_ns=BUSY_2_CPUS, packets_open=int(packets * MIN_WINDOW_S)))
    planned = b.plan.period_s
    per_s = AIM * 0.005 * BUSY_2_CPUS
    assert planned == pytest.approx(runs * NS_PER_RUN * MIN_WINDOW_S / per_s, rel=0.01)  # 1.56 s
    assert b.period_now(packets) == planned and b.period_now(2 * packets) == planned
    assert b.period_now(packets / 10) == 1.0  # a tenth of the runs fits in a base period
    heavier = Budget(0.5, period_s=1.0)
    heavier.observe(Cycle(open_s=MIN_WINDOW_S, open_runs=int(20 * runs * MIN_WINDOW_S), drain_runs=0,
                          elapsed_s=1.0, busy_ns=BUSY_2_CPUS, packets_open=int(packets * MIN_WINDOW_S)))
    assert heavier.period_now(packets / 10) == pytest.approx(heavier.plan.period_s / 10, rel=0.01)
    assert b.period_now(0) == 1.0
    assert b.spaced_by_traffic() == (planned > 2.0)  # the thread's own cost asks for the base period


def test_the_period_now_never_goes_under_what_the_threads_own_cost_needs():
    b = Budget(0.5, period_s=1.0)
    b.observe(Cycle(open_s=MIN_WINDOW_S, open_runs=int(2e8 * MIN_WINDOW_S), drain_runs=0, elapsed_s=1.0,
                    busy_ns=BUSY_2_CPUS, packets_open=1000, own_ns=40_000_000))
    own_period = 40_000_000 / (OWN_SHARE * 0.005 * BUSY_2_CPUS)
    assert b.plan.period_s > 2 * own_period and b.spaced_by_traffic()
    assert b.period_now(0) == pytest.approx(own_period, rel=0.01)
    quiet = Budget(0.5, period_s=1.0)
    quiet.observe(Cycle(open_s=MIN_WINDOW_S, open_runs=10, drain_runs=0, elapsed_s=1.0, busy_ns=BUSY_2_CPUS,
                        packets_open=10, own_ns=40_000_000))
    assert quiet.plan.period_s == pytest.approx(own_period, rel=0.01) and not quiet.spaced_by_traffic()


def test_the_budget_is_a_percentage():
    for bad in (0, -1, 101):
        with pytest.raises(ValueError):
            Budget(bad, period_s=1.0)


def _softnet(path, processed: list[int]) -> None:
    path.write_text("".join(f"{p:08x} 00000000 00000003 00000000 00000000\n" for p in processed))


def test_host_packets_add_every_cpus_packets_across_the_32_bit_wrap(tmp_path):
    from tcptop.engines.core.latency_budget import HostPackets

    f = tmp_path / "softnet_stat"
    _softnet(f, [0xFFFFFF00, 10])
    count = HostPackets(str(f))
    assert count() == 0  # the first look is the baseline
    _softnet(f, [0x00000010, 110])  # CPU 0 wrapped: 0x100 + 0x10 packets
    assert count() == 0x110 + 100
    _softnet(f, [0x00000010, 110, 7])  # a CPU came online: this look is the new baseline
    assert count() == 0x110 + 100
    _softnet(f, [0x00000020, 110, 9])
    assert count() == 0x110 + 100 + 16 + 2
    f.unlink()  # unreadable: nothing more counted, nothing raised
    assert count() == 0x110 + 100 + 18


def test_first_window_is_forecast_from_the_traffic_before_any_is_measured():
    """Busy CPU 0.5 s a second, budget 0.5 %: the windows may cost 2 ms of BPF a second."""
    from tcptop.engines.core.latency_budget import RUNS_PER_PACKET

    per_s = AIM * 0.005 * 0.5e9
    quiet = per_s * 0.25 / (RUNS_PER_PACKET * NS_PER_RUN)  # packets a second timed whole for a quarter of it
    b = Budget(0.5, 1.0)
    assert b.first_plan(quiet * 0.9, 0.5e9) == Plan(1.0, 1.0)  # quiet: continuous at once
    b = Budget(0.5, 1.0)
    assert b.first_plan(quiet * 1.1, 0.5e9) == Plan(MIN_WINDOW_S, 1.0)  # the blind default
    # so busy that 5 ms of it cost 3x what a period allows: the first window comes 3 periods later
    busy = 3 * per_s / (MIN_WINDOW_S * RUNS_PER_PACKET * NS_PER_RUN)
    b = Budget(0.5, 1.0)
    assert b.first_plan(busy, 0.5e9) == Plan(MIN_WINDOW_S, pytest.approx(3.0))
    assert Budget(0.5, 1.0).first_plan(1e9, 0.5e9).period_s == 60.0  # at most MAX_PERIOD_S
    # nothing known of the busy CPU: the default; once a cycle is measured, the measure decides
    assert Budget(0.5, 1.0).first_plan(10, 0) == Plan(MIN_WINDOW_S, 1.0)
    b = Budget(0.5, 1.0)
    b.observe(Cycle(open_s=MIN_WINDOW_S, open_runs=100, drain_runs=0, elapsed_s=1.0, busy_ns=int(0.5e9)))
    assert b.first_plan(0, 0.5e9) == b.plan


def test_the_cycle_in_progress_counts_in_the_reported_shares():
    """A busy host's first cycle lasts a few ms: its share of those ms (here 10 %) must not
    stand for the seconds after it, until the next cycle ends."""
    b = Budget(0.5, period_s=1.0)
    b.observe(cycle(1_300_000, 0.005, elapsed_s=0.03, own_ns=1_000_000))
    assert b.cost_pct() == pytest.approx(100 * 6_500 * NS_PER_RUN / (0.03 * BUSY_2_CPUS), rel=0.01)
    idle = cycle(0, 0.0, elapsed_s=8.0)  # 8 s since, no window open
    assert b.cost_pct(idle) == pytest.approx(100 * 6_500 * NS_PER_RUN / (8.03 * BUSY_2_CPUS), rel=0.01)
    assert b.timed_fraction(idle) == pytest.approx(0.005 / 8.03, rel=0.01)
    assert b.own_pct(idle) == pytest.approx(100 * 1_000_000 / (8.03 * BUSY_2_CPUS), rel=0.01)
    # timing continuously since: its runs so far count as well
    busy = cycle(1_300_000, 2.0, elapsed_s=2.0)
    assert b.cost_pct(busy) == pytest.approx(100 * (6_500 + 2_600_000) * NS_PER_RUN / (2.03 * BUSY_2_CPUS), rel=0.01)
    assert b.timed_fraction(busy) == pytest.approx(2.005 / 2.03, rel=0.01)
    assert len(b.cycles()) == 1  # reporting does not record it
