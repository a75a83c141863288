"""What each of the sixteen metrics means, in words a person reads at a glance.

The detail pane labels values with `label`; the help screen lists the seed's original
name beside it so readers of the older scripts find their metric again.
"""

from __future__ import annotations

from dataclasses import dataclass

from tcptop.model import METRICS, SEED_NAMES


@dataclass(frozen=True, slots=True)
class Term:
    field: str      # Flow field
    label: str      # short label for the detail pane
    seed: str       # the seed's name
    meaning: str    # one sentence for the glossary
    unit: str       # "bytes", "segments", "count", "us", "s"


GLOSSARY: tuple[Term, ...] = tuple(Term(f, label, SEED_NAMES[f], meaning, unit) for f, label, meaning, unit in (
    ("flight_size", "In flight", "segments sent and not yet acknowledged, as congestion control counts them",
     "segments"),
    ("rwnd", "Peer window", "receive window the peer advertises to us (0: the receiver stopped reading)", "bytes"),
    ("cwnd", "Congestion window", "segments the sender may have in flight before it must wait", "segments"),
    ("mss", "MSS", "largest segment payload this connection sends", "bytes"),
    ("retrans_packets", "Retransmitted", "segments sent again because they were lost or late", "count"),
    ("bytes_sent", "Sent", "data bytes sent, retransmissions included", "bytes"),
    ("bytes_received", "Received", "data bytes received", "bytes"),
    ("fast_retrans", "Fast recoveries", "times loss was repaired by fast retransmit (3 dup-ACKs or SACK)",
     "count"),
    ("timeouts", "RTO timeouts", "times the retransmission timer fired: nothing came back in time", "count"),
    ("app_wqueue", "Send queue", "bytes the application wrote that the peer has not acknowledged", "bytes"),
    ("app_wqueue_max", "Send queue peak", "largest send queue seen since tcptop first saw the flow", "bytes"),
    ("rtt_samples", "RTT samples", "round-trip times the kernel measured", "count"),
    ("rtt_sum_us", "RTT sum", "sum of those round-trip times (mean = sum / samples)", "us"),
    ("read_bytes", "App read", "bytes the application read from the socket", "bytes"),
    ("write_bytes", "App wrote", "bytes the application wrote to the socket", "bytes"),
    ("duration_s", "Age", "time since the connection was established", "s"),
))

TERM: dict[str, Term] = {t.field: t for t in GLOSSARY}

assert tuple(TERM) == METRICS, "the glossary must follow the contract's sixteen metrics"
