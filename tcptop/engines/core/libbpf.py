"""A thin ctypes binding to the system's libbpf (libbpf.so.1): just what the engines use.

Why ctypes and not BCC or a compiled extension: the BPF objects are built once
with clang (CO-RE), so user space only has to open, load, attach and read maps.
libbpf does all of that; a few dozen foreign calls need no compiler on the host.
Every call that can fail raises BpfError with libbpf's own log lines attached.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import errno
import functools
import os
import mmap
import re
import struct
import threading
from typing import Callable, Iterator

from tcptop import native

_lib: ctypes.CDLL | None = None
_libc = ctypes.CDLL(None, use_errno=True)
_log_lock = threading.Lock()
_log: list[str] = []
_print_buf = ctypes.create_string_buffer(1 << 20)
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)

LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG = 0, 1, 2
BTF_KIND_ARRAY = 3
BTF_KIND_STRUCT = 4
BTF_KIND_ENUM = 6
BTF_KIND_TYPEDEF = 8
BTF_KIND_FUNC = 12
BTF_KIND_DATASEC = 15


class BpfError(OSError):
    """A libbpf call failed; `log` holds libbpf's messages from that call."""

    def __init__(self, what: str, err: int, log: list[str] | None = None):
        self.log = log or []
        super().__init__(err, f"{what}: {os.strerror(err)}" if err else what)

    def __str__(self) -> str:
        return self.args[1]


@_PRINT_FN
def _print(level: int, fmt: bytes, va_list: int) -> int:
    # libbpf hands us printf arguments as a va_list; let libc format them.
    if level == LIBBPF_DEBUG:
        return 0
    with _log_lock:
        # A refused program's verifier log comes as one message, its reason at the end:
        # the buffer must hold it whole (a va_list can be formatted only once).
        _libc.vsnprintf(_print_buf, ctypes.c_size_t(len(_print_buf)), fmt, ctypes.c_void_p(va_list))
        _log.extend(_print_buf.value.decode(errors="replace").rstrip().splitlines())
        del _log[:-400]
    return 0


def _take_log() -> list[str]:
    with _log_lock:
        out = list(_log)
        _log.clear()
    return out


def lib() -> ctypes.CDLL:
    """Load libbpf once and declare the signatures we call."""
    global _lib
    if _lib is not None:
        return _lib
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        so = ctypes.CDLL(name, use_errno=True)
    except OSError as e:
        raise BpfError(f"cannot load libbpf ({name})", errno.ENOENT) from e
    P, I, U32, SZ = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_size_t
    sigs = {
        "libbpf_set_print": (P, [P]),
        "bpf_object__open_file": (P, [ctypes.c_char_p, P]),
        "bpf_object__load": (I, [P]),
        "bpf_object__close": (None, [P]),
        "bpf_object__next_program": (P, [P, P]),
        "bpf_object__next_map": (P, [P, P]),
        "bpf_object__find_map_by_name": (P, [P, ctypes.c_char_p]),
        "bpf_object__find_program_by_name": (P, [P, ctypes.c_char_p]),
        "bpf_program__name": (ctypes.c_char_p, [P]),
        "bpf_program__section_name": (ctypes.c_char_p, [P]),
        "bpf_program__set_autoload": (I, [P, ctypes.c_bool]),
        "bpf_program__autoload": (ctypes.c_bool, [P]),
        "bpf_program__fd": (I, [P]),
        "bpf_program__attach": (P, [P]),
        "bpf_program__attach_cgroup": (P, [P, I]),
        "bpf_program__attach_iter": (P, [P, P]),
        "bpf_link__fd": (I, [P]),
        "bpf_link__destroy": (I, [P]),
        "bpf_map__name": (ctypes.c_char_p, [P]),
        "bpf_map__fd": (I, [P]),
        "bpf_map__set_max_entries": (I, [P, U32]),
        "bpf_map__max_entries": (U32, [P]),
        "bpf_map__initial_value": (P, [P, ctypes.POINTER(SZ)]),
        "bpf_map__value_size": (U32, [P]),
        "bpf_iter_create": (I, [I]),
        "bpf_map_lookup_elem": (I, [I, P, P]),
        "bpf_map_delete_elem": (I, [I, P]),
        "bpf_map_update_elem": (I, [I, P, P, ctypes.c_uint64]),
        "bpf_map_get_next_key": (I, [I, P, P]),
        "bpf_map_lookup_batch": (I, [I, P, P, P, P, ctypes.POINTER(U32), P]),
        "bpf_map_lookup_and_delete_batch": (I, [I, P, P, P, P, ctypes.POINTER(U32), P]),
        "bpf_map_update_batch": (I, [I, P, P, ctypes.POINTER(U32), P]),
        "bpf_map_delete_batch": (I, [I, P, ctypes.POINTER(U32), P]),
        "bpf_map__map_flags": (U32, [P]),
        "bpf_prog_test_run_opts": (I, [I, P]),
        "bpf_obj_get_info_by_fd": (I, [I, P, ctypes.POINTER(U32)]),
        "btf__load_vmlinux_btf": (P, []),
        "btf__free": (None, [P]),
        "btf__find_by_name_kind": (ctypes.c_int32, [P, ctypes.c_char_p, U32]),
        "btf__resolve_size": (ctypes.c_long, [P, U32]),
        "btf__type_by_id": (P, [P, U32]),
        "btf__name_by_offset": (ctypes.c_char_p, [P, U32]),
        "bpf_object__btf": (P, [P]),
    }
    for fn, (res, args) in sigs.items():
        f = getattr(so, fn)
        f.restype, f.argtypes = res, args
    so.libbpf_set_print(ctypes.cast(_print, P))
    _libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
    _lib = so
    return so


