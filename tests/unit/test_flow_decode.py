"""The C decoder builds the very Flow the Python one builds, from any record.

The Python functions are the reference (the kernel tests check them against TCP_INFO and
the tests' own counts); the C ones must agree with them field for field, floats included.
"""

from __future__ import annotations

import dataclasses
import gc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcptop.engines.core import flow_decode as fd
from tcptop.engines.core.flow_layout import RECORD
from tcptop.model import Flow

def _member_codes() -> list[str]:
    """The struct code of each item a record unpacks to ("16s" is one item, "28I" 28)."""
    out, num = [], ""
    for ch in RECORD.format.lstrip("<=@!>"):
        if ch.isdigit():
            num += ch
            continue
        out += [ch] if ch == "s" else [ch] * int(num or 1)
        num = ""
    return out


_CODES = _member_codes()
_RANGE = {"Q": 2**64 - 1, "I": 2**32 - 1, "H": 0xFFFF, "B": 0xFF}


def _record(draw) -> tuple:
    """A record with every member drawn in its C type's range, the family plausible."""
    vals = [draw(st.binary(min_size=16, max_size=16)) if c == "s" else draw(st.integers(0, _RANGE[c]))
            for c in _CODES]
    vals[fd.I_FAMILY] = draw(st.sampled_from([2, 10, 1]))
    vals[fd.I_NOW] = draw(st.integers(0, 2**62))
    if draw(st.booleans()):
        vals[fd.I_HIST:fd.I_HIST + 28] = [0] * 28
    if draw(st.booleans()):
        vals[fd.R["min_rtt_us"]] = 0xFFFFFFFF
    return tuple(vals)


def test_the_c_decoder_is_built():
    """`make setup` builds it; without it the engine works, ~15x slower a record."""
    assert fd.DECODER == "C"


@st.composite
def cases(draw):
    return (_record(draw), draw(st.integers(0, 2**22)), draw(st.sampled_from(["", "redis-server", "é"])),
            draw(st.sampled_from(["", "/system.slice/x"])), draw(st.sampled_from(["", "abc123"])),
            draw(st.integers(0, 2**62)), draw(st.floats(0, 2e9)), draw(st.booleans()),
            draw(st.sampled_from(["client", "server", ""])), draw(st.booleans()), draw(st.integers(0, 255)),
            draw(st.sampled_from([0.0, 1764612345.123])))


@settings(max_examples=400, deadline=None)
@given(cases())
def test_c_flow_of_equals_python(args):
    c, py = fd.flow_of(*args), fd.py_flow_of(*args)
    assert type(c) is Flow
    for name in fd.FIELDS:
        a, b = getattr(c, name), getattr(py, name)
        assert a == b and type(a) is type(b), name


@pytest.mark.parametrize("bucket,count", [(0, 1), (4, 1), (4, 2), (27, 16), (5, 17), (6, 2**32 - 1)])
def test_c_rtt_hist_of_one_bucket_is_python_s_and_shared(bucket, count):
    """A short connection's few samples in one bucket: the C decoder hands out one histogram
    object for all such flows (up to 16 samples), equal to the Python decoder's."""
    vals = list(fd.py_unpack_all(RECORD, bytes(RECORD.size))[0])
    vals[fd.I_FAMILY] = 2
    vals[fd.I_HIST + bucket] = count
    args = (tuple(vals), 1, "", "", "", 0, 0.0, False, "", False, 1, 0.0)
    a, b = fd.flow_of(*args), fd.flow_of(*args)
    assert a.rtt_hist == fd.py_flow_of(*args).rtt_hist == ((fd.RTT_UPPER_US[bucket], count),)
    assert (a.rtt_hist is b.rtt_hist) == (count <= 16)
    vals[fd.I_HIST + (bucket + 1) % 28] = 1  # two buckets: made anew
    two = fd.flow_of(tuple(vals), *args[1:]).rtt_hist
    assert two == fd.py_flow_of(tuple(vals), *args[1:]).rtt_hist and len(two) == 2


def test_with_fields_copies_and_changes():
    base = fd.py_new_flow(*range(len(fd.FIELDS)))
    g = fd.with_fields(base, latency={"tx": {}}, resets_sent=3)
    assert g is not base and g.latency == {"tx": {}} and g.resets_sent == 3
    assert dataclasses.replace(base, latency={"tx": {}}, resets_sent=3) == g
    with pytest.raises(TypeError, match="no field"):
        fd.with_fields(base, nope=1)


