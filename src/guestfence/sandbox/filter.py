"""plan_filter() -> FilterPlan (pure), build_filter(plan) -> libseccomp filter, bpf_program(plan) -> its BPF.

The supervisor compiles the filter (bpf_program) and the launcher
(launcher.c) loads those bytes: no libseccomp, no interpreter runs in the
child before the filter.

The filter every sandboxed process carries (threads and children inherit
it, and filters a guest adds can only narrow it). Its BPF layout, as
libseccomp compiles it for the native architecture only:

    arch != native (i386 int 0x80, x32, arm32 compat)   KILL_PROCESS
    connect                                              NOTIFY
    sendto   with dest_addr != NULL                      NOTIFY
    sendto   with dest_addr == NULL (connected peer)     ALLOW, no round trip
    sendmsg, sendmmsg (the name is in memory BPF
                       cannot read)                      NOTIFY
    socket   domain not UNIX/INET/INET6/NETLINK/ALG      ERRNO(EAFNOSUPPORT)
    socket   INET/INET6 with SOCK_RAW or SOCK_PACKET     ERRNO(EPERM)
    socket   INET/INET6 with IPPROTO_SCTP, IPPROTO_MPTCP ERRNO(EPROTONOSUPPORT)
    io_uring_setup/enter/register                        ERRNO(EPERM)
    seccomp  SET_MODE_FILTER with NEW_LISTENER           ERRNO(EBUSY)
    setsockopt IP_OPTIONS, IPV6_RTHDR, IPV6_2292RTHDR    ERRNO(EPERM)
    setsockopt IPV6_ADDRFORM, SO_ZEROCOPY                ERRNO(ENOPROTOOPT)
    clone    CLONE_THREAD without CLONE_FILES            ERRNO(EPERM)
    unshare  with CLONE_FILES                            ERRNO(EPERM)
    clone3   (its flags are in memory BPF cannot read)   ERRNO(ENOSYS)
    everything else                                      ALLOW

Why each refusal: raw and packet sockets write whole packets to any
address; AF_PACKET, AF_XDP, AF_VSOCK, AF_RDS, AF_TIPC... reach other hosts
(or the hypervisor) without an IP socket; SCTP connects through
setsockopt(SCTP_SOCKOPT_CONNECTX), MPTCP programs fall back to TCP;
io_uring performs connect and send without these syscalls; a second
listener would receive our notifications once ours is gone (the kernel
refuses it with EBUSY only while ours is alive); source routing options
send a datagram to an address other than the one decided.
IPV6_ADDRFORM turns an INET6 socket into an INET one, so bytes decided as
"the connected peer" (AF_UNSPEC on INET6) would be read as an IPv4
address; SO_ZEROCOPY would let a send made on the guest's behalf go out by
reference to the supervisor's memory. Both get ENOPROTOOPT, what a kernel
without the option answers, so programs take their "not supported" path
(EPERM would read as a missing privilege). The clone/unshare rules keep
every thread of a process on one fd table, so the thread-group leader's fd
N is the calling thread's fd N (what the supervisor relies on where
pidfd_open lacks PIDFD_THREAD, Linux < 6.9); glibc and others fall back
from clone3 to clone on ENOSYS. Integer arguments are compared on their
low 32 bits, as the kernel reads them.
"""

from __future__ import annotations

import enum
import errno
import socket
import tempfile
from dataclasses import dataclass
from typing import final

ALLOWED_DOMAINS = frozenset({socket.AF_UNIX, socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK, 38})  # 38: AF_ALG
AF_MAX = 46
SOCK_TYPE_MASK = 0xF
SOCK_PACKET = 10
IPPROTO_MPTCP = 262
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 8
IPV6_ADDRFORM = 1
SO_ZEROCOPY = 60
CLONE_FILES = 0x400
CLONE_THREAD = 0x10000
INT_MASK = 0xFFFFFFFF
TRAPPED = ("connect", "sendto", "sendmsg", "sendmmsg")


class Op(enum.Enum):
    MASKED_EQ = "masked_eq"
    NE = "ne"
    GT = "gt"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Cond:
    arg: int
    op: Op
    value: int
    mask: int = INT_MASK


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class FilterRule:
    """``syscall`` gets ``errno`` (or goes to the supervisor when errno is None) if all ``conds`` hold."""

    syscall: str
    errno: int | None
    conds: tuple[Cond, ...] = ()


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class FilterPlan:
    rules: tuple[FilterRule, ...]


