"""The snapshot's flows: the flow engine's, each with its packet stages and failures attached.

A poll of a host with 100,000 idle connections must not pass over all of them in Python
(~0.2 s here): only flows that changed, were timed or whose failures changed are joined
again; the listing is rebuilt from a dict in one C-level pass, and an unchanged flow stays
the very object of the last poll (the screen's store and the JSON encoder count on that).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from tcptop.engines.core import flow_decode
from tcptop.engines.core.flow_decode import with_fields
from tcptop.model import Flow


class FlowJoin:
    def __init__(self, join_pass=None) -> None:
        self._pass = join_pass or _join_pass  # the C one when it was built (py_join_pass otherwise)
        self._out: dict[int, Flow] = {}  # id -> the flow as listed
        self._parts: dict[int, tuple] = {}  # id -> (base, stages, failures, joined), flows with something attached
        self._listing: tuple[Flow, ...] = ()
        # What the last update changed in the listing: (flows listed anew, ids no longer listed).
        self.changes: tuple[tuple[Flow, ...], tuple[int, ...]] = ((), ())

    def update(self, base: Mapping[int, Flow], touched: Collection[int], stages: Mapping[int, dict],
               failures: Mapping[int, object]) -> tuple[Flow, ...]:
        """`base`: the flow engine's flows by id; `touched`: ids whose flow changed or went
        since the last update; `stages`: each timed flow's latest stages (kept by the packet
        engine while the flow is listed); `failures`: FlowFailures of flows whose failures
        changed since the last update (a flow keeps its last ones while it is listed, as the
        failure engine keeps a flow's totals until the flow goes)."""
        if not self._parts and not stages and not failures and len(touched) > len(base) // 16:
            # nothing attached anywhere and much changed (a first poll: every flow): the listing
            # is the flow engine's, copied in C rather than joined flow by flow
            old, self._out = self._out, dict(base)
            self._listing = tuple(self._out.values())
            self.changes = (self._listing, ()) if not old else (
                tuple(f for i in touched if (f := base.get(i)) is not None and old.get(i) is not f),
                tuple(i for i in touched if i not in base and i in old))
            return self._listing
        ids = set(touched)
        ids.update(stages)
        ids.update(failures)
        join = self._pass if type(base) is dict and type(stages) is dict and type(failures) is dict else py_join_pass
        new: list[Flow] = []
        gone: list[int] = []
        if join(ids, base, stages, failures, self._out, self._parts, new, gone):
            self._listing = tuple(self._out.values())
        self.changes = (tuple(new), tuple(gone))
        return self._listing


def py_join_pass(ids, base: Mapping[int, Flow], stages: Mapping[int, dict], failures: Mapping[int, object],
                 out: dict[int, Flow], parts: dict[int, tuple], new: list[Flow], gone: list[int]) -> bool:
    """FlowJoin.update's pass over the flows that changed: `out` and `parts` brought up to
    date, the flows listed anew appended to `new`, the ids no longer listed to `gone`; True if
    what is listed changed. _flow_decode.join_pass does the same in C."""
    changed = False
    for i in ids:
        f = base.get(i)
        if f is None:
            if out.pop(i, None) is not None:
                changed = True
                gone.append(i)
            parts.pop(i, None)
            continue
        prev = parts.get(i)
        lat = stages.get(i) or (prev[1] if prev else None)
        ff = failures.get(i) or (prev[2] if prev else None)
        if lat is None and ff is None:
            parts.pop(i, None)
        elif prev is not None and prev[0] is f and prev[1] is lat and prev[2] is ff:
            f = prev[3]
        else:
            parts[i] = (f, lat, ff, f := _joined(f, lat, ff))
        if out.get(i) is not f:
            out[i] = f
            new.append(f)
            changed = True
    return changed


def _joined(f: Flow, lat: dict | None, ff) -> Flow:
    if ff is None:
        return with_fields(f, latency=lat)
    if lat is None:
        return with_fields(f, drops=ff.drops, resets_sent=ff.resets_sent, resets_received=ff.resets_received,
                           last_reset_reason=ff.last_reset_reason)
    return with_fields(f, latency=lat, drops=ff.drops, resets_sent=ff.resets_sent,
                       resets_received=ff.resets_received, last_reset_reason=ff.last_reset_reason)


_join_pass = flow_decode.join_pass or py_join_pass
