"""Sparklines as plain text: one block character per sample, scaled to the series' own range."""

from __future__ import annotations

from typing import Sequence

BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float | None], width: int) -> str:
    """The last `width` samples; unknown samples are blanks, a flat series sits on the floor."""
    tail = list(values)[-width:]
    known = [v for v in tail if v is not None]
    if not known:
        return " " * len(tail)
    lo, hi = min(known), max(known)
    span = hi - lo
    out = []
    for v in tail:
        if v is None:
            out.append(" ")
        elif span <= 0:
            out.append(BLOCKS[0] if hi == 0 else BLOCKS[3])
        else:
            out.append(BLOCKS[min(len(BLOCKS) - 1, int((v - lo) / span * (len(BLOCKS) - 1) + 0.5))])
    return "".join(out)