def _eq(arg: int, value: int, mask: int = INT_MASK) -> Cond:
    return Cond(arg=arg, op=Op.MASKED_EQ, value=value, mask=mask)


def plan_filter() -> FilterPlan:
    """The filter: the same for every policy, since the policy is applied in the supervisor."""
    only_with_destination = {"sendto": (Cond(arg=4, op=Op.NE, value=0, mask=0),)}
    rules = [FilterRule(syscall=name, errno=None, conds=only_with_destination.get(name, ())) for name in TRAPPED]
    rules += [
        FilterRule(syscall="socket", errno=errno.EAFNOSUPPORT, conds=(_eq(0, domain),))
        for domain in range(AF_MAX) if domain not in ALLOWED_DOMAINS
    ]
    rules.append(FilterRule(syscall="socket", errno=errno.EAFNOSUPPORT,
                            conds=(Cond(arg=0, op=Op.GT, value=AF_MAX - 1, mask=0),)))
    for domain in (socket.AF_INET, socket.AF_INET6):
        for sock_type in (socket.SOCK_RAW, SOCK_PACKET):
            rules.append(FilterRule(syscall="socket", errno=errno.EPERM,
                                    conds=(_eq(0, domain), _eq(1, sock_type, SOCK_TYPE_MASK))))
        for proto in (socket.IPPROTO_SCTP, IPPROTO_MPTCP):
            rules.append(FilterRule(syscall="socket", errno=errno.EPROTONOSUPPORT,
                                    conds=(_eq(0, domain), _eq(2, proto))))
    rules += [FilterRule(syscall=name, errno=errno.EPERM)
              for name in ("io_uring_setup", "io_uring_enter", "io_uring_register")]
    rules.append(FilterRule(syscall="seccomp", errno=errno.EBUSY, conds=(
        _eq(0, SECCOMP_SET_MODE_FILTER), _eq(1, SECCOMP_FILTER_FLAG_NEW_LISTENER, SECCOMP_FILTER_FLAG_NEW_LISTENER))))
    for level, option in ((socket.IPPROTO_IP, socket.IP_OPTIONS), (socket.IPPROTO_IPV6, 57), (socket.IPPROTO_IPV6, 5)):
        rules.append(FilterRule(syscall="setsockopt", errno=errno.EPERM, conds=(_eq(1, level), _eq(2, option))))
    for level, option in ((socket.IPPROTO_IPV6, IPV6_ADDRFORM), (socket.SOL_SOCKET, SO_ZEROCOPY)):
        rules.append(FilterRule(syscall="setsockopt", errno=errno.ENOPROTOOPT, conds=(_eq(1, level), _eq(2, option))))
    rules.append(FilterRule(syscall="clone", errno=errno.EPERM,
                            conds=(_eq(0, CLONE_THREAD, CLONE_THREAD | CLONE_FILES),)))
    rules.append(FilterRule(syscall="unshare", errno=errno.EPERM, conds=(_eq(0, CLONE_FILES, CLONE_FILES),)))
    rules.append(FilterRule(syscall="clone3", errno=errno.ENOSYS))
    return FilterPlan(rules=tuple(rules))


def build_filter(plan: FilterPlan):  # -> seccomp.SyscallFilter
    """The libseccomp filter for ``plan``, native architecture only."""
    import seccomp

    flt = seccomp.SyscallFilter(seccomp.ALLOW)
    flt.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
    ops = {Op.NE: seccomp.NE, Op.GT: seccomp.GT}
    for rule in plan.rules:
        action = seccomp.NOTIFY if rule.errno is None else seccomp.ERRNO(rule.errno)
        args = [
            seccomp.Arg(c.arg, seccomp.MASKED_EQ, c.mask, c.value) if c.op is Op.MASKED_EQ
            else seccomp.Arg(c.arg, ops[c.op], c.value)
            for c in rule.conds
        ]
        flt.add_rule(action, rule.syscall, *args)
    return flt


def bpf_program(plan: FilterPlan) -> bytes:
    """``plan`` compiled by libseccomp to the BPF program the launcher loads
    (struct sock_filter[], 8 bytes an instruction), exactly what libseccomp's
    own load() would hand the kernel."""
    with tempfile.TemporaryFile() as exported:
        build_filter(plan).export_bpf(exported)
        exported.seek(0)
        return exported.read()
