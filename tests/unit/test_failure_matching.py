"""How the failure engine names the flow or listener of a packet it only has the addresses of,
and how reason names come from the kernel's enums (no kernel needed)."""

from __future__ import annotations

import socket

from factories import make_flow

from tcptop.engines.core.failures import ListenerRecord, _Index, _names


def record(cookie: int, addr: str, port: int, netns: int = 5) -> ListenerRecord:
    r = ListenerRecord(cookie=cookie, netns=netns, sport=port, family=socket.AF_INET)
    r.saddr[:4] = list(socket.inet_aton(addr))
    return r


def test_a_packet_is_matched_to_the_flow_it_was_sent_to_before_the_one_that_sent_it():
    # a loopback connection: both ends are flows of this host, 127.0.0.1:5000 <-> 127.0.0.1:6000
    client = make_flow(1, laddr="127.0.0.1", lport=5000, raddr="127.0.0.1", rport=6000, netns=5)
    server = make_flow(2, laddr="127.0.0.1", lport=6000, raddr="127.0.0.1", rport=5000, netns=5)
    index = _Index((client, server), {})
    # a packet from the client to the server belongs, on input, to the server's end
    assert index.flow_for(5, "127.0.0.1", 5000, "127.0.0.1", 6000) == 2
    assert index.flow_for(5, "127.0.0.1", 6000, "127.0.0.1", 5000) == 1
    # the other namespace's flows are not this packet's
    assert index.flow_for(6, "127.0.0.1", 5000, "127.0.0.1", 6000) is None
    # no device and no socket: the namespace is unknown, the addresses still decide
    assert index.flow_for(0, "127.0.0.1", 5000, "127.0.0.1", 6000) == 2


def test_an_outgoing_packet_is_matched_to_its_sender_and_a_live_flow_wins_over_a_closed_one():
    old = make_flow(1, laddr="10.0.0.1", lport=4000, raddr="10.0.0.2", rport=80, netns=5, closed=True)
    new = make_flow(2, laddr="10.0.0.1", lport=4000, raddr="10.0.0.2", rport=80, netns=5)
    index = _Index((new, old), {})
    assert index.flow_for(5, "10.0.0.1", 4000, "10.0.0.2", 80) == 2
    assert index.flow_for(5, "10.0.0.2", 80, "10.0.0.1", 4000) == 2


def test_a_packet_to_a_listening_port_is_matched_to_the_listener_bound_there_or_to_the_wildcard():
    index = _Index((), {11: record(11, "10.0.0.1", 8080), 12: record(12, "0.0.0.0", 9090)})
    assert index.listener_for(5, "10.0.0.1", 8080) == 11
    assert index.listener_for(5, "10.0.0.7", 8080) is None
    assert index.listener_for(5, "10.0.0.7", 9090) == 12
    assert index.listener_for(6, "10.0.0.7", 9090) is None
    assert index.is_listener(11) and not index.is_flow(11)


def test_reason_names_lose_the_enum_prefix_as_the_kernel_prints_them():
    names = _names({"SKB_DROP_REASON_NETFILTER_DROP": 12, "SKB_CONSUMED": 1,
                    "SKB_DROP_REASON_SUBSYS_MASK": -65536}, "SKB_DROP_REASON_")
    assert names[12] == "NETFILTER_DROP" and names[1] == "SKB_CONSUMED" and names[0xFFFF0000] == "SUBSYS_MASK"
