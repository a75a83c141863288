"""A thin ctypes binding to the system's libbpf (libbpf.so.1): just what the engines use.

Why ctypes and not BCC or a compiled extension: the BPF objects are built once
with clang (CO-RE), so user space only has to open, load, attach and read maps.
libbpf does all of that; a few dozen foreign calls need no compiler on the host.
Every call that can fail raises BpfError with libbpf's own log lines attached.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import re
import threading
from typing import Iterator

_lib: ctypes.CDLL | None = None
_libc = ctypes.CDLL(None, use_errno=True)
_log_lock = threading.Lock()
_log: list[str] = []
_print_buf = ctypes.create_string_buffer(1 << 20)
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)

LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG = 0, 1, 2
BTF_KIND_TYPEDEF = 8
BTF_KIND_FUNC = 12


class BpfError(OSError):
    """A libbpf call failed; `log` holds libbpf's messages from that call."""

    def __init__(self, what: str, err: int, log: list[str] | None = None):
        self.log = log or []
        detail = os.strerror(err) if err else "failed"
        super().__init__(err, f"{what}: {detail}")


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
        "bpf_map_get_next_key": (I, [I, P, P]),
        "bpf_map_lookup_batch": (I, [I, P, P, P, P, ctypes.POINTER(U32), P]),
        "bpf_map_lookup_and_delete_batch": (I, [I, P, P, P, P, ctypes.POINTER(U32), P]),
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

    def close(self) -> None:
        if self._btf:
            lib().btf__free(self._btf)
            self._btf = None


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

    def prog_id(self) -> int:
        info = (ctypes.c_uint8 * 256)()
        n = ctypes.c_uint32(len(info))
        if lib().bpf_obj_get_info_by_fd(self.fd, info, ctypes.byref(n)):
            raise BpfError(f"prog info {self.name}", _err())
        # struct bpf_prog_info: __u32 type; __u32 id; ...
        return int.from_bytes(bytes(info[4:8]), "little")

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

    def attach_iter(self) -> Link:
        p = lib().bpf_program__attach_iter(self._ptr, None)
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

    def lookup(self, key: ctypes._CData, value: ctypes._CData) -> bool:
        return lib().bpf_map_lookup_elem(self.fd, ctypes.byref(key), ctypes.byref(value)) == 0

    def delete(self, key: ctypes._CData) -> bool:
        return lib().bpf_map_delete_elem(self.fd, ctypes.byref(key)) == 0

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

    def set_rodata(self, var: str, value: bytes) -> None:
        """Set a `const volatile` global before load, finding its offset in the object's BTF
        (the compiler, not the source order, decides where each variable lies)."""
        so = lib()
        btf = so.bpf_object__btf(self._obj)
        sec = so.btf__find_by_name_kind(btf, b".rodata", 15) if btf else -1  # BTF_KIND_DATASEC
        if sec <= 0:
            raise KeyError(f"no .rodata section in {self.path}")
        head = ctypes.cast(so.btf__type_by_id(btf, sec), ctypes.POINTER(ctypes.c_uint32))
        vlen = head[1] & 0xFFFF
        infos = ctypes.cast(ctypes.addressof(head.contents) + 12, ctypes.POINTER(ctypes.c_uint32))
        for i in range(vlen):
            vtype, off, size = infos[3 * i], infos[3 * i + 1], infos[3 * i + 2]
            name_off = ctypes.cast(so.btf__type_by_id(btf, vtype), ctypes.POINTER(ctypes.c_uint32))[0]
            if so.btf__name_by_offset(btf, name_off).decode() == var:
                if len(value) != size:
                    raise ValueError(f"{var} is {size} bytes, got {len(value)}")
                image = self.rodata().initial_value()
                image[off:off + size] = list(value)
                return
        raise KeyError(f"no variable {var} in {self.path}")

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
        btf = lib().bpf_object__btf(self._obj)
        tid = lib().btf__find_by_name_kind(btf, name.encode(), 4) if btf else -1  # BTF_KIND_STRUCT
        if tid <= 0:
            raise KeyError(f"struct {name} not in {self.path}")
        return lib().btf__resolve_size(btf, tid)

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


def iter_read(link: Link, bufsize: int = 1 << 20) -> bytes:
    """Run an iterator once and return everything it wrote."""
    fd = lib().bpf_iter_create(link.fd)
    if fd < 0:
        raise BpfError(f"create iterator {link.what}", _err())
    try:
        chunks = []
        while True:
            b = os.read(fd, bufsize)
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)
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
    package = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tcptop/
    build = os.path.join(os.path.dirname(package), "build")
    for cand in (os.environ.get("TCPTOP_BPF_DIR", ""), os.path.join(package, "bpf"), build):
        if cand and os.path.exists(os.path.join(cand, filename)):
            return os.path.join(cand, filename)
    return os.path.join(build, filename)


def cgroup2_root() -> str | None:
    """Where cgroup v2 is mounted (unified or hybrid layout), from /proc/mounts: cgroup
    programs (sock_ops, cgroup_skb) attached there see every socket on the host."""
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "cgroup2":
                    return parts[1]
    except OSError:
        pass
    return None
