// SPDX-License-Identifier: GPL-2.0
/* failures.bpf.c as a kernel build sees it where the socket reached from a file is an
 * untrusted pointer (6.18.44-fc-v1045): the listeners' task_file program reads it through
 * one, and must load and name every listener's owner all the same. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;
#define FILE_SOCK(sock) ((struct sock *)bpf_rdonly_cast((sock)->sk, bpf_core_type_id_kernel(struct sock)))

#include "failures.bpf.c"
