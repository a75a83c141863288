"""The filter language: each primitive selects exactly the flows it names; errors point at the column."""

from __future__ import annotations

import pytest
from factories import make_flow

from tcptop.filter import FilterError, compile_filter, normalize_state

FLOWS = [
    make_flow(1, laddr="10.0.0.1", lport=443, raddr="192.168.1.5", rport=51000, pid=812, comm="nginx"),
    make_flow(2, laddr="10.0.0.1", lport=41000, raddr="10.0.0.9", rport=5432, pid=900, comm="psql"),
    make_flow(3, laddr="127.0.0.1", lport=6379, raddr="127.0.0.1", rport=42000, pid=77, comm="redis-server",
              state="LISTEN"),
    make_flow(4, family="ipv6", laddr="::1", lport=8080, raddr="::1", rport=43000, pid=812, comm="nginx",
              state="TIME_WAIT"),
    make_flow(5, family="ipv6", laddr="::ffff:10.0.0.1", lport=22, raddr="::ffff:172.16.0.4", rport=50022,
              pid=1, comm="sshd", state="FIN_WAIT1"),
    make_flow(6, laddr="10.0.0.1", lport=44000, raddr="93.184.216.34", rport=443, pid=900, comm="Web Content",
              closed=True),
]


def select(expr: str) -> list[int]:
    pred = compile_filter(expr)
    return [f.id for f in FLOWS if pred(f)]


@pytest.mark.parametrize("expr, ids", [
    ("", [1, 2, 3, 4, 5, 6]),
    ("   ", [1, 2, 3, 4, 5, 6]),
    ("port 443", [1, 6]),
    ("443", [1, 6]),
    ("lport 443", [1]),
    ("rport 443", [6]),
    ("pid 812", [1, 4]),
    ("comm nginx", [1, 4]),
    ("comm 'Web Content'", [6]),
    ('comm "Web Content"', [6]),
    ("comm redis*", [3]),
    ("comm ?sql", [2]),
    ("host 10.0.0.9", [2]),
    ("host 10.0.0.1", [1, 2, 5, 6]),          # ::ffff:10.0.0.1 is the same host
    ("host ::1", [4]),
    ("net 192.168.0.0/16", [1]),
    ("net 172.16.0.0/12", [5]),                # IPv4-mapped IPv6 counts as IPv4
    ("net 10.0.0.0/8", [1, 2, 5, 6]),
    ("net ::/0", [4]),
    ("state listen", [3]),
    ("state time-wait", [4]),
    ("state TIME_WAIT", [4]),
    ("state fin-wait-1", [5]),
    ("state estab", [1, 2, 6]),
    ("state closed", [6]),                     # the engine kept it after it went away
    ("ip6", [4, 5]),
    ("ip", [1, 2, 3, 6]),
])
def test_each_primitive_selects_exactly(expr, ids):
    assert select(expr) == ids


@pytest.mark.parametrize("expr, ids", [
    ("port 443 and pid 812", [1]),
    ("port 443 && pid 812", [1]),
    ("port 443 or port 22", [1, 5, 6]),
    ("443 || 22", [1, 5, 6]),
    ("not port 443", [2, 3, 4, 5]),
    ("! port 443", [2, 3, 4, 5]),
    ("!port 443", [2, 3, 4, 5]),
    ("not not port 443", [1, 6]),
    # and binds tighter than or, like tcpdump
    ("pid 900 or pid 812 and port 443", [1, 2, 6]),
    ("(pid 900 or pid 812) and port 443", [1, 6]),
    ("(pid 900 or pid 812)and(port 443)", [1, 6]),
    ("not (comm nginx or comm psql) and ip", [3, 6]),
    ("PORT 443 AND PID 812", [1]),
])
def test_boolean_operators_and_precedence(expr, ids):
    assert select(expr) == ids


@pytest.mark.parametrize("expr, column, words", [
    ("port", 5, "needs a port number"),
    ("port abc", 6, "'abc' is not a port number"),
    ("port 70000", 6, "not a port number"),
    ("pid x1", 5, "not a process id"),
    ("prot 80", 1, "unknown word 'prot'"),
    ("host foo", 6, "not an IP address"),
    ("net 10.0.0.0/33", 5, "not a network"),
    ("state dancing", 7, "not a TCP state"),
    ("(port 80", 1, "'(' is never closed"),
    ("port 80)", 8, "')' has no matching '('"),
    ("port 80 pid 3", 9, "expected 'and' or 'or' before 'pid'"),
    ("port 80 and", 12, "filter ends early"),
    ("not", 4, "filter ends early"),
    ("()", 2, "unexpected ')'"),
    ("comm 'abc", 6, "quote ' is never closed"),
    ("port (80)", 6, "needs a port number, found '('"),
    # Unicode digits are digits to str.isdigit() but not to int(): a traceback before
    ("²", 1, "unknown word '²'"),
    ("port ²", 6, "'²' is not a port number"),
    ("pid ²", 5, "'²' is not a process id"),
    ("port ١٢", 6, "'١٢' is not a port number"),
    ("port " + "9" * 100, 6, "'" + "9" * 37 + "...' is not a port number"),
    ("(" * 300, 51, "parentheses nested more than 50 deep"),
    ("x" * 4097, 4097, "filter longer than 4096 characters"),
])
def test_errors_name_the_column(expr, column, words):
    with pytest.raises(FilterError) as info:
        compile_filter(expr)
    err = info.value
    assert err.column == column
    assert words in err.msg
    assert f"(column {column})" in str(err)
    assert "\n" not in str(err)


def test_state_spellings_fold_together():
    assert normalize_state("fin-wait-1") == normalize_state("FIN_WAIT1")
    assert normalize_state("estab") == normalize_state("ESTABLISHED")
    assert normalize_state("closed") == normalize_state("CLOSE")


def test_ors_of_ports_and_long_chains_keep_their_meaning():
    """`port a or port b ...` is one set lookup and chains of more than 16 terms are loops:
    the same answers as term by term."""
    flows = [make_flow(i, lport=1000 + i % 7, rport=2000 + i % 5, comm=f"c{i % 20}") for i in range(60)]
    cases = {
        "port 1001 or port 2003 or comm c4": lambda f: f.lport == 1001 or f.rport == 2003 or f.comm == "c4",
        "port 1001 or (port 2003 and comm c3) or port 9": lambda f: f.lport == 1001 or (f.rport == 2003 and f.comm == "c3"),
        " or ".join(f"comm c{i}" for i in range(0, 40, 2)): lambda f: int(f.comm[1:]) % 2 == 0,
        " and ".join(f"not comm c{i}" for i in range(0, 40, 2)): lambda f: int(f.comm[1:]) % 2 == 1,
    }
    for expr, want in cases.items():
        pred = compile_filter(expr)
        assert [bool(pred(f)) for f in flows] == [want(f) for f in flows], expr
