"""What counts as trouble on screen, and how it is drawn: one rule each, for every pane.

The flow table and the detail pane both colour retransmissions, a zero window and a
growing send queue; they ask here, so the two can never disagree. Styles are Rich style
strings because the line-API table cannot reach the stylesheet inside its cells.
"""

from __future__ import annotations

from tcptop.frontends.screen.row import Row
from tcptop.model import Flow

WARN = "bold yellow"
BAD = "bold red"
ZERO_WINDOW = "bold white on red"


def zero_window(flow: Flow) -> bool:
    """The peer advertises no room on a live connection: its receiver has stopped reading."""
    return flow.rwnd == 0 and not flow.closed and flow.state.upper() == "ESTABLISHED"


def sendq_growing(row: Row) -> bool:
    """The application writes faster than the network drains."""
    return row.flow.app_wqueue > 0 and row.wqueue_delta > 0


def retrans_style(row: Row) -> str:
    """Red while retransmitting, yellow once it has retransmitted at all."""
    if row.retrans_ps:
        return BAD
    return WARN if row.flow.retrans_packets else ""


def fast_style(row: Row) -> str:
    return WARN if row.fast_ps else ""


def rto_style(row: Row) -> str:
    return BAD if row.rto_ps else ""


def rwnd_style(row: Row) -> str:
    return ZERO_WINDOW if zero_window(row.flow) else ""


def sendq_style(row: Row) -> str:
    return WARN if sendq_growing(row) else ""


def drops_style(row: Row) -> str:
    """Red while the kernel is dropping this connection's packets, yellow once it has."""
    if row.rate("drops_total"):
        return BAD
    return WARN if row.flow.drops else ""


def resets_style(row: Row) -> str:
    return WARN if row.flow.resets_sent or row.flow.resets_received else ""
