"""BCC plumbing for the BCC engine: find kernel headers, compile, load each program on its own, attach.

BCC compiles C at start-up against kernel headers; hosts without BTF usually have their
distribution's headers, and when those are for another kernel their struct layouts are
wrong for the running one. The engine's programs therefore read no kernel struct
through a header (see flows.c), so any headers with BCC's helper declarations do.

Every attachment is held by a file descriptor (perf events for tracepoints and kprobes,
BPF links for cgroup programs), so the kernel detaches everything when the process
ends, however it ends. BCC's own cgroup attach (BPF_PROG_ATTACH) would outlive a killed
process, and its automatic attach would fail the whole object on one refused program:
both are bypassed here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import re
import tempfile
from contextlib import contextmanager
from typing import Iterator

from tcptop.engines import EngineError

TRACEFS = "/sys/kernel/tracing"
KPROBE_PMU = "/sys/bus/event_source/devices/kprobe/type"
# BPF program types and cgroup attach types (UAPI enums bpf_prog_type, bpf_attach_type).
PROG_KPROBE, PROG_TRACEPOINT, PROG_CGROUP_SKB, PROG_SOCK_OPS, PROG_RAW_TRACEPOINT = 2, 5, 8, 13, 17
ATTACH_CGROUP_INET_INGRESS, ATTACH_CGROUP_INET_EGRESS, ATTACH_CGROUP_SOCK_OPS = 0, 1, 3

_libc = ctypes.CDLL(None, use_errno=True)
_libbpf: ctypes.CDLL | None = None


def import_bcc():
    """BCC's Python module, or one actionable line saying how to get it."""
    try:
        import bcc  # Debian's python3-bpfcc, linked into .venv by make setup
        from bcc import BPF  # noqa: F401  (an empty or stale bcc directory imports as a namespace)
    except (ImportError, OSError) as e:  # OSError: libbcc.so.0 itself is missing
        raise EngineError("BCC's Python bindings are missing (Debian: apt install python3-bpfcc, "
                          f"then make setup links them into .venv): {e}") from None
    return bcc


def headers_ok(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "include", "linux", "kconfig.h"))


def prepared_headers() -> str:
    """Where make setup puts a merged tree of the newest installed distribution headers."""
    env = os.environ.get("TCPTOP_KERNEL_HEADERS")
    if env:
        return env
    package = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(os.path.dirname(package), "build", "kernel-headers")


def kernel_source() -> tuple[str | None, str]:
    """(directory to give BCC as BCC_KERNEL_SOURCE, or None for BCC's own search; a note).

    In order: the user's BCC_KERNEL_SOURCE; this kernel's own headers (/lib/modules or
    CONFIG_IKHEADERS), which BCC finds itself; the tree make setup merged from the
    distribution's headers package, which may be for another kernel."""
    release = platform.release()
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env:
        if not headers_ok(env):
            raise EngineError(f"BCC_KERNEL_SOURCE={env} holds no kernel headers (no include/linux/kconfig.h)")
        return env, f"ok: BCC_KERNEL_SOURCE={env}"
    own = f"/lib/modules/{release}/build"
    if headers_ok(own):
        return None, f"ok: this kernel's ({own})"
    if os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return None, "ok: this kernel's (CONFIG_IKHEADERS)"
    tree = prepared_headers()
    if headers_ok(tree):
        version = _headers_version(tree)
        return tree, (f"ok: {version or tree}, not this kernel's ({release}): used only for BCC's helper "
                      "declarations; no kernel struct is read through them")
    raise EngineError(f"BCC needs kernel headers and none were found: install linux-headers-{release} "
                      "(or your distribution's kernel headers package, then make setup)")


def headers_are_this_kernels(kernel_dir: str | None) -> bool:
    """Whether the headers BCC compiles with are the running kernel's own (kernel_source()'s
    first answer), so that their struct layouts are right."""
    return kernel_dir is None or _headers_version(kernel_dir) == platform.release()


def _headers_version(tree: str) -> str:
    try:
        with open(os.path.join(tree, "include", "generated", "utsrelease.h")) as f:
            m = re.search(r'"([^"]+)"', f.read())
            return m.group(1) if m else ""
    except OSError:
        return ""


