"""The CO-RE engine: BPF objects compiled once against BTF, loaded through libbpf."""

from tcptop.engines.core.engine import CoreEngine as Engine, preflight

__all__ = ["Engine", "preflight"]
