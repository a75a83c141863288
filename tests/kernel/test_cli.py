"""The tcptop command: the --json contract, filters, and one-line errors that leave nothing attached."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from bpfprogs import held_prog_ids, loaded_prog_ids
from kit import loopback_pair, recv_exactly, wait_idle
from tcptop.model import METRICS, snapshot_from_json

TCPTOP = [sys.executable, "-m", "tcptop"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(*args, **kw):
    return subprocess.run(TCPTOP + list(args), capture_output=True, text=True, cwd=ROOT, timeout=60, **kw)


def our_prog_count():
    """BPF programs named like ours that are loaded right now (others on the machine are ignored)."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True).stdout
    ours = {"tcptop_probe", "tcptop_cong", "tcptop_state", "tcptop_iter", "tcptop_destroy", "tcptop_sockops"}
    return sum(1 for p in json.loads(out or "[]") if p.get("name") in ours)


def settled_prog_count(expected):
    """The kernel frees programs of an exited process after an RCU grace period: wait for it."""
    deadline = time.monotonic() + 10
    while (n := our_prog_count()) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return n


def test_json_lines_follow_the_contract():
    c, s = loopback_pair()
    c.sendall(b"j" * 4321)
    recv_exactly(s, 4321)
    wait_idle(c)
    port = s.getsockname()[1]
    # earlier connections may have left TIME_WAIT ends on the same port number
    r = run("--json", "--count", "2", "--interval", "0.2", "--port", str(port), "--filter", "state ESTABLISHED")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        raw = json.loads(line)
        snap = snapshot_from_json(line)
        assert {"ts", "interval_s", "flows", "run"} <= raw.keys()
        assert {"flows_evicted", "events_lost", "hooks", "degraded"} <= raw["run"].keys()
        assert len(snap.flows) == 2  # both ends of our connection, nothing else
        for f, fr in zip(snap.flows, raw["flows"]):
            assert port in (f.lport, f.rport)
            for name in METRICS + ("laddr", "lport", "raddr", "rport", "family", "state", "pid", "comm", "netns"):
                assert name in fr
            for name in METRICS[:-1]:
                assert type(fr[name]) is int
            assert isinstance(fr["duration_s"], float)
            assert fr["since_start"] and fr["role"] == ""  # opened before tcptop: who connected is unknown
            assert fr["tw_expires_ts"] == 0.0
            assert sum(n for _, n in fr["rtt_hist"]) == fr["rtt_samples"]
        # what each part of the poll took, in ms
        assert {"drain_ms", "lookup_ms", "walk_ms", "decode_ms"} <= raw["run"]["timing"].keys()
    sent = {f.lport: f.bytes_sent for f in snap.flows}
    assert sent[c.getsockname()[1]] == 4321
    # the time since the previous poll: an interval, or more when the first poll ran over it
    # (a host with tens of thousands of sockets); never a burst
    ts = [json.loads(line)["ts"] for line in lines]
    assert json.loads(lines[1])["interval_s"] == pytest.approx(ts[1] - ts[0], abs=0.05)
    assert json.loads(lines[1])["interval_s"] >= 0.15
    # an idle flow's age still moves with the clock between snapshots
    ages = [{f["lport"]: f["duration_s"] for f in json.loads(line)["flows"]} for line in lines]
    ts = [json.loads(line)["ts"] for line in lines]
    for lport, age in ages[0].items():
        assert ages[1][lport] - age == pytest.approx(ts[1] - ts[0], abs=0.002)
    c.close()
    s.close()


def test_pid_filter_keeps_only_that_process():
    c, s = loopback_pair()
    r = run("--json", "--count", "1", "--pid", str(os.getpid()))
    assert r.returncode == 0, r.stderr
    flows = json.loads(r.stdout)["flows"]
    assert flows and all(f["pid"] == os.getpid() for f in flows)
    assert {f["lport"] for f in flows} >= {c.getsockname()[1], s.getsockname()[1]}
    c.close()
    s.close()


