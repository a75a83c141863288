"""Humanised numbers for a narrow terminal cell: binary byte units, ms for RTT, compact ages."""

from __future__ import annotations

import re

from rich.text import Text

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def fmt_bytes(n: float | None) -> str:
    """Bytes in binary units with three significant digits: '512 B', '12.3 KiB', '1.21 GiB'."""
    if n is None:
        return "–"
    n = float(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    unit = 0
    while n >= 1024 and unit < len(_BYTE_UNITS) - 1:
        n /= 1024
        unit += 1
    if unit == 0:
        return f"{sign}{n:.0f} B"
    if n >= 100:
        return f"{sign}{n:.0f} {_BYTE_UNITS[unit]}"
    if n >= 10:
        return f"{sign}{n:.1f} {_BYTE_UNITS[unit]}"
    return f"{sign}{n:.2f} {_BYTE_UNITS[unit]}"


def fmt_rate(bps: float | None) -> str:
    """A byte rate; '–' while it is unknown (a flow's first sighting)."""
    if bps is None:
        return "–"
    if bps == 0:
        return "0"
    return fmt_bytes(bps) + "/s"


def fmt_count_rate(per_s: float | None) -> str:
    """Events per second, e.g. retransmissions: '0', '0.5/s', '12/s'."""
    if per_s is None:
        return "–"
    if per_s == 0:
        return "0"
    if per_s < 10:
        return f"{per_s:.1f}/s"
    return f"{per_s:.0f}/s"


def fmt_us(us: float | None) -> str:
    """A duration given in microseconds: '85 µs', '1.23 ms', '250 ms', '1.50 s'."""
    if us is None or us <= 0:
        return "–"
    if us < 1000:
        return f"{us:.0f} µs"
    ms = us / 1000
    if ms < 10:
        return f"{ms:.2f} ms"
    if ms < 1000:
        return f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"
    return f"{ms / 1000:.2f} s"


def fmt_pct(pct: float | None) -> str:
    """A share in per cent with the digits it needs (0.42 %, 4.2 %, 42 %): a budget's windows
    time well under 1 % of the time on a busy host, and "0 %" read as nothing timed."""
    if pct is None or pct != pct:
        return "-"
    a = abs(pct)
    if a == 0:
        return "0 %"
    if a >= 10:
        return f"{pct:.0f} %"
    if a >= 1:
        return f"{pct:.1f} %"
    return f"{pct:.2g} %" if a >= 0.01 else "<0.01 %"


def fmt_age(seconds: float | None) -> str:
    """Connection age like ps(1) does it: '42s', '7m05s', '3h12m', '5d04h'."""
    if seconds is None or seconds < 0:
        return "–"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def fmt_int(n: int | None) -> str:
    """An integer with thin grouping for big counters: 1234567 -> '1,234,567'."""
    if n is None:
        return "–"
    return f"{n:,}"


def fmt_endpoint(addr: str, port: int, width: int) -> str:
    """addr:port ([v6]:port), shortened in the middle of the address when it does not fit."""
    if addr.startswith("::ffff:") and "." in addr:
        addr = addr[7:]
    text = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
    if len(text) <= width:
        return text
    tail = f":{port}"
    room = width - len(tail) - 1
    if room <= 2:
        return text[: width - 1] + "…"
    head = room // 2
    return text[:head] + "…" + text[len(text) - len(tail) - (room - head):]


# C0 and C1 control characters and DEL. A process can name itself "\x1b]2;...": written to
# the terminal as is, a name (or a replay file's strings) would retitle the window, change
# colours or worse. They are shown as '?', as ps(1) does.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def printable(s: str) -> str:
    """`s` with every control character shown as '?' (one cell each, so widths hold)."""
    return s if s.isprintable() else _CONTROL.sub("?", s)


def printable_text(t: Text) -> Text:
    """A Rich Text whose characters are safe to write to a terminal (its own newlines kept);
    replaced one for one, so its styles stay where they were."""
    plain = t.plain
    if not plain.isprintable() and _CONTROL_BUT_NEWLINE.search(plain):
        t.plain = _CONTROL_BUT_NEWLINE.sub("?", plain)
    return t

