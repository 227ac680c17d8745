"""Three rtnetlink dumps read by hand: interfaces, default routes, addresses.

``guest add`` asks the kernel which interfaces the host needs for itself
(loopback, default-route interfaces, interfaces with host addresses) before
registering a guest. pyroute2 answers the same questions but costs 80-100 ms
to import, more than the whole command may take (bench/bench_cli.py), so
these dumps are a request and a walk over the answer's attributes on a raw
NETLINK_ROUTE socket. Everything here reads; nothing changes the system.
tests/lab/test_netinfo.py compares each answer with pyroute2's.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
from collections.abc import Iterator

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE = 18, 22, 26
IFLA_IFNAME = 3
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_OIF, RTA_MULTIPATH, RTA_TABLE = 4, 9, 15
MAIN_TABLE = 254

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBi")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTATTR = struct.Struct("=HH")  # length, type
_RTNEXTHOP = struct.Struct("=HBBi")  # length, flags, hops, ifindex
_seq = itertools.count(1)


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attributes(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    """type -> payload of the attributes in data[offset:end] (the last of a type wins)."""
    found = {}
    while offset + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            break
        found[kind & 0x3FFF] = data[offset + _RTATTR.size : offset + length]
        offset += _align(length)
    return found


def _dump(kind: int, body: bytes) -> Iterator[tuple[bytes, int, int]]:
    """Each answer message of a dump request: (buffer, offset of its body, end). Raises OSError."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as sock:
        seq = next(_seq)
        sock.send(_HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
        while True:
            data = sock.recv(1 << 16)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, msg_type, _flags, msg_seq, _pid = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    raise OSError("malformed netlink answer")
                if msg_seq == seq:
                    if msg_type == NLMSG_DONE:
                        return
                    if msg_type == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, offset + _HEADER.size)[0]
                        raise OSError(code, os.strerror(code))
                    yield data, offset + _HEADER.size, offset + length
                offset += _align(length)


def link_names() -> dict[int, str]:
    """ifindex -> name of every interface of this network namespace."""
    names = {}
    for data, body, end in _dump(RTM_GETLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
        index = _IFINFOMSG.unpack_from(data, body)[2]
        name = _attributes(data, body + _IFINFOMSG.size, end).get(IFLA_IFNAME)
        if name is not None:
            names[index] = name.split(b"\0", 1)[0].decode()
    return names


def default_route_interfaces(family: int) -> set[int]:
    """ifindexes a default route of the main table leaves through (every hop of a multipath route)."""
    found = set()
    for data, body, end in _dump(RTM_GETROUTE, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)):
        route_family, dst_len, _src, _tos, table = _RTMSG.unpack_from(data, body)[:5]
        attrs = _attributes(data, body + _RTMSG.size, end)
        if RTA_TABLE in attrs:
            table = struct.unpack("=I", attrs[RTA_TABLE])[0]
        if route_family != family or dst_len != 0 or table != MAIN_TABLE:
            continue
        if RTA_OIF in attrs:
            found.add(struct.unpack("=i", attrs[RTA_OIF])[0])
        hops = attrs.get(RTA_MULTIPATH, b"")
        offset = 0
        while offset + _RTNEXTHOP.size <= len(hops):
            length, _flags, _hops, ifindex = _RTNEXTHOP.unpack_from(hops, offset)
            if length < _RTNEXTHOP.size:
                break
            found.add(ifindex)
            offset += _align(length)
    return found


def addresses_of(index: int) -> list[bytes]:
    """The packed addresses configured on interface ``index`` (IFA_LOCAL, else IFA_ADDRESS:
    on a point-to-point link IFA_ADDRESS is the peer's)."""
    found = []
    for data, body, end in _dump(RTM_GETADDR, _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
        if _IFADDRMSG.unpack_from(data, body)[4] != index:
            continue
        attrs = _attributes(data, body + _IFADDRMSG.size, end)
        packed = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
        if packed is not None:
            found.append(packed)
    return found