def test_new_flow_is_an_ordinary_frozen_flow():
    f = fd.new_flow(*range(len(fd.FIELDS)))
    assert f == fd.py_new_flow(*range(len(fd.FIELDS)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.cwnd = 1
    with pytest.raises(TypeError):
        fd.new_flow(1, 2)
    assert not gc.is_tracked(f)  # it can lead back to no Flow: the cyclic collector need not walk it


def test_flow_of_refuses_a_short_record():
    with pytest.raises(ValueError, match="whole record"):
        fd.flow_of((1, 2, 3), 0, "", "", "", 0, 0.0, False, "", False, 1, 0.0)


# unpack_all reads the formats struct_format() writes by a plan of its own (struct's
# iter_unpack for any other): the same tuples as iter_unpack, for the real record layouts
# with and without a ring's header, and for formats drawn from the codes it plans.

_ITEM = st.tuples(st.integers(0, 40), st.sampled_from("QIHBsx"))


def _fmt_of(items) -> str:
    return "<" + "".join(f"{n if n != 1 else ''}{c}" for n, c in items)


@settings(max_examples=300, deadline=None)
@given(st.lists(_ITEM, min_size=1, max_size=12), st.integers(0, 5), st.randoms(use_true_random=False),
       st.booleans())
def test_unpack_all_equals_struct_for_any_planned_format(items, nrec, rnd, view):
    import struct
    fmt = struct.Struct(_fmt_of(items))
    if fmt.size == 0:
        return
    buf = bytes(rnd.getrandbits(8) for _ in range(fmt.size * nrec))
    got = fd.unpack_all(fmt, memoryview(buf) if view else buf)
    assert got == list(fmt.iter_unpack(buf))
    assert not any(gc.is_tracked(t) for t in got)  # out of the collector's sight
    if fmt.size > 1:  # a byte more is not a whole record
        with pytest.raises(struct.error, match=f"multiple of {fmt.size} bytes"):
            fd.unpack_all(fmt, buf + b"\0")


@pytest.mark.parametrize("header", [False, True])
@settings(max_examples=50, deadline=None)
@given(st.data())
def test_unpack_all_equals_struct_for_records_and_notices(header, data):
    import struct

    from tcptop.engines.core.flow_layout import NOTICE
    from tcptop.engines.core.libbpf import _skip_header
    for layout in (RECORD, NOTICE):
        fmt = _skip_header(layout, (layout.size + 8 + 7) & ~7) if header else layout
        buf = data.draw(st.binary(min_size=fmt.size * 3, max_size=fmt.size * 3))
        assert fd.unpack_all(fmt, buf) == list(fmt.iter_unpack(buf))
        assert len(fd.unpack_all(fmt, buf)[0]) == len(fmt.unpack_from(buf))
    other = struct.Struct(">IH")  # not a format it plans: struct's own reading
    assert fd.unpack_all(other, b"\0\0\0\1\0\2" * 2) == [(1, 2), (1, 2)]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from([1, 2, 3]), st.integers(0, 2**32 - 1)),
                max_size=20),
       st.sets(st.integers(0, 5)), st.booleans())
def test_unpack_all_leaves_out_what_skip_names(recs, ids, planned):
    """The notices of sockets whose final record is in are left out before they are unpacked:
    exactly those of the kind named whose first item is among the ids, others in their order."""
    import struct
    fmt = struct.Struct("<8xQIxxxxI" if planned else ">8xQIxxxxI")  # ">": a format it does not plan
    buf = b"".join(fmt.pack(cookie, kind, pid) for cookie, kind, pid in recs)
    skip = (1, 1, ids)
    want = [r for r in recs if not (r[1] == 1 and r[0] in ids)]
    assert fd.unpack_all(fmt, buf, skip) == want
    assert fd.py_unpack_all(fmt, buf, skip) == want
    assert fd.unpack_all(fmt, buf, None) == list(fmt.iter_unpack(buf))
    assert not any(gc.is_tracked(t) for t in fd.unpack_all(fmt, buf, skip))


def test_unpack_all_skip_on_items_that_are_not_numbers_compares_them():
    import struct
    fmt = struct.Struct("<Q4s")
    buf = fmt.pack(1, b"ab") + fmt.pack(2, b"ab")
    assert fd.unpack_all(fmt, buf, (1, 1, {1})) == fd.py_unpack_all(fmt, buf, (1, 1, {1})) == [(1, b"ab\0\0"), (2, b"ab\0\0")]
    with pytest.raises(TypeError):
        fd.unpack_all(struct.Struct("<QI"), b"\0" * 12, (1, 1, [1]))  # ids must be a set
