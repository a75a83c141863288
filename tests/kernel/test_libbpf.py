"""The ctypes binding to libbpf: clear errors, layouts from BTF, globals set by name, batch reads."""

import ctypes
import errno

import pytest

from tcptop.engines.core.flow_layout import REC_SIZE, FlowRecord
from tcptop.engines.core.libbpf import BpfError, BpfObject, KernelBtf, object_path, possible_cpus


def test_missing_object_is_a_clear_error():
    with pytest.raises(BpfError) as e:
        BpfObject("/nonexistent/flows.bpf.o")
    assert e.value.errno == errno.ENOENT and "make setup" in str(e.value)


def test_layouts_and_globals_come_from_the_objects_btf():
    obj = BpfObject(object_path("flows.bpf.o"))
    try:
        assert obj.struct_size("flow_record") == REC_SIZE == ctypes.sizeof(FlowRecord)
        obj.set_rodata("hook_existing_rto", 1)
        with pytest.raises(KeyError):
            obj.set_rodata("no_such_global", b"\0")
        with pytest.raises(ValueError):
            obj.set_rodata("hook_existing_rto", 256)  # one byte wide
        assert {"tcptop_iter", "tcptop_files", "tcptop_probe", "tcptop_lookup"} <= obj.programs.keys()
    finally:
        obj.close()


def swapped(mirror, a, b):
    """A copy of a ctypes mirror with two members' places exchanged (same size, same types)."""
    fields = list(mirror._fields_)
    names = [n for n, _ in fields]
    i, j = names.index(a), names.index(b)
    fields[i], fields[j] = fields[j], fields[i]
    return type(mirror.__name__, (ctypes.Structure,), {"_fields_": fields})


def test_a_mirror_with_two_members_swapped_is_refused_by_name(monkeypatch):
    """snd_cwnd and snd_ssthresh are both u32: the struct keeps its size, the columns would trade
    values. The load refuses, naming the member, before any program is loaded."""
    from tcptop.engines.core import flows

    bad = swapped(FlowRecord, "snd_cwnd", "snd_ssthresh")
    assert ctypes.sizeof(bad) == ctypes.sizeof(FlowRecord)
    monkeypatch.setattr(flows, "MIRRORS", {**flows.MIRRORS, "flow_record": bad})
    with pytest.raises(BpfError) as e:
        flows.FlowEngine()
    assert "struct flow_record: member" in str(e.value) and "is snd_cwnd in C, snd_ssthresh in the mirror" in str(e.value)


def test_a_nested_member_an_array_and_an_enum_value_are_checked_too():
    from tcptop.engines.core import flow_layout, latency

    obj = BpfObject(object_path("flows.bpf.o"))
    try:
        short = type("FlowRecord", (ctypes.Structure,), {"_fields_": [
            (n, ctypes.c_uint32 * 27 if n == "rtt_hist" else t) for n, t in FlowRecord._fields_]})
        with pytest.raises(BpfError, match=r"struct flow_record\.rtt_hist: offset \d+ size 112 in C, offset \d+ size 108"):
            obj.check_mirror("flow_record", short)
        import enum
        stale = enum.IntEnum("RecordKind", {m.name: (4 if m.name == "KIND_GONE" else m.value)
                                            for m in flow_layout.RecordKind if m.name != "KIND_TW"})
        with pytest.raises(BpfError, match=r"enum record_kind\.KIND_GONE is 5 in C, 4 in the mirror"):
            obj.check_enum_mirror("record_kind", stale)
    finally:
        obj.close()
    lat = BpfObject(object_path("latency.bpf.o"))
    try:
        # a struct inside a struct: the two u16 members of lat_pend swapped inside lat_probes' slots
        pend = swapped(latency.LatPend, "n", "gen")
        nested = type("LatProbes", (ctypes.Structure,), {"_fields_": [
            (n, pend * 8 if n == "rx_tcp" else t) for n, t in latency.LatProbes._fields_]})
        with pytest.raises(BpfError, match=r"struct lat_probes\.rx_tcp: member 2 is n in C, gen in the mirror"):
            lat.check_mirror("lat_probes", nested)
        for cname, mirror in latency.MIRRORS.items():
            lat.check_mirror(cname, mirror)
        for cname, py_enum in latency.ENUM_MIRRORS.items():
            lat.check_enum_mirror(cname, py_enum)
        lat.set_rodata("track_skbs", 1)
        with pytest.raises(ValueError):
            lat.set_rodata("track_skbs", 256)  # one byte wide
    finally:
        lat.close()


def test_kernel_btf_knows_which_tracepoints_exist():
    btf = KernelBtf()
    try:
        assert btf.has_tracepoint("tcp_destroy_sock")
        assert not btf.has_tracepoint("no_such_tracepoint_here")
        assert btf.has_function("tcp_sendmsg")
    finally:
        btf.close()


def test_batch_read_of_a_loaded_map_returns_what_the_kernel_wrote():
    """After load, the per-CPU stats array has STAT_MAX keys, each with a value per possible CPU."""
    from tcptop.engines.core.flow_layout import Stat
    STAT_MAX = int(Stat.STAT_MAX)

    obj = BpfObject(object_path("flows.bpf.o"))
    try:
        for name in list(obj.programs):
            obj.programs[name].set_autoload(False)
        obj.load()
        stats = obj.maps["stats"]
        keys = []
        for ks, _, n in stats.batches(ctypes.c_uint32, ctypes.c_uint64 * possible_cpus()):
            keys.extend(ks[i] for i in range(n))
        assert keys == list(range(STAT_MAX))
    finally:
        obj.close()


def test_recursion_misses_are_read_where_the_kernel_keeps_them():
    """A program's skipped runs come from struct bpf_prog_info: its recursion_misses member
    is where this kernel's BTF puts it, and a loaded program reads 0 or more from there."""
    import subprocess

    from tcptop.engines.core import libbpf

    dump = subprocess.run(["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux"], capture_output=True,
                          text=True, check=True).stdout
    struct = dump[dump.index("STRUCT 'bpf_prog_info'"):]
    member = next(line for line in struct.splitlines() if line.strip().startswith("'recursion_misses'"))
    assert int(member.split("bits_offset=")[1]) == libbpf._PROG_INFO_RECURSION_MISSES * 8
    obj = BpfObject(object_path("flows.bpf.o"))
    try:
        for name, prog in obj.programs.items():
            if name != "tcptop_iter":
                prog.set_autoload(False)
        obj.load()
        assert obj.recursion_misses() == 0  # never attached: never run, never skipped
    finally:
        obj.close()
