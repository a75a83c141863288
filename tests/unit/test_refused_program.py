"""Which program the verifier refused, and why, from libbpf's log of a failed load."""

from tcptop.engines.core.libbpf import refused_program

LOG = """libbpf: prog 'tcptop_files': BPF program load failed: Permission denied
libbpf: prog 'tcptop_files': -- BEGIN PROG LOAD LOG --
0: R1=ctx() R10=fp0
; int tcptop_files(struct bpf_iter__task_file *ctx) @ flows.bpf.c:358
18: (bf) r1 = r0                      ; R0=untrusted_ptr_sock() R1=untrusted_ptr_sock()
19: (85) call bpf_skc_to_tcp_sock#137
R1 type=untrusted_ptr_ expected=sock_common, sock, tcp_sock, xdp_sock, ptr_, trusted_ptr_
processed 18 insns (limit 1000000) max_states_per_insn 0 total_states 1 peak_states 1 mark_read 0
-- END PROG LOAD LOG --
libbpf: prog 'tcptop_files': failed to load: -13
libbpf: failed to load object 'flows.bpf.o'""".splitlines()


def test_names_the_refused_program_and_the_verifiers_reason():
    assert refused_program(LOG) == (
        "tcptop_files", "R1 type=untrusted_ptr_ expected=sock_common, sock, tcp_sock, xdp_sock, ptr_, trusted_ptr_")


def test_a_failure_that_is_not_a_program_names_none():
    assert refused_program(["libbpf: map 'closed': failed to create: Cannot allocate memory",
                            "libbpf: failed to load object 'flows.bpf.o'"]) is None


def test_a_refusal_without_a_log_still_names_the_program():
    assert refused_program(["libbpf: prog 'x': BPF program load failed: Invalid argument",
                            "libbpf: prog 'x': failed to load: -22"]) == ("x", "refused by the verifier")
