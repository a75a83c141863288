"""Exporter groups: which labelled group a connection is counted in.

Per-connection series would grow a time-series database without bound on a busy host, so
by default connections are summed into groups by what an SRE alerts on:

    comm       the owning process's name ("" when no owner is known)
    role       "server" (this end was accepted) or "client" (this end connected)
    port       the service's port: the local port of a server, the remote port of a client
    remote     the peer: its address for a client (the upstream it calls), its network for a
               server (its callers, who can be many): /24 for IPv4, /64 for IPv6
    netns      the network namespace's inode number
    container  the container id from the owner's cgroup ("" outside containers)

The connection's TCP state is not a group label: a counter labelled by state would move
to another series at every state change. It labels only the `tcptop_connections` gauge.

When the engine did not see a connection open (it is older than tcptop), Flow.role is ""
and the role is guessed from the ports: a port in Linux's default ephemeral range
(32768-60999, from which connect() picks local ports) is the client's when the other is
not; otherwise the lower-numbered port is the service's. Right for services below the
ephemeral range; a service listening inside it, talking to a client whose port is lower,
is counted as a client of that client.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from tcptop.model import Flow

GROUP_LABELS: tuple[str, ...] = ("comm", "role", "port", "remote", "netns", "container")
# Everything counted once the series budget (--serve-max-series) is spent goes here.
OVERFLOW_VALUE = "_overflow_"
OVERFLOW_KEY: tuple[str, ...] = (OVERFLOW_VALUE,) * len(GROUP_LABELS)

EPHEMERAL_PORTS = (32768, 60999)  # Linux's default net.ipv4.ip_local_port_range
REMOTE_MODES = ("auto", "addr", "net", "none")
NET_PREFIX = {4: 24, 6: 64}

GroupKey = tuple[str, str, str, str, str, str]


def service_side(f: Flow) -> tuple[str, int]:
    """(role, service port) of a connection: the engine's role, or the guess from its ports."""
    if f.role == "server":
        return "server", f.lport
    if f.role == "client":
        return "client", f.rport
    lo, hi = EPHEMERAL_PORTS
    local_eph, remote_eph = lo <= f.lport <= hi, lo <= f.rport <= hi
    if local_eph != remote_eph:
        return ("client", f.rport) if local_eph else ("server", f.lport)
    return ("server", f.lport) if f.lport <= f.rport else ("client", f.rport)


@lru_cache(maxsize=65536)
def remote_net(addr: str) -> str:
    """The network a peer address belongs to for grouping: /24 (IPv4), /64 (IPv6)."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    return str(ipaddress.ip_network(f"{ip}/{NET_PREFIX[ip.version]}", strict=False))


def group_key(f: Flow, remote_mode: str = "auto") -> GroupKey:
    """The group a connection is counted in (labels in GROUP_LABELS order, all strings)."""
    role, port = service_side(f)
    if remote_mode == "none":
        remote = ""
    elif remote_mode == "addr" or (remote_mode == "auto" and role == "client"):
        remote = f.raddr
    else:
        remote = remote_net(f.raddr)
    return (f.comm, role, str(port), remote, str(f.netns), f.container)


def endpoint(addr: str, port: int) -> str:
    """addr:port, with an IPv6 address in brackets."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