def ensure_tracefs() -> str:
    """tracefs holds the tracepoints' formats BCC compiles against and attaches by; mount it
    if it is not there (it is not at boot on our machines). Returns what was done."""
    if os.path.isdir(os.path.join(TRACEFS, "events")):
        return "ok"
    if _libc.mount(b"nodev", TRACEFS.encode(), b"tracefs", 0, None) != 0:
        e = ctypes.get_errno()
        raise EngineError(f"tracefs is not mounted and mounting it at {TRACEFS} failed ({os.strerror(e)}); "
                          f"try: mount -t tracefs nodev {TRACEFS}")
    return f"mounted by tcptop at {TRACEFS} (it was not mounted; left mounted for other tools)"


def tracepoint_fields(category: str, event: str) -> set[str] | None:
    """Field names of a tracepoint in the running kernel (None: no such tracepoint)."""
    try:
        with open(os.path.join(TRACEFS, "events", category, event, "format")) as f:
            text = f.read()
    except OSError:
        return None
    return {m.group(1) for m in re.finditer(r"field:[^;]*?\b(\w+)(?:\[\d*\])?;", text)}


def kprobes_available() -> bool:
    """Attach kprobes only through the kprobe PMU (a perf event fd the kernel frees at exit);
    BCC's fallback writes kprobe_events in tracefs, which would outlive a killed process."""
    return os.path.exists(KPROBE_PMU)


@contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Collect what C code (clang, libbcc) writes on fd 2 meanwhile, instead of the terminal."""
    lines: list[str] = []
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode(errors="replace").splitlines())


def compile_module(text: str, cflags: list[str], kernel_dir: str | None):
    """Compile with BCC, without its automatic attach (each program is loaded on its own)."""
    bcc = import_bcc()

    class Module(bcc.BPF):
        def _trace_autoload(self):  # tcptop loads and attaches each program itself
            pass

    if kernel_dir:
        os.environ["BCC_KERNEL_SOURCE"] = kernel_dir
    failure = None
    # BCC switches libbpf's messages off for the whole process (libbpf_set_print(NULL)) at each
    # compile; libbpf is shared with the CO-RE engine's binding, which reads the verifier's
    # reasons from those messages: give them back to whoever had them.
    set_print = _bpf_lib().libbpf_set_print
    previous = set_print(None)
    with captured_stderr() as err:
        try:
            return Module(text=text.encode(), cflags=cflags)
        except Exception as e:  # BCC raises plain Exception for compile errors
            failure = e
        finally:
            set_print(previous)
    errors = [ln for ln in err if "error" in ln]
    raise EngineError(f"BCC could not compile the engine's programs ({failure}): "
                      f"{errors[0].strip() if errors else (err[-1].strip() if err else 'no compiler output')}")


def why_cannot_compile() -> str | None:
    """None if BCC compiles a trivial program here, else the reason (what tests skip on: any
    failure beyond it is the engine's own and must fail, not skip)."""
    try:
        kernel_dir, _ = kernel_source()
        ensure_tracefs()
        compile_module("int probe(void *ctx) { return 0; }", [], kernel_dir).cleanup()
    except EngineError as e:
        return str(e)
    return None


class Refused(Exception):
    """The verifier refused a program; the message is its most telling log line."""


def load(module, name: str, prog_type: int):
    """Load one program of a compiled module (BCC's load_func, keeping the verifier's reason)."""
    from bcc import BPF
    from bcc.libbcc import lib

    key = name.encode()
    if key in module.funcs:
        return module.funcs[key]
    log = ctypes.create_string_buffer(1 << 20)
    with captured_stderr():
        fd = lib.bcc_func_load(module.module, prog_type, key, lib.bpf_function_start(module.module, key),
                               lib.bpf_function_size(module.module, key), lib.bpf_module_license(module.module),
                               lib.bpf_module_kern_version(module.module), 0, log, len(log), None, -1)
    if fd < 0:
        raise Refused(_verifier_reason(log.value.decode(errors="replace"), ctypes.get_errno()))
    fn = BPF.Function(module, key, fd)
    module.funcs[key] = fn
    return fn


def _verifier_reason(log: str, err: int) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if not ln.startswith(("processed ", "verification time", "stack depth", "max_states")):
            return ln
    return os.strerror(err) if err else "load failed"


def program_id(fd: int) -> int:
    """The kernel's id of a loaded program (from /proc/self/fdinfo)."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("prog_id:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Attachment:
    """One attached program, detached by closing its fd (or by the kernel at exit)."""

    def __init__(self, fd: int):
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def attach_tracepoint(fn, category: str, event: str) -> Attachment:
    from bcc.libbcc import lib
    fd = lib.bpf_attach_tracepoint(fn.fd, category.encode(), event.encode())
    if fd < 0:
        raise OSError(errno.EINVAL, f"attaching to tracepoint {category}:{event} failed")
    return Attachment(fd)


def attach_kprobe(fn, function: str) -> Attachment:
    from bcc.libbcc import lib
    if not kprobes_available():
        raise OSError(errno.ENOTSUP, "kprobes not available (no kprobe PMU: CONFIG_KPROBES off)")
    fd = lib.bpf_attach_kprobe(fn.fd, 0, f"p_tcptop_{function}".encode(), function.encode(), 0, 0)
    if fd < 0:
        raise OSError(errno.ENOENT, f"kprobe on {function} failed (not traceable: missing or inlined?)")
    return Attachment(fd)


class _TestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts (libbpf), up to the members used here."""
    _fields_ = [("sz", ctypes.c_size_t), ("data_in", ctypes.c_void_p), ("data_out", ctypes.c_void_p),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32), ("ctx_in", ctypes.c_void_p),
                ("ctx_out", ctypes.c_void_p), ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("retval", ctypes.c_uint32)]


