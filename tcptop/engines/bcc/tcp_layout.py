"""Where this kernel keeps the few tcp_sock and skb fields the BCC engine's tcp_probe hook reads.

The BCC engine reads no kernel struct through headers that may be another kernel's (see
flows.c). Its RTT-sample hook on tcp:tcp_probe must read tcp_sock (srtt_us and mdev_us
exactly; the tracepoint gives srtt >> 3), so it is compiled only when the layout is known for
the running kernel: from its BTF (offsets passed as -D flags), else from headers that are its
own (offsetof in C: -DTCP_LAYOUT_HEADERS). Otherwise `LayoutUnknown` says why, and the hook
is not compiled.
"""

from __future__ import annotations

import ctypes
import sys

BTF_KIND_STRUCT, BTF_KIND_UNION = 4, 5

# -D name: (struct, member)
FIELDS = {
    "OFF_SRTT": ("tcp_sock", "srtt_us"),
    "OFF_MDEV": ("tcp_sock", "mdev_us"),
    "OFF_RETRANS_OUT": ("tcp_sock", "retrans_out"),
    "OFF_SKB_CB": ("sk_buff", "cb"),
    "OFF_CB_ACK_SEQ": ("tcp_skb_cb", "ack_seq"),
    "OFF_CB_FLAGS": ("tcp_skb_cb", "tcp_flags"),
    "OFF_SK_COOKIE": ("sock_common", "skc_cookie"),
}


class LayoutUnknown(Exception):
    """This kernel's tcp_sock layout is not known here (the message says why)."""


def cflags(own_headers: bool) -> tuple[list[str], str]:
    """(-D flags for flows.c/rtt.c, where the layout comes from)."""
    try:
        return _from_btf(), "this kernel's BTF"
    except LayoutUnknown as e:
        if own_headers:
            return ["-DTCP_LAYOUT_HEADERS=1"], "this kernel's own headers"
        raise LayoutUnknown(f"{e}, and the kernel headers are not this kernel's") from None


def _from_btf() -> list[str]:
    if sys.byteorder != "little":
        raise LayoutUnknown("bit fields in BTF are read here for little-endian machines only")
    from tcptop.engines.core.libbpf import BpfError, lib
    try:
        btf = lib().btf__load_vmlinux_btf()
    except BpfError as e:  # libbpf itself is missing
        raise LayoutUnknown(f"no BTF reader ({e})") from None
    if not btf:
        raise LayoutUnknown("this kernel has no BTF")
    try:
        walk = _Walk(btf)
        flags = ["-DTCP_LAYOUT=1"]
        for name, (struct, member) in FIELDS.items():
            flags.append(f"-D{name}={walk.bit_offset(struct, member) // 8}")
        bits = walk.bit_offset("tcp_sock", "rx_opt") + walk.bit_offset("tcp_options_received", "tstamp_ok")
        flags += [f"-DOFF_TSTAMP_OK_BYTE={bits // 8}", f"-DTSTAMP_OK_MASK={1 << (bits % 8)}"]
        return flags
    finally:
        lib().btf__free(btf)


class _Walk:
    """Member offsets in a BTF blob, through anonymous structs and unions."""

    def __init__(self, btf: int):
        from tcptop.engines.core.libbpf import lib
        self._lib, self._btf = lib(), btf

    def _head(self, tid: int):
        return ctypes.cast(self._lib.btf__type_by_id(self._btf, tid), ctypes.POINTER(ctypes.c_uint32))

    def bit_offset(self, struct: str, member: str) -> int:
        tid = self._lib.btf__find_by_name_kind(self._btf, struct.encode(), BTF_KIND_STRUCT)
        if tid <= 0:
            raise LayoutUnknown(f"struct {struct} is not in this kernel's BTF")
        found = self._find(tid, member)
        if found is None:
            raise LayoutUnknown(f"struct {struct} has no {member} in this kernel's BTF")
        return found

    def _find(self, tid: int, member: str) -> int | None:
        head = self._head(tid)
        vlen, kflag = head[1] & 0xFFFF, head[1] >> 31
        base = ctypes.addressof(head.contents) + 12  # struct btf_member[] follows struct btf_type
        for i in range(vlen):
            name_off, mtype, offset = ctypes.cast(base + 12 * i, ctypes.POINTER(ctypes.c_uint32))[:3]
            bits = offset & 0xFFFFFF if kflag else offset
            name = self._lib.btf__name_by_offset(self._btf, name_off).decode()
            if name == member:
                return bits
            kind = (self._head(mtype)[1] >> 24) & 0x1F
            if not name and kind in (BTF_KIND_STRUCT, BTF_KIND_UNION):
                inner = self._find(mtype, member)
                if inner is not None:
                    return bits + inner
        return None
