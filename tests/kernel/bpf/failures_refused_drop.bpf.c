// SPDX-License-Identifier: GPL-2.0
/* failures.bpf.c on a kernel whose verifier refuses the kfree_skb program (its socket taken
 * for untrusted): drop reasons are lost, with the verifier's reason; the rest must remain. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;
#define DROP_SK(sk) ((struct sock *)bpf_rdonly_cast((sk), bpf_core_type_id_kernel(struct sock)))

#include "failures.bpf.c"
