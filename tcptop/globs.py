"""Shell-style globs for the filter's ``comm`` primitive, matched in bounded time.

``*`` matches any run of characters, ``?`` one character, ``[abc]``/``[a-z]`` one character
of a set and ``[!abc]`` one outside it (a ``]`` right after ``[`` or ``[!`` belongs to the
set); a ``[`` that is never closed is an ordinary character. Matching is case-sensitive.

fnmatch would do, but its translation of a pattern full of unclosed ``[`` is quadratic
(20 kB took 13 s), and one regular expression with several ``*`` backtracks polynomially
in the name's length. Here the pattern is cut at each ``*`` into fixed-width segments
(no repetition inside): the first must match at the start, the last at the end, and each
one between is searched for left to right, taking its earliest match (which never loses
a match a later one would find). Compiling is linear in the pattern's length, and
matching a name of n characters against a pattern of m costs at most n*m steps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Glob"]


@dataclass(frozen=True, slots=True)
class _Segment:
    rx: re.Pattern[str]
    width: int  # characters it matches: each atom matches exactly one


class Glob:
    """A compiled glob; `match(name)` says whether the whole name matches."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.segments = tuple(_Segment(re.compile("".join(atoms), re.DOTALL), len(atoms))
                              for atoms in _split(pattern))

    def match(self, name: str) -> bool:
        segs = self.segments
        if len(segs) == 1:
            return len(name) == segs[0].width and segs[0].rx.match(name) is not None
        head, tail = segs[0], segs[-1]
        end = len(name) - tail.width
        if end < head.width:
            return False
        if head.width and head.rx.match(name) is None:
            return False
        if tail.width and tail.rx.match(name, end) is None:
            return False
        pos = head.width
        for seg in segs[1:-1]:
            if seg.width:
                m = seg.rx.search(name, pos, end)
                if m is None:
                    return False
                pos = m.end()
        return True


def _split(pattern: str) -> list[list[str]]:
    """The pattern as star-separated segments, each a list of one-character regex atoms."""
    segments: list[list[str]] = [[]]
    i, n = 0, len(pattern)
    closes = True  # False once a '[' was found unclosed: no later '[' can close either
    while i < n:
        c = pattern[i]
        if c == "*":
            segments.append([])
            i += 1
        elif c == "?":
            segments[-1].append(".")
            i += 1
        elif c == "[" and closes:
            atom, i2 = _char_class(pattern, i)
            if atom is None:
                closes = False
                segments[-1].append(re.escape(c))
                i += 1
            else:
                segments[-1].append(atom)
                i = i2
        else:
            segments[-1].append(re.escape(c))
            i += 1
    return segments


def _char_class(pattern: str, start: int) -> tuple[str | None, int]:
    """The regex of the set opening at `start` and the index after it; (None, start) if unclosed."""
    j = start + 1
    negate = j < len(pattern) and pattern[j] == "!"
    if negate:
        j += 1
    first = j
    if j < len(pattern) and pattern[j] == "]":
        j += 1  # a ']' first in the set is one of its members
    close = pattern.find("]", j)
    if close < 0:
        return None, start
    body = pattern[first:close]
    items = []
    k = 0
    while k < len(body):
        if k + 2 < len(body) and body[k + 1] == "-":
            lo, hi = body[k], body[k + 2]
            if lo <= hi:  # a reversed range (z-a) matches nothing, as in fnmatch
                items.append(f"{re.escape(lo)}-{re.escape(hi)}")
            k += 3
        else:
            items.append(re.escape(body[k]))
            k += 1
    if not items:
        return ("." if negate else "(?!)"), close + 1
    return f"[{'^' if negate else ''}{''.join(items)}]", close + 1
