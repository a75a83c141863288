"""The ctypes binding to libbpf: clear errors, layouts from BTF, globals set by name, batch reads."""

import ctypes
import errno

import pytest

from tcptop.engines.core.flows import REC_SIZE, FlowRecord
from tcptop.engines.core.libbpf import BpfError, BpfObject, KernelBtf, object_path, possible_cpus


def test_missing_object_is_a_clear_error():
    with pytest.raises(BpfError) as e:
        BpfObject("/nonexistent/flows.bpf.o")
    assert e.value.errno == errno.ENOENT and "make setup" in str(e.value)


def test_layouts_and_globals_come_from_the_objects_btf():
    obj = BpfObject(object_path("flows.bpf.o"))
    try:
        assert obj.struct_size("flow_record") == REC_SIZE == ctypes.sizeof(FlowRecord)
        obj.set_rodata("host_netns", (1234).to_bytes(4, "little"))
        with pytest.raises(KeyError):
            obj.set_rodata("no_such_global", b"\0")
        with pytest.raises(ValueError):
            obj.set_rodata("host_netns", b"\0")  # 4 bytes wide, not 1
        assert {"tcptop_iter", "tcptop_files", "tcptop_send"} <= obj.programs.keys()
    finally:
        obj.close()


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
    from tcptop.engines.core.flows import STAT_MAX

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
