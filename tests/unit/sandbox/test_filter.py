"""The filter plan: what traps, what is refused, and that libseccomp accepts it."""

from __future__ import annotations

import errno
import struct

from guestfence.sandbox.filter import TRAPPED, Op, bpf_program, plan_filter


def test_plan_traps_exactly_the_destination_calls() -> None:
    trapped = {r.syscall for r in plan_filter().rules if r.errno is None}
    assert trapped == set(TRAPPED)


def test_sendto_without_destination_needs_no_round_trip() -> None:
    (rule,) = [r for r in plan_filter().rules if r.syscall == "sendto"]
    assert [(c.arg, c.op, c.value) for c in rule.conds] == [(4, Op.NE, 0)]


def test_refusals() -> None:
    refused = {(r.syscall, r.errno) for r in plan_filter().rules if r.errno is not None}
    assert {("io_uring_setup", errno.EPERM), ("socket", errno.EAFNOSUPPORT), ("socket", errno.EPERM),
            ("seccomp", errno.EBUSY), ("setsockopt", errno.EPERM), ("setsockopt", errno.ENOPROTOOPT),
            ("clone", errno.EPERM), ("unshare", errno.EPERM), ("clone3", errno.ENOSYS)} <= refused


def test_plan_compiles_to_a_bpf_program_that_checks_the_architecture_first() -> None:
    program = bpf_program(plan_filter())
    assert len(program) % 8 == 0 and 0 < len(program) // 8 <= 4096
    code, _jt, _jf, k = struct.unpack_from("=HBBI", program, 0)
    assert (code, k) == (0x20, 4)  # BPF_LD|BPF_W|BPF_ABS of seccomp_data.arch
