"""verdict(policy, context, socket, destination) -> Verdict. Pure: calls policy.decide, nothing else.

Phase 2 of 3 (materialize -> verdict -> on-behalf). Which protocol a
socket speaks comes from the kernel (SO_DOMAIN, SO_TYPE, SO_PROTOCOL on our
duplicate of the guest's descriptor), never from the guest's arguments:

    domain       type         protocol        decided as
    INET/INET6   SOCK_STREAM  IPPROTO_TCP     tcp
    INET/INET6   SOCK_DGRAM   IPPROTO_UDP     udp
    INET         SOCK_DGRAM   IPPROTO_ICMP    icmp (the kernel ping socket)
    INET6        SOCK_DGRAM   IPPROTO_ICMPV6  icmp (the kernel ping socket)
    INET/INET6   anything else                denied: no rule can name it
    UNIX, NETLINK, others                     not decided here: ``local`` decides
                                              them (unix:// rules, netlink to
                                              the kernel only)

One errno per outcome, answered to the guest:

    denied by a rule or the default         ECONNREFUSED (configurable:
                                            EACCES, EPERM) -- what a closed
                                            port gives, so programs fall back
                                            or fail as they do offline
    protocol no rule can name (SCTP, ...)   the same errno as any denial
    allowed                                 whatever the kernel says when the
                                            call is made on the guest's behalf
    bad arguments (materialize)             the kernel's own errno (EFAULT,
                                            EINVAL, ENOBUFS, EMSGSIZE)
    source-route control messages           EPERM

What is decided is what is executed: ``decide`` reads an unspecified
destination (0.0.0.0, ::ffff:0.0.0.0) as loopback, but the kernel sends an
IPv4 connect or send to it to the socket's *bound* address, which the guest
can change at any moment. So ``executed_name`` writes the loopback address
into the sockaddr the supervisor executes: the call goes where it was
decided to go. (IPv6 ``::`` is ::1 whatever the bind; it is rewritten too,
so the executed bytes never differ from the decided address.)
"""

from __future__ import annotations

import errno
import socket
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import final

from guestfence.policy.decide import decide
from guestfence.policy.model import Context, Flow, Policy, Proto
from guestfence.sandbox.materialize import Destination

DENY_ERRNOS = {"ECONNREFUSED": errno.ECONNREFUSED, "EACCES": errno.EACCES, "EPERM": errno.EPERM}
INET_DOMAINS = frozenset({socket.AF_INET, socket.AF_INET6})

PROTOCOLS: dict[tuple[int, int, int], Proto] = {
    (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP): Proto.TCP,
    (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP): Proto.TCP,
    (socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP): Proto.UDP,
    (socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_UDP): Proto.UDP,
    (socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP): Proto.ICMP,
    (socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6): Proto.ICMP,
}


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SocketKind:
    """What the kernel says about the guest's socket."""

    domain: int
    type: int
    protocol: int

    @property
    def proto(self) -> Proto | None:
        return PROTOCOLS.get((self.domain, self.type, self.protocol))

    @property
    def is_inet(self) -> bool:
        return self.domain in INET_DOMAINS

    @property
    def is_stream(self) -> bool:
        return self.type == socket.SOCK_STREAM


@lru_cache(maxsize=64)
def socket_kind(domain: int, sock_type: int, protocol: int) -> SocketKind:
    """The SocketKind of these values, built once per kind: a frozen
    dataclass costs more to build than the cache hit, on every call."""
    return SocketKind(domain=domain, type=sock_type, protocol=protocol)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    allowed: bool
    flow: Flow | None
    """None for a protocol no rule can name."""
    destination: str
    """``proto://host:port`` for logs, or ``protocol N host:port``."""
    decided_by: str
    """The rule or default that decided, as ``explain`` prints it."""


_UNSPECIFIED_MAPPED = bytes(10) + b"\xff\xff" + bytes(4)
_LOOPBACK_MAPPED = bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 1])
_LOOPBACK6 = bytes(15) + b"\x01"


def executed_name(name: bytes | None) -> bytes | None:
    """``name`` (a sockaddr) with an unspecified destination replaced by the
    loopback address ``decide`` reads it as; any other name unchanged."""
    if name is None or len(name) < 8:
        return name
    family = int.from_bytes(name[:2], sys.byteorder)
    if family in (socket.AF_INET, socket.AF_UNSPEC) and name[4:8] == bytes(4):
        return name[:4] + bytes([127, 0, 0, 1]) + name[8:]
    if family == socket.AF_INET6 and len(name) >= 24:
        if name[8:24] == bytes(16):
            return name[:8] + _LOOPBACK6 + name[24:]
        if name[8:24] == _UNSPECIFIED_MAPPED:
            return name[:8] + _LOOPBACK_MAPPED + name[24:]
    return name


def verdict(policy: Policy, context: Context, kind: SocketKind, destination: Destination) -> Verdict:
    proto = kind.proto
    if proto is None:
        address = destination.address
        host = str(address) if address.version == 4 else f"[{address}]"
        return Verdict(allowed=False, flow=None, destination=f"protocol {kind.protocol} {host}:{destination.port}",
                       decided_by=f"protocol {kind.protocol} is not governed by any rule")
    port = destination.port if proto.has_ports else None
    flow = Flow(proto=proto, address=destination.address, port=port)
    decision = decide(policy, flow, context)
    return Verdict(allowed=decision.allowed, flow=flow, destination=str(flow), decided_by=decision.decided_by)
