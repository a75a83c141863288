"""tcptop: live TCP connections with the kernel's own numbers, from eBPF."""

__version__ = "0.1.0"