def _err() -> int:
    return ctypes.get_errno() or errno.EINVAL


class KernelBtf:
    """The running kernel's BTF: tells which hooks and types this kernel has."""

    def __init__(self) -> None:
        self._btf = lib().btf__load_vmlinux_btf()
        if not self._btf:
            raise BpfError("cannot read kernel BTF (/sys/kernel/btf/vmlinux)", _err(), _take_log())

    def has_tracepoint(self, name: str) -> bool:
        return lib().btf__find_by_name_kind(self._btf, f"btf_trace_{name}".encode(), BTF_KIND_TYPEDEF) > 0

    def has_function(self, name: str) -> bool:
        return lib().btf__find_by_name_kind(self._btf, name.encode(), BTF_KIND_FUNC) > 0

    def enum(self, name: str) -> dict[str, int]:
        """Enumerators of a kernel enum (e.g. skb_drop_reason); empty when this kernel has none."""
        try:
            return _Btf(self._btf).enum(name)
        except KeyError:
            return {}

    def close(self) -> None:
        if self._btf:
            lib().btf__free(self._btf)
            self._btf = None


class _Btf:
    """Read-only walks over a BTF blob owned by libbpf (an object's, or the kernel's)."""

    _MEMBER = 12  # struct btf_member / btf_var_secinfo: three u32
    _ENUM = 8     # struct btf_enum: name_off, val

    def __init__(self, btf: int):
        self._btf = btf

    def find(self, name: str, kind: int) -> int:
        tid = lib().btf__find_by_name_kind(self._btf, name.encode(), kind)
        if tid <= 0:
            kinds = {BTF_KIND_STRUCT: "struct", BTF_KIND_ENUM: "enum", BTF_KIND_DATASEC: "section"}
            raise KeyError(f"{kinds.get(kind, 'type')} {name} not in this BTF")
        return tid

    def _head(self, tid: int) -> ctypes._Pointer:
        return ctypes.cast(lib().btf__type_by_id(self._btf, tid), ctypes.POINTER(ctypes.c_uint32))

    def _name(self, off: int) -> str:
        return lib().btf__name_by_offset(self._btf, off).decode()

    def _records(self, tid: int, width: int) -> list[ctypes._Pointer]:
        head = self._head(tid)
        vlen = head[1] & 0xFFFF
        base = ctypes.addressof(head.contents) + 12
        return [ctypes.cast(base + i * width, ctypes.POINTER(ctypes.c_uint32)) for i in range(vlen)]

    def members(self, tid: int) -> list[tuple[str, int, int, int]]:
        """(name, byte offset, size, type id) of each member of a struct, in order."""
        kflag = self._head(tid)[1] >> 31
        out = []
        for m in self._records(tid, self._MEMBER):
            bits = m[2] & 0xFFFFFF if kflag else m[2]
            out.append((self._name(m[0]), bits // 8, lib().btf__resolve_size(self._btf, m[1]), m[1]))
        return out

    def _struct_of(self, tid: int) -> int | None:
        """The struct a member type is, or holds an array of (through typedefs/qualifiers), or None."""
        for _ in range(16):
            head = self._head(tid)
            kind = (head[1] >> 24) & 0x1F
            if kind == BTF_KIND_STRUCT:
                return tid
            if kind in (BTF_KIND_TYPEDEF, 9, 10, 11):  # typedef, volatile, const, restrict
                tid = head[2]
                continue
            if kind == BTF_KIND_ARRAY:  # struct btf_array after the header: element type first
                tid = head[3]
                continue
            return None
        return None

    def mirror_mismatch(self, cname: str, mirror: type[ctypes.Structure], path: str = "") -> str:
        """What differs between struct `cname` here and a ctypes mirror ("" if nothing)."""
        tid = self.find(cname, BTF_KIND_STRUCT) if not path else int(cname)
        where = path or f"struct {cname}"
        got = self.members(tid)
        want = [(n, getattr(mirror, n).offset, getattr(mirror, n).size, t) for n, t in mirror._fields_]
        for i in range(max(len(got), len(want))):
            if i >= len(got):
                return f"{where}.{want[i][0]}: in the mirror only"
            if i >= len(want):
                return f"{where}.{got[i][0]}: missing from the mirror"
            (gname, goff, gsize, gtype), (wname, woff, wsize, wtype) = got[i], want[i]
            if gname != wname:
                return f"{where}: member {i} is {gname} in C, {wname} in the mirror"
            if (goff, gsize) != (woff, wsize):
                return (f"{where}.{gname}: offset {goff} size {gsize} in C, "
                        f"offset {woff} size {wsize} in the mirror")
            sub = self._struct_of(gtype)
            while isinstance(wtype, type) and issubclass(wtype, ctypes.Array):  # an array of structs: its element
                wtype = wtype._type_
            if sub is not None and isinstance(wtype, type) and issubclass(wtype, ctypes.Structure):
                problem = self.mirror_mismatch(str(sub), wtype, f"{where}.{gname}")
                if problem:
                    return problem
        if lib().btf__resolve_size(self._btf, tid) != ctypes.sizeof(mirror):
            return f"{where}: {lib().btf__resolve_size(self._btf, tid)} bytes in C, {ctypes.sizeof(mirror)} in the mirror"
        return ""

    def enum(self, name: str) -> dict[str, int]:
        tid = self.find(name, BTF_KIND_ENUM)
        return {self._name(e[0]): ctypes.c_int32(e[1]).value for e in self._records(tid, self._ENUM)}

    def datasec(self, section: str) -> list[tuple[str, int, int]]:
        """(variable, offset, size) of each global in a data section such as .rodata."""
        out = []
        for v in self._records(self.find(section, BTF_KIND_DATASEC), self._MEMBER):
            out.append((self._name(self._head(v[0])[0]), v[1], v[2]))
        return out


class _TestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts (libbpf)."""
    _fields_ = [("sz", ctypes.c_size_t), ("data_in", ctypes.c_void_p), ("data_out", ctypes.c_void_p),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32), ("ctx_in", ctypes.c_void_p),
                ("ctx_out", ctypes.c_void_p), ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("retval", ctypes.c_uint32), ("repeat", ctypes.c_int), ("duration", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32), ("batch_size", ctypes.c_uint32)]


class _IterAttachOpts(ctypes.Structure):
    """struct bpf_iter_attach_opts (libbpf)."""
    _fields_ = [("sz", ctypes.c_size_t), ("link_info", ctypes.c_void_p), ("link_info_len", ctypes.c_uint32)]


class Link:
    """An attachment; destroying it detaches the program."""

    def __init__(self, ptr: int, what: str):
        self._ptr, self.what = ptr, what

    @property
    def fd(self) -> int:
        return lib().bpf_link__fd(self._ptr)

    def destroy(self) -> None:
        if self._ptr:
            lib().bpf_link__destroy(self._ptr)
            self._ptr = None


# struct bpf_prog_info.recursion_misses (UAPI: members are only ever appended, so its place holds)
_PROG_INFO_RECURSION_MISSES = 208


class Program:
    def __init__(self, ptr: int):
        self._ptr = ptr
        self.name = lib().bpf_program__name(ptr).decode()
        self.section = lib().bpf_program__section_name(ptr).decode()

    def set_autoload(self, on: bool) -> None:
        lib().bpf_program__set_autoload(self._ptr, on)

    @property
    def fd(self) -> int:
        return lib().bpf_program__fd(self._ptr)

    def _info(self) -> bytes:
        """struct bpf_prog_info (its first 256 bytes; a kernel older than a field leaves it 0)."""
        info = (ctypes.c_uint8 * 256)()
        n = ctypes.c_uint32(len(info))
        if lib().bpf_obj_get_info_by_fd(self.fd, info, ctypes.byref(n)):
            raise BpfError(f"prog info {self.name}", _err())
        return bytes(info)

    def prog_id(self) -> int:
        # struct bpf_prog_info: __u32 type; __u32 id; ...
        return int.from_bytes(self._info()[4:8], "little")

    def recursion_misses(self) -> int:
        """Runs the kernel skipped because this program was already running on that CPU: an
        interrupt came while it ran, and the softirq after it hit the same hook (another
        socket's state change, say). Each is an event lost (kernels >= 5.12 count them)."""
        return int.from_bytes(self._info()[_PROG_INFO_RECURSION_MISSES:_PROG_INFO_RECURSION_MISSES + 8], "little")

    def attach(self) -> Link:
        p = lib().bpf_program__attach(self._ptr)
        if not p:
            raise BpfError(f"attach {self.name} ({self.section})", _err(), _take_log())
        return Link(p, self.name)

    def attach_cgroup(self, cgroup_fd: int) -> Link:
        p = lib().bpf_program__attach_cgroup(self._ptr, cgroup_fd)
        if not p:
            raise BpfError(f"attach {self.name} to cgroup", _err(), _take_log())
        return Link(p, self.name)

    def test_run(self, packet: bytes) -> int:
        """Run the program once on `packet` (BPF_PROG_TEST_RUN), in the calling thread's
        network namespace; returns its return value."""
        buf = ctypes.create_string_buffer(packet, len(packet))
        opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts), data_in=ctypes.addressof(buf), data_size_in=len(packet),
                            repeat=1)
        if lib().bpf_prog_test_run_opts(self.fd, ctypes.byref(opts)):
            raise BpfError(f"test run of {self.name}", _err())
        return opts.retval

    def attach_iter(self, pid: int = 0) -> Link:
        """Attach an iterator; for task iterators, `pid` limits it to that process."""
        opts = None
        if pid:
            info = (ctypes.c_uint32 * 4)(0, pid, 0, 0)  # union bpf_iter_link_info: task.tid, task.pid, task.pid_fd
            opts = ctypes.byref(_IterAttachOpts(ctypes.sizeof(_IterAttachOpts), ctypes.addressof(info),
                                                ctypes.sizeof(info)))
        p = lib().bpf_program__attach_iter(self._ptr, opts)
        if not p:
            raise BpfError(f"attach iterator {self.name}", _err(), _take_log())
        return Link(p, self.name)


class Map:
    def __init__(self, ptr: int):
        self._ptr = ptr
        self.name = lib().bpf_map__name(ptr).decode()

    @property
    def fd(self) -> int:
        return lib().bpf_map__fd(self._ptr)

    @property
    def max_entries(self) -> int:
        return lib().bpf_map__max_entries(self._ptr)

    def set_max_entries(self, n: int) -> None:
        if lib().bpf_map__set_max_entries(self._ptr, n):
            raise BpfError(f"resize map {self.name}", _err())

    def initial_value(self) -> ctypes.Array:
        """The writable image of a global-data map (.rodata), before load."""
        size = ctypes.c_size_t()
        p = lib().bpf_map__initial_value(self._ptr, ctypes.byref(size))
        if not p:
            raise BpfError(f"initial value of {self.name}", _err())
        return (ctypes.c_uint8 * size.value).from_address(p)

    def percpu_sums(self, count: int) -> list[int]:
        """Keys 0..count-1 of a per-CPU array of u64 counters, each summed over every possible CPU."""
        return [self.percpu_sum(i) for i in range(count)]

    def percpu_sum(self, key: int) -> int:
        """One key of a per-CPU array of u64 counters, summed over every possible CPU."""
        vals = (ctypes.c_uint64 * possible_cpus())()
        return sum(vals) if self.lookup(ctypes.c_uint32(key), vals) else 0

    def mmap(self) -> mmap.mmap:
        """The live memory of an array map created with BPF_F_MMAPABLE (a global-data map such
        as .bss), shared with the programs; read and write it after load. Entry i starts at
        i times the value size rounded up to 8."""
        entry = -(-lib().bpf_map__value_size(self._ptr) // 8) * 8
        size = -(-entry * lib().bpf_map__max_entries(self._ptr) // mmap.PAGESIZE) * mmap.PAGESIZE
        return mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def update_keys(self, keys: list[int], key_type, value_type) -> None:
        """Insert keys (values zeroed) into a hash map, in one system call."""
        if not keys:
            return
        karr = (key_type * len(keys))(*keys)
        varr = (value_type * len(keys))()
        count = ctypes.c_uint32(len(keys))
        if lib().bpf_map_update_batch(self.fd, karr, varr, ctypes.byref(count), None):
            raise BpfError(f"batch update of map {self.name}", _err())

    def delete_keys(self, keys: list[int], key_type) -> None:
        """Remove keys from a hash map, in one system call (absent keys are not an error)."""
        if not keys:
            return
        karr = (key_type * len(keys))(*keys)
        count = ctypes.c_uint32(len(keys))
        if lib().bpf_map_delete_batch(self.fd, karr, ctypes.byref(count), None):
            err = _err()
            if err != errno.ENOENT:
                raise BpfError(f"batch delete from map {self.name}", err)
            for k in keys[count.value:]:  # stopped at an absent key: the rest one by one
                lib().bpf_map_delete_elem(self.fd, ctypes.byref(key_type(k)))

    def lookup(self, key: ctypes._CData, value: ctypes._CData) -> bool:
        return lib().bpf_map_lookup_elem(self.fd, ctypes.byref(key), ctypes.byref(value)) == 0

    def update(self, key: ctypes._CData, value: ctypes._CData) -> None:
        if lib().bpf_map_update_elem(self.fd, ctypes.byref(key), ctypes.byref(value), 0):
            raise BpfError(f"update map {self.name}", _err())

    def delete(self, key: ctypes._CData) -> bool:
        return lib().bpf_map_delete_elem(self.fd, ctypes.byref(key)) == 0

    def is_empty(self, key_size: int) -> bool:
        """Whether a hash map holds no entry (one system call, nothing copied but a key)."""
        key = ctypes.create_string_buffer(key_size)
        return lib().bpf_map_get_next_key(self.fd, None, key) != 0

    def batches(self, key_type, value_type, delete: bool = False, batch: int = 4096) -> Iterator[tuple]:
        """Yield (keys, values, count) chunks of the whole map, optionally deleting what was read.

        Batch calls read thousands of entries per system call; that is what
        keeps a poll of a big map cheap.
        """
        fn = lib().bpf_map_lookup_and_delete_batch if delete else lib().bpf_map_lookup_batch
        keys = (key_type * batch)()
        values = (value_type * batch)()
        out_batch = ctypes.c_uint64()
        in_batch = ctypes.c_uint64()
        first = True
        while True:
            count = ctypes.c_uint32(batch)
            rc = fn(self.fd, None if first else ctypes.byref(in_batch), ctypes.byref(out_batch),
                    keys, values, ctypes.byref(count), None)
            err = ctypes.get_errno() if rc else 0
            if rc and err != errno.ENOENT:
                raise BpfError(f"batch read of map {self.name}", err)
            if count.value:
                yield keys, values, count.value
            if rc:  # ENOENT: that was the last chunk
                return
            in_batch.value = out_batch.value
            first = False


class BpfObject:
    """One compiled *.bpf.o: open, choose what to load, load, attach programs, reach maps."""

    def __init__(self, path: str):
        if not os.path.exists(path):
            raise BpfError(f"BPF object {path} not found (run `make setup`)", errno.ENOENT)
        self._obj = lib().bpf_object__open_file(path.encode(), None)
        if not self._obj:
            raise BpfError(f"open {path}", _err(), _take_log())
        self.path = path
        self.programs: dict[str, Program] = {}
        p = None
        while True:
            p = lib().bpf_object__next_program(self._obj, p)
            if not p:
                break
            prog = Program(p)
            self.programs[prog.name] = prog
        self.maps: dict[str, Map] = {}
        m = None
        while True:
            m = lib().bpf_object__next_map(self._obj, m)
            if not m:
                break
            mp = Map(m)
            self.maps[mp.name] = mp

    def set_rodata(self, var: str, value: int | bytes) -> None:
        """Set a `const volatile` global before load, by name: its offset and size come from the
        object's BTF (the compiler, not the source order, decides where each variable lies).
        An int is written little-endian in the variable's own size."""
        btf = _Btf(self._obj_btf())
        for vname, off, size in btf.datasec(".rodata"):
            if vname != var:
                continue
            if isinstance(value, int):
                if not 0 <= value < 1 << (8 * size):
                    raise ValueError(f"{var} is {size} bytes, {value} does not fit")
                value = value.to_bytes(size, "little")
            if len(value) != size:
                raise ValueError(f"{var} is {size} bytes, got {len(value)}")
            image = self.rodata().initial_value()
            image[off:off + size] = list(value)
            return
        raise KeyError(f"no variable {var} in {self.path}")

    def _obj_btf(self) -> int:
        btf = lib().bpf_object__btf(self._obj)
        if not btf:
            raise KeyError(f"{self.path} carries no BTF")
        return btf

    def check_mirror(self, cname: str, mirror: type[ctypes.Structure]) -> None:
        """Raise BpfError unless `mirror` lays out struct `cname` exactly as the compiler did:
        every member by name, offset and size, in order, nested structs too. Two swapped
        members of equal size keep the struct's size; they do not pass this."""
        problem = _Btf(self._obj_btf()).mirror_mismatch(cname, mirror)
        if problem:
            raise BpfError(f"{os.path.basename(self.path)} does not match its Python mirror: {problem}; "
                           "rebuild with `make setup`, or fix the mirror", 0)

    def enum(self, name: str) -> dict[str, int]:
        """Enumerators of `enum name` in this object's BTF (constants shared with the kernel side)."""
        return _Btf(self._obj_btf()).enum(name)

    def check_enum_mirror(self, cname: str, mirror: type[enum.IntEnum]) -> None:
        """Raise BpfError unless a Python enum has exactly the enumerators of `enum cname`."""
        got, want = self.enum(cname), {m.name: int(m.value) for m in mirror}
        for name in sorted(got.keys() | want.keys()):
            if got.get(name) != want.get(name):
                raise BpfError(f"{os.path.basename(self.path)} does not match its Python mirror: enum {cname}.{name} "
                               f"is {got.get(name, 'absent')} in C, {want.get(name, 'absent')} in the mirror; "
                               "rebuild with `make setup`, or fix the mirror", 0)

    def rodata(self) -> Map:
        """Read-only globals (`const volatile`): set before load."""
        return self._internal(".rodata")

    def bss(self) -> Map:
        """Zero-initialised globals: after load, initial_value() is the live, shared memory."""
        return self._internal(".bss")

    def _internal(self, suffix: str) -> Map:
        for name, m in self.maps.items():
            if name.endswith(suffix):
                return m
        raise KeyError(f"no {suffix} map")

    def struct_size(self, name: str) -> int:
        """Size of a struct as the compiler laid it out in this object (from its BTF)."""
        btf = self._obj_btf()
        return lib().btf__resolve_size(btf, _Btf(btf).find(name, BTF_KIND_STRUCT))

    def program_ids(self) -> list[int]:
        """Kernel ids of this object's loaded programs, so benchmarks and tests count only ours."""
        return [p.prog_id() for p in self.programs.values() if p.fd >= 0]

    def recursion_misses(self) -> int:
        """Runs of this object's programs the kernel skipped (Program.recursion_misses)."""
        return sum(p.recursion_misses() for p in self.programs.values() if p.fd >= 0)

    def load(self) -> None:
        if lib().bpf_object__load(self._obj):
            err = _err()
            log = _take_log()
            raise BpfError(f"load {os.path.basename(self.path)}", err, log)

    def close(self) -> None:
        if self._obj:
            lib().bpf_object__close(self._obj)
            self._obj = None


_REFUSED_RE = re.compile(r"^libbpf: prog '([^']+)': BPF program load failed")


def refused_program(log: list[str]) -> tuple[str, str] | None:
    """(program, the verifier's reason) from the log of a failed object load; None when no
    program was refused (a map, BTF or relocation failed instead).

    The reason is the verifier's last statement before its summary ("processed N insns"),
    e.g. "R1 type=untrusted_ptr_ expected=sock_common, ...".
    """
    prog = None
    for i, line in enumerate(log):
        m = _REFUSED_RE.match(line)
        if m:
            prog, start = m.group(1), i
    if prog is None:
        return None
    why = ""
    for line in log[start + 1:]:
        text = line.strip()
        if text.startswith("-- END PROG LOAD LOG") or text.startswith("processed "):
            break
        if text and not text.startswith(("libbpf:", ";")) and not re.match(r"^\d+: ", text):
            why = text
    return prog, why or "refused by the verifier"


_RB_BUSY, _RB_DISCARD = 1 << 31, 1 << 30


@functools.lru_cache(maxsize=None)
def _stride(record: struct.Struct) -> int:
    """Bytes a ring record of `record` takes: an 8-byte header, the record, padding to 8."""
    return (record.size + 8 + 7) & ~7


def _skip_header(record: struct.Struct, stride: int) -> struct.Struct:
    """`record` preceded by a ring record's 8-byte header and followed by its padding."""
    fmt = record.format
    order = fmt[0] if fmt[0] in "<>=!@" else ""
    return struct.Struct(f"{order or '<'}8x{fmt[len(order):]}{stride - 8 - record.size}x")


class RingBuffer:
    """Consumer side of a BPF_MAP_TYPE_RINGBUF, read through its memory mapping: no
    callback per record, one pass over what the producers have committed.

    Layout (kernel/bpf/ringbuf.c): page 0 holds the consumer position (ours to write),
    page 1 the producer position, then the data area mapped twice in a row so a record
    that wraps around can be read in one piece. Each record has an 8-byte header whose
    first word is its length with a busy and a discard bit.
    """

    def __init__(self, ring: Map):
        self.size = ring.max_entries
        page = mmap.PAGESIZE
        self._cons = mmap.mmap(ring.fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._prod = mmap.mmap(ring.fd, page + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._data = memoryview(self._prod)[page:]
        self._page = page

    def pending_bytes(self) -> int:
        """Bytes the producers have reserved and we have not consumed yet."""
        return struct.unpack_from("<Q", self._prod, 0)[0] - struct.unpack_from("<Q", self._cons, 0)[0]

    def drain(self) -> list[bytes]:
        """Every committed record, oldest first; their room is given back to the producers."""
        cons = struct.unpack_from("<Q", self._cons, 0)[0]
        prod = struct.unpack_from("<Q", self._prod, 0)[0]
        mask, data, out = self.size - 1, self._data, []
        while cons < prod:
            off = cons & mask
            head = struct.unpack_from("<I", data, off)[0]
            if head & _RB_BUSY:
                break
            length = head & ~(_RB_BUSY | _RB_DISCARD)
            if not head & _RB_DISCARD:
                out.append(bytes(data[off + 8:off + 8 + length]))
            cons += (length + 8 + 7) & ~7
        struct.pack_into("<Q", self._cons, 0, cons)
        return out

    def drain_unpacked(self, record: struct.Struct, unpack_all=None) -> list[tuple]:
        """Every committed record, unpacked with `record`, for a ring whose records all have
        that size: one pass in C over the committed bytes (the data area is mapped twice, so
        they are contiguous even across the wrap). `unpack_all(fmt, buf)`, if given, makes the
        list (flow_decode.unpack_all: tuples out of the cyclic collector's sight)."""
        return self._take_committed(
            record, lambda fmt, region: unpack_all(fmt, region) if unpack_all else list(fmt.iter_unpack(region))) or []

    def drain_bytes(self, record: struct.Struct) -> bytes:
        """Every committed record of `record`'s size, copied out as they lie in the ring (each
        behind its header, unpack with `framed(record)`), for records read later than they
        are taken: the reader can then pass over those it no longer needs without unpacking them."""
        return self._take_committed(record, lambda _fmt, region: bytes(region)) or b""

    def framed(self, record: struct.Struct) -> struct.Struct:
        """`record` as drain_bytes lays it out: behind its 8-byte header, followed by its padding."""
        return _skip_header(record, _stride(record))

    def _take_committed(self, record: struct.Struct, use):
        """use(framed format, the committed records' bytes) while they are still in the ring
        (its answer; None when there are none), then give their room back to the producers."""
        stride = _stride(record)
        cons = struct.unpack_from("<Q", self._cons, 0)[0]
        prod = struct.unpack_from("<Q", self._prod, 0)[0]
        n = (prod - cons) // stride
        if n <= 0:
            return None
        off = cons & (self.size - 1)
        region = self._data[off:off + n * stride]
        heads = region.cast("I")[::stride // 4]
        want = record.size
        for i, h in enumerate(heads):  # stop at one still being written (or of another size)
            if h != want:
                if (h & ~(_RB_BUSY | _RB_DISCARD)) != want or h & _RB_BUSY:
                    n = i
                    break
        region = region[:n * stride]
        try:
            out = use(_skip_header(record, stride), region) if n else None
        finally:
            heads.release()
            region.release()
        struct.pack_into("<Q", self._cons, 0, cons + n * stride)
        return out

    def close(self) -> None:
        self._data.release()
        self._prod.close()
        self._cons.close()


class IterReader:
    """An iterator run that can stop after a budget (its program returns 1) and resume at
    the same object at the next read: a walk spread over several polls."""

    def __init__(self, link: Link, bufsize: int = 1 << 20):
        fd = lib().bpf_iter_create(link.fd)
        if fd < 0:
            raise BpfError(f"create iterator {link.what}", _err())
        self.fd, self.bufsize, self.done = fd, bufsize, False

    def read(self) -> bytes:
        """Everything the program writes until its budget stops it (or the walk ends)."""
        chunks = []
        while not self.done:
            try:
                b = os.read(self.fd, self.bufsize)
            except BlockingIOError:  # EAGAIN: the program asked to stop here for now
                break
            if not b:
                self.done = True
                break
            chunks.append(b)
        return b"".join(chunks)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def iter_read(link: Link, bufsize: int = 1 << 20) -> bytes:
    """Run an iterator once and return everything it wrote."""
    return b"".join(iter_chunks(link, bufsize))


def iter_chunks(link: Link, bufsize: int = 1 << 20) -> list[bytes]:
    """Run an iterator once; what it wrote, one chunk per read()."""
    chunks: list[bytes] = []
    iter_each(link, chunks.append, bufsize)
    return chunks


def iter_each(link: Link, put: Callable[[bytes], object], bufsize: int = 1 << 20) -> None:
    """Run an iterator once, handing each read()'s chunk to `put` as it comes (another thread
    may use them while the kernel walks on: read() releases the GIL). A read returns the
    kernel's whole seq_file buffer (8 pages) when `bufsize` is larger, and a program's
    bpf_seq_write goes in whole or not at all, so each chunk holds whole records (unless one
    program run wrote more than the buffer)."""
    fd = lib().bpf_iter_create(link.fd)
    if fd < 0:
        raise BpfError(f"create iterator {link.what}", _err())
    try:
        while True:
            b = os.read(fd, bufsize)
            if not b:
                break
            put(b)
    finally:
        os.close(fd)


@functools.cache
def possible_cpus() -> int:
    """Per-CPU map values come one per possible CPU, not per online one."""
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            spec = f.read().strip()
        return max(int(part.partition("-")[2] or part) + 1 for part in spec.split(","))
    except (OSError, ValueError):
        return os.cpu_count() or 1


def object_path(filename: str) -> str:
    """Where a built BPF object is: $TCPTOP_BPF_DIR, an installed tcptop/bpf/, or build/ of a checkout."""
    return native.path_of(filename)


class CgroupRoot:
    """The root of cgroup v2, held open: a cgroup program attached there sees every socket."""

    def __init__(self) -> None:
        self._fd = -1

    def attach(self, prog: Program) -> Link:
        if self._fd < 0:
            root = cgroup2_root()
            if root is None:
                raise OSError(errno.ENOENT, "attach: cgroup v2 is not mounted")
            self._fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return prog.attach_cgroup(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def cgroup2_root() -> str | None:
    """Where cgroup v2 is mounted (unified or hybrid layout): cgroup programs (sock_ops,
    cgroup_skb) attached at its root see every socket on the host.

    TCPTOP_CGROUP2 names it when the first cgroup2 mount in /proc/mounts is not the host's
    root (a container with its own cgroup namespace whose host tree is mounted elsewhere)."""
    chosen = os.environ.get("TCPTOP_CGROUP2")
    if chosen:
        return chosen
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "cgroup2":
                    return parts[1]
    except OSError:
        pass
    return None
