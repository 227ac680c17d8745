"""``@host`` at decision time: one RTM_GETROUTE on a raw netlink socket.

``ip route get ADDR`` gives the route type the kernel would use right now:
``local`` for the host's unicast addresses on any interface (loopback
included), ``broadcast`` for the broadcast addresses of its links (the
subnet broadcast, 127.255.255.255, directed broadcasts of any host link),
``anycast`` for the IPv6 subnet-router anycast of its links, ``multicast``.
An address added a moment ago is the host's from its first decision, and
no list is kept. ``address_type`` maps the type to ``AddressType``; the
forms the kernel answers with "unreachable" although the host receives
them (IPv4 multicast without a route, 255.255.255.255) are the policy
core's to know (``received_by_form``), as is the unspecified address.

Why not pyroute2: it opens a
socket, builds a message object tree and parses every attribute of the
answer, about 400 us per question. The supervisor asks on every decision
that meets an ``@host`` rule, inside the guest's connect, so this module
sends the 36-byte request itself on a socket kept per handler thread and
reads only the one byte it needs (rtm_type), in about 10 us.

The answer is the supervisor's network namespace's: the guest's sockets
live there too unless the guest made its own namespace, where nothing of
the host's is reachable.
"""

from __future__ import annotations

import itertools
import socket
import struct
import threading

from guestfence.policy.model import Address, AddressType

RTM_NEWROUTE = 24
RTM_GETROUTE = 26
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
RTA_DST = 1
ROUTE_TYPES = {
    1: AddressType.UNICAST,
    2: AddressType.LOCAL,
    3: AddressType.BROADCAST,
    4: AddressType.ANYCAST,
    5: AddressType.MULTICAST,
}
"""rtm_type (RTN_*) -> AddressType; every other type (blackhole, unreachable, ...) is UNROUTABLE."""
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTATTR = struct.Struct("=HH")
_RTM_TYPE_OFFSET = _HEADER.size + 7


class _Local(threading.local):
    sock: socket.socket | None = None


_local = _Local()
_seq = itertools.count(1)


def address_type(address: Address) -> AddressType:
    """How the kernel routes ``address`` now. Unroutable is nothing of the host's."""
    sock = _local.sock
    if sock is None:
        sock = _local.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                           socket.NETLINK_ROUTE)
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    packed = address.packed
    seq = next(_seq)
    attr = _RTATTR.pack(_RTATTR.size + len(packed), RTA_DST) + packed
    body = _RTMSG.pack(family, len(packed) * 8, 0, 0, 0, 0, 0, 0, 0) + attr
    sock.send(_HEADER.pack(_HEADER.size + len(body), RTM_GETROUTE, NLM_F_REQUEST, seq, 0) + body)
    while True:
        reply = sock.recv(8192)
        _length, kind, _flags, reply_seq, _pid = _HEADER.unpack_from(reply)
        if reply_seq != seq:
            continue  # a late answer to a question a previous, interrupted call asked
        if kind == RTM_NEWROUTE:
            return ROUTE_TYPES.get(reply[_RTM_TYPE_OFFSET], AddressType.UNROUTABLE)
        return AddressType.UNROUTABLE  # NLMSG_ERROR: no route, so nothing here