@pytest.mark.parametrize("args,message", [
    (["--port", "70000"], "--port must be between 1 and 65535, got 70000"),
    (["--pid", "abc"], "--pid must be an integer, got 'abc'"),
    (["--interval", "0"], "must be a positive number of seconds, got '0'"),
    (["--interval", "nan"], "must be a positive number of seconds, got 'nan'"),
    (["--count", "-1"], "--count must be between 1"),
    (["--json", "--filter", "port 80 and ("], "--filter:"),
    (["--sort", "bogus"], "--sort: unknown field 'bogus'"),
    (["--nonsense"], "unrecognized arguments: --nonsense"),
    # a value that starts with '-' was taken for an option: "expected one argument"
    (["--interval", "-inf"], "must be a positive number of seconds, got '-inf'"),
    (["-i", "-1e5"], "must be a positive number of seconds, got '-1e5'"),
    (["--interval", "1e10"], "must be between 0.05 and 3600 seconds, got '1e10'"),  # OverflowError in the worker
    (["--interval", "0.01"], "must be between 0.05 and 3600 seconds"),
    (["--follow"], "--follow goes with --replay FILE"),
    (["--json", "--filter", "²"], "--filter: unknown word '²'"),                 # ValueError traceback
    (["--json", "--filter", "port ²"], "--filter: '²' is not a port number"),
    (["--json", "--filter", "(" * 250 + "port 1" + ")" * 250], "nested more than 50 deep"),  # RecursionError
    (["--json", "--filter", "not " * 500 + "(((" * 100], "nested more than 50 deep"),
    (["--json", "--filter", "comm " + "[" * 20000], "--filter: filter longer than 4096 characters"),  # 12.9 s
], ids=lambda a: " ".join(a)[:40] if isinstance(a, list) else None)
def test_bad_arguments_give_one_line_and_exit_2(args, message):
    r = run(*args)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tcptop: error:")
    assert message in lines[0]


def test_not_root_is_refused_clearly_and_nothing_stays_attached():
    before = our_prog_count()
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                        "--bounding-set=-all"] + TCPTOP + ["--json", "--count", "1"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0
    assert "needs root" in r.stderr
    assert settled_prog_count(before) == before


def test_interrupted_run_detaches_everything():
    """Programs are counted by id from the process's own descriptors, so other tcptop runs on the
    machine (or programs a kernel build refuses) do not change the answer."""
    p = subprocess.Popen(TCPTOP + ["--json", "--interval", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=ROOT)
    p.stdout.readline()
    held = held_prog_ids(p.pid)
    assert len(held) >= 6  # the flow engine's iterator and hooks at least, whatever the kernel refused
    assert held <= loaded_prog_ids()
    p.send_signal(2)
    assert p.wait(10) == 0
    assert p.stderr.read() == ""
    deadline = time.monotonic() + 10  # freed after an RCU grace period
    while held & loaded_prog_ids() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not held & loaded_prog_ids()


def test_ipv6_addresses_are_printed_canonically():
    lsn = socket.socket(socket.AF_INET6)
    lsn.bind(("::1", 0))
    lsn.listen()
    c = socket.create_connection(("::1", lsn.getsockname()[1]))
    r = run("--json", "--count", "1", "--port", str(lsn.getsockname()[1]), "--filter", "state ESTABLISHED")
    flows = json.loads(r.stdout)["flows"]
    assert {(f["family"], f["laddr"], f["raddr"]) for f in flows} == {("ipv6", "::1", "::1")}
    c.close()
    lsn.close()


def test_json_changes_carry_only_what_changed():
    """--changes: a full first line, then lines with the flows that changed and the ids gone;
    applying them in order gives the connections as they are."""
    c, s = loopback_pair()
    port = s.getsockname()[1]
    p = subprocess.Popen(TCPTOP + ["--json", "--changes", "--interval", "0.3", "--latency", "off", "--port", str(port),
                                   "--filter", "not state TIME-WAIT"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        first = json.loads(p.stdout.readline())
        assert "delta" not in first and len(first["flows"]) == 2
        table = {f["id"]: f for f in first["flows"]}
        c.sendall(b"c" * 1000)
        recv_exactly(s, 1000)
        wait_idle(c)
        changed_ids = set()
        for _ in range(5):
            line = json.loads(p.stdout.readline())
            assert line["delta"] is True and isinstance(line["gone"], list)
            for f in line["flows"]:
                table[f["id"]] = f
                changed_ids.add(f["id"])
            for i in line["gone"]:
                table.pop(i, None)
        assert len(changed_ids) == 2  # both ends moved bytes; nothing else was repeated
        by_port = {f["lport"]: f for f in table.values()}
        assert by_port[c.getsockname()[1]]["write_bytes"] == 1000
        assert by_port[port]["read_bytes"] == 1000
        c.close()
        s.close()
        gone = set()
        for _ in range(8):
            line = json.loads(p.stdout.readline())
            gone.update(line["gone"])
        assert gone == set(table)  # closed, shown closed for a while, then gone
    finally:
        p.send_signal(2)
        p.wait(10)


def test_replay_refuses_a_changes_line_with_one_clear_line(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"ts": 1, "interval_s": 1, "flows": [], "delta": true, "gone": []}\n')
    from tcptop.model import SnapshotFormatError, snapshot_from_json
    with pytest.raises(SnapshotFormatError, match="replay needs full snapshots"):
        snapshot_from_json(f.read_text())
