"""Front ends: what a user reads snapshots through (the screen, --json, the exporter)."""

from __future__ import annotations

import signal


def stop_signals() -> tuple[signal.Signals, ...]:
    """What a front end without a screen (--json, --serve) stops on, detaching everything: TERM,
    INT, and HUP unless tcptop was started with it ignored. `nohup tcptop --json > log &` asks
    to outlive the terminal; a handler of its own would undo that at the first hang-up."""
    if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
        return signal.SIGTERM, signal.SIGINT
    return signal.SIGTERM, signal.SIGINT, signal.SIGHUP
