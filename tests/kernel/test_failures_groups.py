"""Group-by on the live engine: a remote service's group counts the connections `ss -tn` shows to
that peer, and its sums and rates are its flows' sums and rates."""

from __future__ import annotations

import time
from collections import Counter

from kit import recv_exactly, sh
from tcptop.engines import EngineOptions
from tcptop.engines.core.engine import CoreEngine
from tcptop.filter import compile_filter
from tcptop.frontends.screen.groups import build_groups
from tcptop.frontends.screen.store import FrameBuilder, View
from tcptop.frontends.screen.columns import resolve_sort


def test_remote_service_groups_count_what_ss_shows_and_sum_their_flows(nspair):
    ports, conns = {}, []
    for name, n in (("a", 3), ("b", 2)):
        lsn = nspair.socket_in(nspair.b)
        lsn.bind((nspair.addr_b, 0))
        lsn.listen(8)
        ports[name] = lsn.getsockname()[1]
        for _ in range(n):
            c = nspair.socket_in(nspair.a)
            c.connect(lsn.getsockname())
            s, _ = lsn.accept()
            conns.append((c, s))
        lsn.close()
    engine = CoreEngine(EngineOptions(interval_s=0.2, latency="off"))
    try:
        a_ino = nspair.inode(nspair.a)
        keep = lambda f: f.netns == a_ino  # noqa: E731  the client side of the test's connections
        builder = FrameBuilder()
        view = View(resolve_sort("tx"), compile_filter(None))
        builder.build(engine.poll(), view)
        # one connection to each service loses its first segments on the way in
        sh("iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(conns[0][0].getsockname()[1]), "-m", "statistic",
           "--mode", "nth", "--every", "2", "--packet", "0", "-j", "DROP", ns=nspair.a)
        for i, (c, s) in enumerate(conns):
            s.sendall(b"z" * 20000 * (i + 1))
            assert recv_exactly(c, 20000 * (i + 1)) == 20000 * (i + 1)
        time.sleep(0.3)
        frame = builder.build(engine.poll(), view)
        groups = build_groups("remote", frame.rows, frame.order, keep, False, frame.snapshot.failures, keep, {},
                              frame.rows[frame.order[0]].dt)
        # with a state filter ss leaves the state column out: Recv-Q Send-Q Local Peer
        per_peer = Counter(line.split()[3] for line in sh("ss", "-tnH", "state", "established", ns=nspair.a).splitlines())
        for name in ("a", "b"):
            g = groups[("remote", (nspair.addr_b, ports[name]))]
            members = [frame.rows[fid] for fid in g.members]
            assert g.conns == per_peer[f"{nspair.addr_b}:{ports[name]}"] == (3 if name == "a" else 2)
            assert g.rx_bps == sum(r.rx_bps for r in members) > 0
            assert g.drops == sum(r.flow.drops_total for r in members)
            assert g.retrans == sum(r.flow.retrans_packets for r in members)
            assert g.resets == sum(r.flow.resets_sent + r.flow.resets_received for r in members)
        assert groups[("remote", (nspair.addr_b, ports["a"]))].drops > 0
    finally:
        engine.close()
        for c, s in conns:
            c.close()
            s.close()
