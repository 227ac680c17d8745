"""Guest memory -> owned values, read once, bounded before allocating.

Phase 1 of 3 (materialize -> verdict -> on-behalf). Once a value leaves
this module, time-of-check/time-of-use is over: the verdict is made on
these bytes and ``onbehalf`` sends exactly these bytes, so a guest thread
rewriting its buffers mid-call changes nothing.

Every size is capped before anything is allocated, with the errno the
kernel itself gives for the same oversized argument:

    sockaddr length  < 0 or > 128 (sockaddr_storage)   EINVAL
    iovec count      > 1024 (UIO_MAXIOV)               EMSGSIZE
    control length   > 64 KiB (above optmem_max)       ENOBUFS
    sendmmsg vlen    > 1024                            clamped, as the kernel does
    payload          > 256 KiB                         stream: a short send;
                                                       datagram: EMSGSIZE

Unreadable guest memory is EFAULT. ``parse_*`` functions take bytes and are
pure; ``read_*`` functions take a ``Reader`` (the only way to guest memory).

How the kernel reads a destination (and so how we must, to decide what it
will use): an INET socket takes AF_INET, and for sends also AF_UNSPEC, as
IPv4; an INET6 socket takes AF_INET6 as IPv6 and AF_INET as IPv4 (dual
stack), and AF_UNSPEC as "no address". ``connect`` with AF_UNSPEC
disconnects. Any other family, or a length shorter than the family's
sockaddr, is rejected by the kernel itself (EAFNOSUPPORT, EINVAL) from our
copy, so it carries no destination to decide.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import final

from guestfence.policy.model import Address

Reader = Callable[[int, int], bytes]
"""``read(address, length) -> bytes``; raises OSError(EFAULT) on unmapped memory."""
ManyReader = Callable[[Sequence[tuple[int, int]]], list[bytes]]
"""``read_many([(address, length), ...]) -> [bytes, ...]`` in one go; OSError if any fails."""

MAX_SOCKADDR = 128
MAX_IOV = 1024
MAX_CONTROL = 64 * 1024
MAX_MMSG = 1024
MAX_PAYLOAD = 256 * 1024

MSGHDR = struct.Struct("=QI4xQQQQi4x")  # name, namelen, iov, iovlen, control, controllen, flags
MMSGHDR_SIZE = MSGHDR.size + 8  # struct msghdr + unsigned msg_len + padding
IOVEC = struct.Struct("=QQ")
CMSGHDR = struct.Struct("=QiI")  # cmsg_len (size_t), cmsg_level, cmsg_type
_SOCKADDR_IN = struct.Struct("!2xH4s8x")
_SOCKADDR_IN6 = struct.Struct("!2xHI16s")

# Control messages that reroute a datagram to an address other than its
# destination: IPv4 source routing options and IPv6 routing headers.
REROUTING_CMSGS = frozenset({
    (socket.IPPROTO_IP, 7),  # IP_RETOPTS
    (socket.IPPROTO_IPV6, 57),  # IPV6_RTHDR
    (socket.IPPROTO_IPV6, 5),  # IPV6_2292RTHDR
})


class GuestFault(Exception):
    """The guest's arguments are wrong; answer the call with ``errno``."""

    def __init__(self, err: int) -> None:
        super().__init__(errno.errorcode.get(err, str(err)))
        self.errno = err


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Destination:
    address: Address
    port: int


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One sendmsg: the sockaddr bytes (None when msg_name is NULL), payload, control bytes."""

    name: bytes | None
    payload: bytes
    control: bytes


def parse_sockaddr(raw: bytes, *, domain: int, is_connect: bool) -> Destination | None:
    """What the kernel will take as the destination of ``raw`` on a ``domain``
    socket; None when it takes none (it uses the connected peer, or refuses)."""
    if len(raw) < 2:
        return None
    family = int.from_bytes(raw[:2], "little")
    if family == socket.AF_UNSPEC and domain == socket.AF_INET and not is_connect:
        family = socket.AF_INET
    if family == socket.AF_INET and len(raw) >= 16 and domain in (socket.AF_INET, socket.AF_INET6):
        port, packed = _SOCKADDR_IN.unpack_from(raw)
        return Destination(address=ipaddress.IPv4Address(packed), port=port)
    if family == socket.AF_INET6 and len(raw) >= 24 and domain == socket.AF_INET6:
        port, _flowinfo, packed = _SOCKADDR_IN6.unpack_from(raw)
        return Destination(address=ipaddress.IPv6Address(packed), port=port)
    return None


def sockaddr_length(value: int) -> int:
    """The guest's ``int addrlen`` argument, checked as move_addr_to_kernel does."""
    length = as_int32(value)
    if not 0 <= length <= MAX_SOCKADDR:
        raise GuestFault(errno.EINVAL)
    return length


def read_sockaddr(read: Reader, address: int, length_arg: int) -> bytes:
    return read_bytes(read, address, sockaddr_length(length_arg))


def payload_length(length: int, *, stream: bool) -> int:
    """How much of a send to copy; a stream send above MAX_PAYLOAD becomes a short send."""
    if length > MAX_PAYLOAD:
        if not stream:
            raise GuestFault(errno.EMSGSIZE)
        return MAX_PAYLOAD
    return length


