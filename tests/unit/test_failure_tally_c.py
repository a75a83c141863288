"""The failure engine's per-socket tallies in C leave the tallies exactly as the Python twins do.

py_take_counts and py_settle_flows (failures.py) are the reference (the kernel tests check the
engine against the namespace's MIB counters and the tests' own resets); _failure_tally's
take_counts and settle_flows must agree with them on every tally, changed set, FlowFailures,
shown set and unknown table, for any sequence of drained generations: sockets new and known,
resets sent (with or without a reason) and received, older resets arriving after newer ones,
SYN-ACK retransmits, drops by reason, flows listed or not, sockets unknown for a while.
"""

from __future__ import annotations

import gc

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from tcptop.engines.core import failures as F
from tcptop import native

C, _ = native.load("_failure_tally")
EVENTS = struct.Struct("<QQQQII")
DROP_KEY = struct.Struct("<QII")
COOKIES = st.integers(1, 12) | st.just(2**64 - 1)
EVENT = st.tuples(COOKIES, st.integers(0, 3), st.integers(0, 2), st.integers(0, 2), st.integers(0, 2**64 - 1),
                  st.sampled_from([0, 3, 7, 2**32 - 1]), st.sampled_from([F.RD_NONE, F.RD_SENT, F.RD_RECEIVED]))
DROP = st.tuples(COOKIES, st.sampled_from([2, 5, 77]), st.integers(1, 2**40))
GENERATION = st.tuples(st.lists(st.lists(EVENT, max_size=6), max_size=3), st.lists(st.lists(DROP, max_size=6), max_size=3),
                       st.sets(COOKIES), st.sets(COOKIES))  # events, drops (batches), listed flows, unknown cookies


def _batches(events, drops):
    ev = [(b"".join(struct.pack("<Q", e[0]) for e in batch), b"".join(EVENTS.pack(*e[1:]) for e in batch))
          for batch in events]
    dr = [(b"".join(DROP_KEY.pack(d[0], d[1], 0) for d in batch), b"".join(struct.pack("<Q", d[2]) for d in batch))
          for batch in drops]
    return ev, dr


def _state(t: F._Sock) -> tuple:
    return tuple(getattr(t, s) for s in F._Sock.__slots__)


def test_the_c_tallies_are_built_and_used():
    assert C is not None  # built by `make setup`
    assert F.take_counts is not F.py_take_counts and F.settle_flows is not F.py_settle_flows


@settings(max_examples=300, deadline=None)
@given(st.lists(GENERATION, min_size=1, max_size=5))
def test_c_tallies_equal_python(generations):
    sides = {impl: {"socks": {}, "shown": set(), "unknown": {}, "cache": {}, "made": []}
             for impl in ("C", "Python")}
    fns = {"C": (C.take_counts, C.settle_flows), "Python": (F.py_take_counts, F.py_settle_flows)}

    def maker(side):
        def make(t):
            ff = F.FlowFailures(dict(t.drops or {}), t.resets_sent, t.resets_received, repr(t.last_reset[1:]))
            side["cache"][F._ff_key(t)] = ff
            side["made"].append(F._ff_key(t))
            return ff
        return make

    for poll, (events, drops, listed, unknown) in enumerate(generations, 1):
        ev, dr = _batches(events, drops)
        got = {}
        for impl, (take, settle) in fns.items():
            side = sides[impl]
            for c in unknown:
                side["unknown"].setdefault(c, 1)
            changed = take(ev, dr, side["socks"], poll)
            cookies = changed.union(side["unknown"])
            per_flow, rest = settle(cookies, side["socks"], {c: None for c in listed}, side["shown"], side["unknown"],
                                    side["cache"], maker(side))
            got[impl] = (changed, per_flow, rest)
        assert got["C"][0] == got["Python"][0]
        assert got["C"][1] == got["Python"][1]
        assert got["C"][2] == got["Python"][2]  # the same cookies in the same order (one set iterated)
        c, py = sides["C"], sides["Python"]
        assert c["socks"].keys() == py["socks"].keys()
        assert all(_state(c["socks"][k]) == _state(py["socks"][k]) for k in c["socks"])
        # a reset's (ns, direction, reason) is three numbers: out of the collector's sight
        assert not any(gc.is_tracked(t.last_reset) for t in c["socks"].values() if t.last_reset[0])
        assert c["shown"] == py["shown"] and c["unknown"] == py["unknown"] and c["made"] == py["made"]


def test_c_tallies_refuse_partial_batches():
    import pytest
    with pytest.raises(ValueError, match="partial or unpaired"):
        C.take_counts([(b"\0" * 8, b"\0" * 39)], [], {}, 1)
    with pytest.raises(TypeError, match="keys bytes, values bytes"):
        C.take_counts([], [(b"\0" * 16,)], {}, 1)
