// SPDX-License-Identifier: GPL-2.0
/* failures.bpf.c as a stricter kernel build sees it: the socket reached from a file is an
 * untrusted pointer, so the verifier refuses the listeners' task_file iterator (as
 * 6.18.44-fc-v1045 does for the flow engine's). Every namespace must be walked instead. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;
#define FILE_SOCK(sock) ((struct sock *)bpf_rdonly_cast((sock)->sk, bpf_core_type_id_kernel(struct sock)))

#include "failures.bpf.c"