def read_message(read: Reader, raw_header: bytes, *, stream: bool) -> Message:
    """One ``struct msghdr`` (already copied) and everything it points to."""
    name_ptr, name_len, iov_ptr, iov_len, control_ptr, control_len, _flags = MSGHDR.unpack(raw_header)
    name = None
    if name_ptr and name_len:
        name = read_sockaddr(read, name_ptr, name_len)
    if iov_len > MAX_IOV:
        raise GuestFault(errno.EMSGSIZE)
    payload = read_iovecs(read, read_bytes(read, iov_ptr, iov_len * IOVEC.size), stream=stream)
    if control_len > MAX_CONTROL:
        raise GuestFault(errno.ENOBUFS)
    control = read_bytes(read, control_ptr, control_len) if control_len else b""
    check_control(control)
    return Message(name=name, payload=payload, control=control)


def read_iovecs(read: Reader, raw_iovecs: bytes, *, stream: bool) -> bytes:
    parts: list[bytes] = []
    total = 0
    for base, length in IOVEC.iter_unpack(raw_iovecs):
        if length > 0x7FFFFFFFFFFFFFFF:
            raise GuestFault(errno.EINVAL)
        room = MAX_PAYLOAD - total
        if length > room and not stream:
            raise GuestFault(errno.EMSGSIZE)
        length = min(length, room)
        if length:
            parts.append(read_bytes(read, base, length))
            total += length
    return b"".join(parts)


def check_control(control: bytes) -> None:
    """Refuse control messages that would send the datagram somewhere else."""
    offset = 0
    while offset + CMSGHDR.size <= len(control):
        length, level, kind = CMSGHDR.unpack_from(control, offset)
        if length < CMSGHDR.size:
            return  # the kernel rejects it (EINVAL) when it parses our copy
        if (level, kind) in REROUTING_CMSGS:
            raise GuestFault(errno.EPERM)
        offset += (length + 7) & ~7


def read_messages(read: Reader, read_many: ManyReader, headers: Sequence[bytes], *,
                  stream: bool) -> tuple[list[Message], GuestFault | None]:
    """Every sendmmsg entry, in two batched reads; on a fault, the entries
    before the faulting one and the fault, found by reading one at a time
    (the kernel, too, sends up to the first bad entry)."""
    try:
        return _read_messages_batched(read_many, headers, stream=stream), None
    except GuestFault:
        pass
    messages: list[Message] = []
    for header in headers:
        try:
            messages.append(read_message(read, header, stream=stream))
        except GuestFault as fault:
            return messages, fault
    return messages, None


def _read_messages_batched(read_many: ManyReader, headers: Sequence[bytes], *, stream: bool) -> list[Message]:
    pieces: list[tuple[int, int]] = []
    for header in headers:
        name_ptr, name_len, iov_ptr, iov_len, control_ptr, control_len, _flags = MSGHDR.unpack(header)
        if iov_len > MAX_IOV:
            raise GuestFault(errno.EMSGSIZE)
        if control_len > MAX_CONTROL:
            raise GuestFault(errno.ENOBUFS)
        has_name = name_ptr and name_len
        pieces += [(name_ptr, sockaddr_length(name_len) if has_name else 0), (iov_ptr, iov_len * IOVEC.size),
                   (control_ptr, control_len)]
    firsts = _many(read_many, pieces)
    payload_pieces: list[list[tuple[int, int]]] = []
    for i in range(len(headers)):
        wanted, total = [], 0
        for base, length in IOVEC.iter_unpack(firsts[3 * i + 1]):
            room = MAX_PAYLOAD - total
            if length > room and not stream:
                raise GuestFault(errno.EMSGSIZE)
            length = min(length, room)
            wanted.append((base, length))
            total += length
        payload_pieces.append(wanted)
    payloads = _many(read_many, [piece for wanted in payload_pieces for piece in wanted])
    messages, offset = [], 0
    for i, wanted in enumerate(payload_pieces):
        control = firsts[3 * i + 2]
        check_control(control)
        messages.append(Message(name=firsts[3 * i] or None, payload=b"".join(payloads[offset:offset + len(wanted)]),
                                control=control))
        offset += len(wanted)
    return messages


def _many(read_many: ManyReader, pieces: Sequence[tuple[int, int]]) -> list[bytes]:
    try:
        return read_many(pieces)
    except OSError as exc:
        raise GuestFault(exc.errno or errno.EFAULT) from None


def mmsg_headers(raw: bytes) -> Sequence[bytes]:
    """The msghdr part of each ``struct mmsghdr`` in ``raw``."""
    return [raw[i:i + MSGHDR.size] for i in range(0, len(raw), MMSGHDR_SIZE)]


def read_bytes(read: Reader, address: int, length: int) -> bytes:
    """Exactly ``length`` bytes, or GuestFault with the read's errno (EFAULT)."""
    try:
        return read(address, length)
    except OSError as exc:
        raise GuestFault(exc.errno or errno.EFAULT) from None


def as_int32(value: int) -> int:
    """A syscall argument register as the C ``int`` the kernel reads from it."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value
