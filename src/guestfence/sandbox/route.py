"""``@host`` at decision time: one RTM_GETROUTE on a raw netlink socket.

``ip route get ADDR`` says ``local`` exactly when the kernel would deliver
to this host, on any interface, loopback included, right now: an address
added a moment ago is local from its first decision, and no list is kept.

Why not ``guestfence.netinfo.lookup_is_local`` (pyroute2): it opens a
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

from guestfence.policy.model import Address

RTM_NEWROUTE = 24
RTM_GETROUTE = 26
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
RTA_DST = 1
RTN_LOCAL = 2
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTATTR = struct.Struct("=HH")
_RTM_TYPE_OFFSET = _HEADER.size + 7


class _Local(threading.local):
    sock: socket.socket | None = None


_local = _Local()
_seq = itertools.count(1)


def is_local(address: Address) -> bool:
    """Whether the kernel routes ``address`` to this host. Unroutable is not local."""
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
            return reply[_RTM_TYPE_OFFSET] == RTN_LOCAL
        return False  # NLMSG_ERROR: no route, so nothing here
