"""Fuzzing the filter language: any string compiles to a predicate or fails with one FilterError line.

Bounds checked on every input (counted, not timed): compiling runs at most
LINES_PER_CHAR Python lines per character of the expression (plus a constant) and
allocates at most BYTES_PER_CHAR bytes per character; a compiled predicate answers
True or False for any flow. Expressions are at most MAX_LENGTH characters, so the
worst case is a few hundred thousand lines (milliseconds) whatever is typed.
The runs are derandomized: the same inputs on every run, so CI never sees a new one;
TCPTOP_FUZZ_SCALE=N multiplies every budget for a longer local run.
"""

from __future__ import annotations

import fnmatch

import pytest
from budget import FUZZ_SCALE, lines_run, peak_bytes
from factories import make_flow
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcptop.filter import MAX_DEPTH, MAX_LENGTH, FilterError, compile_filter
from tcptop.globs import Glob

try:
    import re._parser as sre_parse  # Python 3.11+
except ImportError:  # pragma: no cover
    import sre_parse  # type: ignore[no-redef]

LINES_PER_CHAR = 200   # measured worst: ~82 ('comm [[[[...')
LINES_FIXED = 1000
BYTES_PER_CHAR = 1024  # measured worst: ~135
BYTES_FIXED = 64 << 10

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=600 * FUZZ_SCALE,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

FLOWS = [
    make_flow(1, laddr="10.0.0.1", lport=443, raddr="192.168.1.5", rport=51000, pid=812, comm="nginx"),
    make_flow(2, family="ipv6", laddr="::ffff:10.0.0.1", lport=22, raddr="::1", rport=50022, pid=1,
              comm="", state="FIN_WAIT1", closed=True),
    make_flow(3, laddr="not an address", lport=0, raddr="", rport=65535, pid=2**32 - 1,
              comm="[*?]\n\x00²" * 50, state="NEW_SYN_RECV"),
]

WORDS = ["port", "lport", "rport", "pid", "comm", "host", "net", "state", "ip", "ip6", "ipv4", "ipv6",
         "not", "and", "or", "!", "&&", "||", "(", ")", "'", '"', "AND", "Not", "listen", "estab",
         "time-wait", "10.0.0.1", "::1", "10.0.0.0/8", "fe80::/10", "²", "٣", "①", "0", "65535", "65536",
         "4294967295", "4294967296", "nginx", "*", "?", "[", "]", "[!", "-"]
tokens = st.one_of(
    st.sampled_from(WORDS),
    st.integers(min_value=0, max_value=10**12).map(str),
    st.text(alphabet="ab*?[]!-^\\", max_size=12),
    st.text(max_size=8),
)
soups = st.lists(st.tuples(tokens, st.sampled_from(["", " ", "  ", "\t", "\n"])), max_size=40).map(
    lambda parts: "".join(t + sep for t, sep in parts))


def check_outcome(expr: str) -> None:
    """The property every input must satisfy."""
    lines, pred, error = lines_run(lambda: compile_filter(expr))
    assert lines <= LINES_FIXED + LINES_PER_CHAR * (len(expr) + 1), (lines, expr[:80])
    if error is not None:
        assert isinstance(error, FilterError), f"{type(error).__name__}: {error} for {expr[:80]!r}"
        text = str(error)
        assert "\n" not in text and len(text) < 400
        assert 0 <= error.pos <= len(expr) and error.column == error.pos + 1
        return
    for f in FLOWS:
        assert pred(f) in (True, False)


@FUZZ
@given(st.text(max_size=200))
def test_any_text_compiles_or_fails_in_one_line(expr):
    check_outcome(expr)


@FUZZ
@given(soups)
def test_any_soup_of_filter_words_compiles_or_fails_in_one_line(expr):
    check_outcome(expr)


