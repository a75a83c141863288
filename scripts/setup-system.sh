#!/usr/bin/env bash
# Installs the Debian packages tcptop needs that are not there yet (idempotent).
set -euo pipefail
need=(clang llvm libbpf-dev libbpf1 bpftool python3-venv python3-pip python3-dev iproute2 iptables
      iperf3 redis-server redis-tools tmux procps prometheus bpftrace)
# The BCC engine (--engine bcc): BCC's Python bindings, and kernel headers for BCC to compile
# with: this kernel's if the distribution has them, else its default ones (another kernel's
# headers do: the engine reads no kernel struct through them; scripts/bcc-setup.sh merges them).
need+=(python3-bpfcc)
if [ ! -e "/lib/modules/$(uname -r)/build" ]; then
    if apt-cache show "linux-headers-$(uname -r)" >/dev/null 2>&1; then
        need+=("linux-headers-$(uname -r)")
    else
        need+=("linux-headers-$(dpkg --print-architecture)")
    fi
fi
missing=()
for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" != 0 ]; then
        echo "setup: missing packages ${missing[*]}; run as root (or apt-get install them)" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Services from these packages must not start on install: tests start their own.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -e /sys/kernel/btf/vmlinux ] || { echo "setup: this kernel has no BTF (/sys/kernel/btf/vmlinux)" >&2; exit 1; }
