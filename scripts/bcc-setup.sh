#!/usr/bin/env bash
# What the BCC engine needs beyond the Debian packages (idempotent, quick):
# 1. BCC's Python package (python3-bpfcc) made importable from the venv, alone: a symlink
#    to that one package, so no other system package leaks into the venv.
# 2. Kernel headers in one directory BCC can be pointed at (BCC_KERNEL_SOURCE). When this
#    kernel has none of its own, the newest installed Debian headers are merged here from
#    their two halves (linux-headers-<ver>-common and linux-headers-<ver>-<flavour>); they may
#    be another kernel's, which the engine allows because it reads no struct through them.
# Usage: scripts/bcc-setup.sh VENV OUT_DIR
set -euo pipefail
venv=$1 out=$2
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ -d /usr/lib/python3/dist-packages/bcc ]; then
    ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"
else
    rm -f "$site/bcc"
    echo "setup: python3-bpfcc is not installed: the BCC engine (--engine bcc) is unavailable"
fi

rm -rf "$out"
if [ -f "/lib/modules/$(uname -r)/build/include/linux/kconfig.h" ]; then
    exit 0  # this kernel's own headers: BCC finds them itself
fi
flavour=""
for d in $(ls -d /usr/src/linux-headers-* 2>/dev/null | grep -v -- '-common$' | sort -V); do
    [ -d "${d%-*}-common/include" ] && [ -d "$d/include/generated" ] && flavour=$d
done
if [ -z "$flavour" ]; then
    echo "setup: no kernel headers found for BCC (install linux-headers-$(uname -r) or your distribution's)"
    exit 0
fi
common=${flavour%-*}-common
arch=$(uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')
mkdir -p "$out/include" "$out/arch/$arch/include"
for e in "$common"/include/*; do ln -s "$e" "$out/include/"; done
for e in "$flavour"/include/*; do ln -sfn "$e" "$out/include/"; done
for e in "$common/arch/$arch/include"/*; do ln -s "$e" "$out/arch/$arch/include/"; done
ln -s "$flavour/arch/$arch/include/generated" "$out/arch/$arch/include/generated"
echo "setup: BCC engine headers: $(basename "$flavour") merged into $out (this kernel: $(uname -r))"