@settings(FUZZ, max_examples=300 * FUZZ_SCALE)
@given(soups)
def test_negation_is_exact(expr):
    try:
        pred = compile_filter(expr)
    except FilterError:
        return
    if not expr.strip():
        return
    negated = compile_filter(f"not ({expr})") if expr.count("(") < MAX_DEPTH else None
    if negated is not None:
        assert [negated(f) for f in FLOWS] == [not pred(f) for f in FLOWS]


@pytest.mark.parametrize("expr", [
    "(" * 250 + "port 1" + ")" * 250,        # RecursionError before
    "(" * 300,                               # typed into the screen's / box
    "not " * 1000 + "port 1",
    "! " * 2000 + "port 1",
    "(not " * 60 + "port 1" + ")" * 60,
    "comm " + "[" * 4000,                    # 14 s in fnmatch.translate before (20 kB)
    "comm " + "*a" * 2000,
    "comm " + "[!" * 2000,
    "port " + "1" * 4000,                    # int() refuses more than 4300 digits
    " or ".join(f"port {i}" for i in range(1000)),
    "x" * (MAX_LENGTH + 1),
    "host " + "1" * 4000,
    "'" * 4096,
], ids=lambda e: f"{e[:12]}..({len(e)} chars)")
def test_hostile_expressions_stay_within_budget(expr):
    check_outcome(expr)
    peak = peak_bytes(lambda: compile_filter(expr))
    assert peak <= BYTES_FIXED + BYTES_PER_CHAR * (len(expr) + 1)


@pytest.mark.parametrize("depth", [0, 1, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 10 * MAX_DEPTH])
def test_nesting_is_bounded_with_a_clear_error(depth):
    expr = "(" * depth + "port 443" + ")" * depth
    if depth <= MAX_DEPTH:
        assert [f.id for f in FLOWS if compile_filter(expr)(f)] == [1]
    else:
        with pytest.raises(FilterError, match=rf"parentheses nested more than {MAX_DEPTH} deep \(column {MAX_DEPTH + 1}\)"):
            compile_filter(expr)


@pytest.mark.parametrize("n", [0, 1, 2, 999, 1000])
def test_long_runs_of_not_keep_their_parity(n):
    pred = compile_filter("not " * n + "port 443")
    assert pred(FLOWS[0]) is (n % 2 == 0)


# -- the comm glob: fnmatch's meaning, bounded cost ---------------------------------

@settings(FUZZ, max_examples=1500 * FUZZ_SCALE)
@given(st.text(alphabet="ab*?[]!-^\\z", max_size=12), st.text(alphabet="ab-!]z[\n^", max_size=10))
def test_glob_means_what_fnmatch_means(pattern, name):
    assert Glob(pattern).match(name) == fnmatch.fnmatchcase(name, pattern)


def _repeats(pattern: str) -> bool:
    ops = {sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, getattr(sre_parse, "POSSESSIVE_REPEAT", None)}

    def walk(items) -> bool:
        for op, av in items:
            if op in ops:
                return True
            if op is sre_parse.SUBPATTERN and walk(av[-1]):
                return True
        return False
    return walk(sre_parse.parse(pattern))


@settings(FUZZ, max_examples=300 * FUZZ_SCALE)
@given(st.text(alphabet="ab*?[]!-^\\z.+{}()|", max_size=40))
def test_glob_segments_never_repeat_so_matching_cannot_backtrack(pattern):
    """Each segment is a fixed run of one-character atoms: a search costs at most
    len(name) * width steps, and a match makes one search per segment."""
    g = Glob(pattern)
    for seg in g.segments:
        assert not _repeats(seg.rx.pattern), seg.rx.pattern


def test_a_glob_with_many_stars_on_a_huge_name_answers():
    """A single regular expression `.*a.*a...b` takes exponential time on this; segments do not."""
    name = "a" * 200_000
    assert not Glob("*a" * 30 + "*b").match(name)
    assert Glob("*a" * 30 + "*").match(name)
    assert compile_filter("comm '" + "*a" * 30 + "*b'")(make_flow(9, comm=name)) is False
