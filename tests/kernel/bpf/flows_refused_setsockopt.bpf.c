// SPDX-License-Identifier: GPL-2.0
/* flows.bpf.c on a kernel whose verifier refuses bpf_setsockopt() in the TCP iterator
 * (before 6.13 it is not allowed there): the iterator must load without it. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;
#define SETSOCKOPT_SOCK(tp) ((struct tcp_sock *)bpf_rdonly_cast((tp), bpf_core_type_id_kernel(struct tcp_sock)))

#include "flows.bpf.c"