class RawRunner:
    """Runs a raw tracepoint program on demand (BPF_PROG_TEST_RUN, kernels >= 5.10) with the
    given u64 arguments; one syscall per run, buffers set up once."""

    def __init__(self, fn, nargs: int):
        self._fd = fn.fd
        self._args = (ctypes.c_uint64 * nargs)()
        self._opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts), ctx_in=ctypes.addressof(self._args),
                                  ctx_size_in=ctypes.sizeof(self._args))
        self._run = _bpf_lib().bpf_prog_test_run_opts

    def __call__(self, *args: int) -> int:
        for i, a in enumerate(args):
            self._args[i] = a
        if self._run(self._fd, ctypes.byref(self._opts)):
            e = ctypes.get_errno()
            raise OSError(e, f"test run failed ({os.strerror(e)})")
        return self._opts.retval


def _bpf_lib() -> ctypes.CDLL:
    global _libbpf
    if _libbpf is None:
        _libbpf = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
        _libbpf.bpf_link_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
        _libbpf.bpf_link_create.restype = ctypes.c_int
        _libbpf.libbpf_set_print.argtypes = [ctypes.c_void_p]
        _libbpf.libbpf_set_print.restype = ctypes.c_void_p
        _libbpf.bpf_prog_test_run_opts.argtypes = [ctypes.c_int, ctypes.c_void_p]
        _libbpf.bpf_prog_test_run_opts.restype = ctypes.c_int
    return _libbpf


class CgroupLinks:
    """cgroup programs attached to the root of cgroup v2 through BPF links."""

    def __init__(self) -> None:
        self._root = -1

    def attach(self, fn, attach_type: int) -> Attachment:
        from tcptop.engines.core.libbpf import cgroup2_root
        if self._root < 0:
            root = cgroup2_root()
            if root is None:
                raise OSError(errno.ENOENT, "cgroup v2 is not mounted")
            self._root = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fd = _bpf_lib().bpf_link_create(fn.fd, self._root, attach_type, None)
        if fd < 0:
            e = ctypes.get_errno() or -fd
            raise OSError(e, f"cgroup attach failed ({os.strerror(e)})")
        return Attachment(fd)

    def close(self) -> None:
        if self._root >= 0:
            os.close(self._root)
            self._root = -1


def table_fd(module, name: str) -> int:
    from bcc.libbcc import lib
    return lib.bpf_table_fd(module.module, name.encode())


def table_leaf_type(module, name: str):
    """The ctypes type BCC builds for a map's values from the program's own C types."""
    import json
    from bcc import BPF
    from bcc.libbcc import lib
    return BPF._decode_table_type(json.loads(lib.bpf_table_leaf_desc(module.module, name.encode()).decode()))
