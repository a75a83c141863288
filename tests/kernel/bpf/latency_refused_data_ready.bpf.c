// SPDX-License-Identifier: GPL-2.0
/* latency.bpf.c on a kernel whose verifier refuses the sk_data_ready program (its socket
 * is taken for untrusted): the rx tcp/app stages are lost, the others must remain. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;
#define DATA_READY_SK(sk) ((const struct sock *)bpf_rdonly_cast((sk), bpf_core_type_id_kernel(struct sock)))

#include "latency.bpf.c"
