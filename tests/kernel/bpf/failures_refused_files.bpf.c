// SPDX-License-Identifier: GPL-2.0
/* failures.bpf.c with a listeners' task_file program that hands the file's socket to a
 * helper that wants a trusted pointer, read through an untrusted one (as sock->sk is on
 * 6.18.44-fc-v1045): refused on every kernel, so the fallback (every namespace walked)
 * runs everywhere. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;
#define FILES_EXTRA_CHECK(sock) \
	(bpf_skc_to_tcp_sock(bpf_rdonly_cast((sock)->sk, bpf_core_type_id_kernel(struct sock))) == 0)

#include "failures.bpf.c"
