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
    UNIX, NETLINK, others                     not a network destination: pass

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
"""

from __future__ import annotations

import errno
import socket
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
