"""The flow filter: a small tcpdump-like language compiled to a predicate over Flow.

    port 443 and not host 10.0.0.1
    (comm nginx or pid 812) and state established
    net 10.0.0.0/8 or 5432            # a bare number means a port

Primitives: ``port N``, ``lport N``, ``rport N``, ``pid N``, ``comm NAME`` (``*``/``?``
globs allowed), ``host ADDR``, ``net CIDR``, ``state NAME``, ``ip``, ``ip6``, a bare
number. Joined by ``and``/``&&``, ``or``/``||``, ``not``/``!`` and parentheses; ``not``
binds tighter than ``and``, which binds tighter than ``or``, as in tcpdump.

The screen compiles on every keystroke and the engine's ``--port/--pid`` path
reuses it, so errors are one line that names the column where they start.
The compiled predicate is plain closures: the store runs it over 100,000 flows.

Whatever is typed, compiling costs work linear in the expression's length, which is at
most MAX_LENGTH characters; parentheses nest at most MAX_DEPTH deep (so neither the
parser nor the predicate it builds can exhaust Python's stack); a ``comm`` glob of m
characters matches a name of n characters in at most n*m steps (globs.py).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from tcptop.globs import Glob
from tcptop.model import TCP_STATES, Flow

Predicate = Callable[[Flow], bool]

__all__ = ["FilterError", "compile_filter", "normalize_state", "STATE_NAMES", "Predicate", "MAX_LENGTH",
           "MAX_DEPTH"]

MAX_LENGTH = 4096  # characters: hundreds of primitives, far beyond anything typed
MAX_DEPTH = 50     # nested parentheses


class FilterError(ValueError):
    """A filter that does not parse. `pos` is the 0-based offset where the trouble starts."""

    def __init__(self, msg: str, pos: int = 0) -> None:
        self.msg = msg
        self.pos = pos
        super().__init__(f"{msg} (column {pos + 1})")

    @property
    def column(self) -> int:
        return self.pos + 1


# Kernel TCP state names, as the engine reports them.
STATE_NAMES: tuple[str, ...] = tuple(TCP_STATES.values())
# ss(8) spellings people type out of habit (ESTAB, CLOSED) and one more.
_STATE_ALIASES = {"ESTAB": "ESTABLISHED", "CLOSED": "CLOSE", "SYNRECEIVED": "SYN_RECV"}


def normalize_state(name: str) -> str:
    """Fold 'fin-wait-1', 'FIN_WAIT1', 'estab' to one comparable spelling."""
    key = re.sub(r"[-_ ]", "", name.upper())
    alias = _STATE_ALIASES.get(key)
    if alias is not None:
        key = alias.replace("_", "")
    return key


_KNOWN_STATES = {normalize_state(s): s for s in STATE_NAMES}

_PRIMITIVES_WITH_ARG = ("port", "lport", "rport", "pid", "comm", "host", "net", "state")
_EXPECT_TERM = "port, lport, rport, pid, comm, host, net, state, ip, ip6, a number, 'not' or '('"


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str   # "word", "(", ")", "and", "or", "not", "end"
    text: str
    pos: int


_OPERATORS = {"and": "and", "&&": "and", "or": "or", "||": "or", "not": "not", "!": "not"}


def _tokenize(expr: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(expr)
    while i < n:
        c = expr[i]
        if c.isspace():
            i += 1
        elif c in "()":
            toks.append(_Tok(c, c, i))
            i += 1
        elif expr.startswith(("&&", "||"), i):
            toks.append(_Tok(_OPERATORS[expr[i:i + 2]], expr[i:i + 2], i))
            i += 2
        elif c == "!":
            toks.append(_Tok("not", c, i))
            i += 1
        elif c in "\"'":
            end = expr.find(c, i + 1)
            if end < 0:
                raise FilterError(f"quote {c} is never closed", i)
            toks.append(_Tok("quoted", expr[i + 1:end], i))
            i = end + 1
        else:
            start = i
            while i < n and not expr[i].isspace() and expr[i] not in "()\"'" \
                    and not expr.startswith(("&&", "||"), i):
                i += 1
            word = expr[start:i]
            kind = _OPERATORS.get(word.lower(), "word")
            toks.append(_Tok(kind, word, start))
    toks.append(_Tok("end", "", n))
    return toks


def _parse_ip(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as an IP object, IPv4-mapped IPv6 folded to IPv4 so both spellings match."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


# Flow addresses repeat poll after poll; what is typed into a filter is parsed uncached.
_ip = lru_cache(maxsize=65536)(_parse_ip)


def _shown(text: str) -> str:
    """A token as an error message quotes it: repr, cut short, so the message stays one short line."""
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _is_number(text: str) -> bool:
    # str.isdigit() is true of '²' and other Unicode digits int() refuses: ASCII only.
    return text.isascii() and text.isdigit()


class _Parser:
    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.toks = _tokenize(expr)
        self.i = 0
        self.depth = 0  # parentheses open around the current token

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def parse(self) -> Predicate:
        pred = self.or_expr()
        t = self.tok
        if t.kind == ")":
            raise FilterError("')' has no matching '('", t.pos)
        if t.kind != "end":
            raise FilterError(f"expected 'and' or 'or' before {_shown(t.text)}", t.pos)
        return pred

    def or_expr(self) -> Predicate:
        parts = [self.and_expr()]
        while self.tok.kind == "or":
            self.take()
            parts.append(self.and_expr())
        if len(parts) == 1:
            return parts[0]
        ports = [p for p in parts if getattr(p, "port", None) is not None]
        if len(ports) > 1:  # `port a or port b or ...`: one set lookup per end, not a call per term
            wanted = frozenset(p.port for p in ports)
            rest = [p for p in parts if getattr(p, "port", None) is None]
            parts = [lambda f: f.lport in wanted or f.rport in wanted] + rest
        return _chain(parts, any_=True)

    def and_expr(self) -> Predicate:
        parts = [self.not_expr()]
        while self.tok.kind == "and":
            self.take()
            parts.append(self.not_expr())
        if len(parts) == 1:
            return parts[0]
        return _chain(parts, any_=False)

    def not_expr(self) -> Predicate:
        # A run of 'not's is counted, not recursed into: only its parity matters.
        negate = False
        while self.tok.kind == "not":
            self.take()
            negate = not negate
        inner = self.atom()
        if negate:
            return lambda f: not inner(f)
        return inner

    def atom(self) -> Predicate:
        t = self.take()
        if t.kind == "(":
            if self.depth >= MAX_DEPTH:
                raise FilterError(f"parentheses nested more than {MAX_DEPTH} deep", t.pos)
            self.depth += 1
            inner = self.or_expr()
            self.depth -= 1
            close = self.tok
            if close.kind != ")":
                if close.kind == "end":
                    raise FilterError("'(' is never closed", t.pos)
                raise FilterError(f"expected ')' or 'and'/'or' before {_shown(close.text)}", close.pos)
            self.take()
            return inner
        if t.kind == "end":
            raise FilterError(f"filter ends early: expected {_EXPECT_TERM}", t.pos)
        if t.kind != "word":
            raise FilterError(f"unexpected {_shown(t.text)}: expected {_EXPECT_TERM}", t.pos)
        word = t.text.lower()
        if _is_number(word):
            return _port_pred(self.port_number(t))
        if word in ("ip", "ip4", "ipv4"):
            return lambda f: f.family == "ipv4"
        if word in ("ip6", "ipv6"):
            return lambda f: f.family == "ipv6"
        if word not in _PRIMITIVES_WITH_ARG:
            raise FilterError(f"unknown word {_shown(t.text)}: expected {_EXPECT_TERM}", t.pos)
        arg = self.take()
        if arg.kind not in ("word", "quoted"):
            where = "the end" if arg.kind == "end" else _shown(arg.text)
            raise FilterError(f"'{word}' needs {_ARG_NEEDS[word]}, found {where}", arg.pos)
        return getattr(self, "prim_" + word)(arg)

    # -- primitives --------------------------------------------------------------

    @staticmethod
    def port_number(t: _Tok) -> int:
        if not _is_number(t.text) or len(t.text) > 5 or int(t.text) > 65535:
            raise FilterError(f"{_shown(t.text)} is not a port number (0-65535)", t.pos)
        return int(t.text)

    def prim_port(self, t: _Tok) -> Predicate:
        return _port_pred(self.port_number(t))

    def prim_lport(self, t: _Tok) -> Predicate:
        port = self.port_number(t)
        return lambda f: f.lport == port

    def prim_rport(self, t: _Tok) -> Predicate:
        port = self.port_number(t)
        return lambda f: f.rport == port

    def prim_pid(self, t: _Tok) -> Predicate:
        if not _is_number(t.text) or len(t.text) > 10 or int(t.text) > 2**32 - 1:
            raise FilterError(f"{_shown(t.text)} is not a process id", t.pos)
        pid = int(t.text)
        return lambda f: f.pid == pid

    def prim_comm(self, t: _Tok) -> Predicate:
        name = t.text
        if any(c in name for c in "*?["):
            return lambda f, match=Glob(name).match: match(f.comm)
        return lambda f: f.comm == name

    def prim_host(self, t: _Tok) -> Predicate:
        ip = _parse_ip(t.text)
        if ip is None:
            raise FilterError(f"{_shown(t.text)} is not an IP address", t.pos)
        return lambda f: _ip(f.laddr) == ip or _ip(f.raddr) == ip

    def prim_net(self, t: _Tok) -> Predicate:
        try:
            net = ipaddress.ip_network(t.text, strict=False)
        except ValueError:
            raise FilterError(f"{_shown(t.text)} is not a network (e.g. 10.0.0.0/8)", t.pos) from None

        def in_net(addr: str) -> bool:
            ip = _ip(addr)
            return ip is not None and ip.version == net.version and ip in net

        return lambda f: in_net(f.laddr) or in_net(f.raddr)

    def prim_state(self, t: _Tok) -> Predicate:
        key = normalize_state(t.text)
        if key not in _KNOWN_STATES:
            raise FilterError(
                f"{_shown(t.text)} is not a TCP state (e.g. established, listen, time-wait)", t.pos)
        if key == "CLOSE":
            # A flow the engine keeps after it went away is closed whatever state it last had.
            return lambda f: f.closed or _state_key(f.state) == "CLOSE"
        return lambda f: _state_key(f.state) == key


def _port_pred(port: int) -> Predicate:
    """`port N`, marked with its port so that an `or` of ports becomes one set lookup."""
    def pred(f) -> bool:
        return f.lport == port or f.rport == port
    pred.port = port  # type: ignore[attr-defined]
    return pred


def _chain(parts: list[Predicate], any_: bool) -> Predicate:
    """`a or b or ...` (any_) / `a and b and ...` as nested two-term closures, evaluated left
    to right and stopping early as Python's own operators do: a filter runs on every changed
    flow, and any()/all() over a generator cost ~1 us a flow more."""
    if len(parts) > 16:  # nested that deep, a long filter would nest as many frames per call: a loop
        ps = tuple(parts)

        def loop(f) -> bool:
            for p in ps:
                if bool(p(f)) is any_:
                    return any_
            return not any_
        return loop
    pred = parts[-1]
    for p in reversed(parts[:-1]):
        pred = (lambda f, a=p, b=pred: a(f) or b(f)) if any_ else (lambda f, a=p, b=pred: a(f) and b(f))
    return pred


@lru_cache(maxsize=64)
def _state_key(state: str) -> str:
    return normalize_state(state)


_ARG_NEEDS = {
    "port": "a port number", "lport": "a port number", "rport": "a port number",
    "pid": "a process id", "comm": "a command name", "host": "an IP address",
    "net": "a network like 10.0.0.0/8", "state": "a TCP state name",
}


def _match_all(_f: Flow) -> bool:
    return True


def compile_filter(expr: str | None) -> Predicate:
    """Compile `expr` to a predicate; an empty expression keeps every flow.

    Raises FilterError with a one-line message and the offending position.
    """
    if expr is None or not expr.strip():
        return _match_all
    if len(expr) > MAX_LENGTH:
        raise FilterError(f"filter longer than {MAX_LENGTH} characters", MAX_LENGTH)
    return _Parser(expr).parse()
