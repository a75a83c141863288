"""The CO-RE engine: BPF objects compiled once against BTF, loaded through libbpf."""
