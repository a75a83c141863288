// SPDX-License-Identifier: GPL-2.0
/* flows.bpf.c on a kernel whose verifier refuses the lookup program (here: it calls
 * bpf_override_return, which only kprobe programs may): every poll must walk the whole
 * table instead, and stay exact. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define LOOKUP_EXTRA_CHECK(w) (bpf_override_return((void *)(w), 0) != 0)

#include "flows.bpf.c"
