"""Guest memory -> owned values, read once, bounded before allocating.

Phase 1 of 3 (materialize -> verdict -> on-behalf). Once a value leaves
this module, time-of-check/time-of-use is over: the verdict is made on
these bytes and ``onbehalf`` sends exactly these bytes, so a guest thread
rewriting its buffers mid-call changes nothing.

Every size is capped before anything is allocated, with the errno (or
the clamping) the kernel itself applies to the same oversized argument:

    sendto addrlen   < 0 or > 128 (sockaddr_storage)   EINVAL
    msg_namelen      < 0                               EINVAL
                     > 128                             clamped to 128
    iovec count      > 1024 (UIO_MAXIOV)               EMSGSIZE
    control length   >= optmem_max (sock_kmalloc)      ENOBUFS
    sendmmsg vlen    > 1024                            clamped, as the kernel does
    payload          datagram > 65,535                 EMSGSIZE (UDP and ping
                                                       refuse more at once)
                     stream > 256 KiB                  a short send

and ``sendmmsg`` entries are read in batches of at most ``BATCH_BYTES``
(one entry at least), so memory per call is bounded by a constant however
the guest points its vector: 1,024 entries naming one 256 KiB buffer cost
what one entry does.

Unreadable guest memory is EFAULT. ``parse_*`` functions take bytes and are
pure; ``read_*`` functions take a ``Reader`` (the only way to guest memory).

How the kernel reads a destination (and so how we must, to decide what it
will use): an INET socket takes AF_INET, and for sends also AF_UNSPEC, as
IPv4; an INET6 socket takes AF_INET6 as IPv6 and AF_INET as IPv4 (dual
stack), and AF_UNSPEC as "no address" (``PEER``: the connected peer).
``connect`` with AF_UNSPEC disconnects; a TCP send takes a name only with
MSG_FASTOPEN, and refuses AF_UNSPEC there (EOPNOTSUPP). Any other family,
or a length shorter than the family's sockaddr, is rejected by the kernel
itself (EAFNOSUPPORT, EINVAL) from our copy whatever the socket's state
(``REFUSED``), so it carries no destination to decide. A socket's family
cannot change under us: the filter refuses IPV6_ADDRFORM.
"""

from __future__ import annotations

import enum
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
MAX_MMSG = 1024
MAX_DATAGRAM = 0xFFFF
MAX_STREAM_SEND = 256 * 1024
BATCH_BYTES = 256 * 1024
"""What one sendmmsg batch may copy (names, iovec arrays, control, payload),
beyond its first entry."""
MAX_CONTROL_CAP = 1024 * 1024
"""Never copy more control data than this, whatever optmem_max says."""

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


def read_optmem_max() -> int:
    """The kernel's limit on control data per send (sock_kmalloc refuses
    ``optmem_max`` bytes and more); 20 KiB, the old default, if unreadable."""
    try:
        with open("/proc/sys/net/core/optmem_max") as limit:
            return min(int(limit.read()), MAX_CONTROL_CAP)
    except (OSError, ValueError):
        return 20480


MAX_CONTROL = read_optmem_max() - 1


class NoDestination(enum.Enum):
    """A name that decides nothing: the kernel uses the connected peer, or refuses the bytes."""

    PEER = "the connected peer"
    REFUSED = "refused by the kernel"


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


def parse_sockaddr(raw: bytes, *, domain: int, is_connect: bool, stream: bool) -> Destination | NoDestination:
    """What the kernel will take as the destination of ``raw`` on a ``domain``
    socket (``stream``: TCP, where only a fast-open send takes a name)."""
    if len(raw) < 2:
        return NoDestination.REFUSED
    family = int.from_bytes(raw[:2], "little")
    if family == socket.AF_UNSPEC:
        if is_connect or stream:
            return NoDestination.REFUSED  # connect: disconnects; TCP fast open: EOPNOTSUPP
        if domain == socket.AF_INET6:
            return NoDestination.PEER
        family = socket.AF_INET
    if family == socket.AF_INET and len(raw) >= 16 and domain in (socket.AF_INET, socket.AF_INET6):
        port, packed = _SOCKADDR_IN.unpack_from(raw)
        return Destination(address=ipaddress.IPv4Address(packed), port=port)
    if family == socket.AF_INET6 and len(raw) >= 24 and domain == socket.AF_INET6:
        port, _flowinfo, packed = _SOCKADDR_IN6.unpack_from(raw)
        return Destination(address=ipaddress.IPv6Address(packed), port=port)
    return NoDestination.REFUSED


def sockaddr_length(value: int) -> int:
    """The guest's ``int addrlen`` argument, checked as move_addr_to_kernel does."""
    length = as_int32(value)
    if not 0 <= length <= MAX_SOCKADDR:
        raise GuestFault(errno.EINVAL)
    return length


def read_sockaddr(read: Reader, address: int, length_arg: int) -> bytes:
    return read_bytes(read, address, sockaddr_length(length_arg))


def payload_length(length: int, *, stream: bool) -> int:
    """How much of a send to copy: a datagram above MAX_DATAGRAM is EMSGSIZE,
    a stream send above MAX_STREAM_SEND becomes a short send."""
    if stream:
        return min(length, MAX_STREAM_SEND)
    if length > MAX_DATAGRAM:
        raise GuestFault(errno.EMSGSIZE)
    return length


def name_length(name_ptr: int, raw_length: int) -> int:
    """A msghdr's ``int msg_namelen``, as __copy_msghdr takes it: 0 without a
    name, EINVAL when negative, clamped to sockaddr_storage."""
    if not name_ptr:
        return 0
    length = as_int32(raw_length)
    if length < 0:
        raise GuestFault(errno.EINVAL)
    return min(length, MAX_SOCKADDR)


@final
@dataclass(frozen=True, slots=True)
class _Header:
    """One msghdr's pointers and checked lengths."""

    name_ptr: int
    name_len: int
    iov_ptr: int
    iov_len: int
    control_ptr: int
    control_len: int

    @property
    def fixed_bytes(self) -> int:
        """What copying it costs before its payload: name, iovec array, control."""
        return self.name_len + self.iov_len * IOVEC.size + self.control_len


def _header(raw_header: bytes) -> _Header:
    name_ptr, name_len, iov_ptr, iov_len, control_ptr, control_len, _flags = MSGHDR.unpack(raw_header)
    name_len = name_length(name_ptr, name_len)
    if iov_len > MAX_IOV:
        raise GuestFault(errno.EMSGSIZE)
    if control_len > MAX_CONTROL:
        raise GuestFault(errno.ENOBUFS)
    return _Header(name_ptr=name_ptr, name_len=name_len, iov_ptr=iov_ptr, iov_len=iov_len,
                   control_ptr=control_ptr, control_len=control_len)


def read_message(read: Reader, raw_header: bytes, *, stream: bool) -> Message:
    """One ``struct msghdr`` (already copied) and everything it points to."""
    header = _header(raw_header)
    name = read_bytes(read, header.name_ptr, header.name_len) if header.name_len else None
    pieces = _payload_pieces(read_bytes(read, header.iov_ptr, header.iov_len * IOVEC.size), stream=stream)
    payload = b"".join(read_bytes(read, base, length) for base, length in pieces if length)
    control = read_bytes(read, header.control_ptr, header.control_len) if header.control_len else b""
    check_control(control)
    return Message(name=name, payload=payload, control=control)


def _payload_pieces(raw_iovecs: bytes, *, stream: bool) -> list[tuple[int, int]]:
    """The (address, length) pieces to copy, capped as ``payload_length`` caps a send."""
    pieces: list[tuple[int, int]] = []
    total = 0
    for base, length in IOVEC.iter_unpack(raw_iovecs):
        if length > 0x7FFFFFFFFFFFFFFF:
            raise GuestFault(errno.EINVAL)
        total += length
        if not stream and total > MAX_DATAGRAM:
            raise GuestFault(errno.EMSGSIZE)
        pieces.append((base, length))
    if stream:
        capped, room = [], MAX_STREAM_SEND
        for base, length in pieces:
            capped.append((base, min(length, room)))
            room -= capped[-1][1]
        pieces = capped
    return pieces


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
    """The first sendmmsg entries of ``headers`` that fit in BATCH_BYTES (one
    at least), in two batched reads; on a fault, the entries before the
    faulting one and the fault, found by reading one at a time (the kernel,
    too, sends up to the first bad entry). Fewer messages than headers and
    no fault: the rest is for the next batch."""
    try:
        return _read_messages_batched(read_many, headers, stream=stream), None
    except GuestFault:
        pass
    messages: list[Message] = []
    spent = 0
    for raw_header in headers:
        if messages and spent > BATCH_BYTES:
            break
        try:
            message = read_message(read, raw_header, stream=stream)
        except GuestFault as fault:
            return messages, fault
        messages.append(message)
        spent += len(message.payload) + len(message.control)
    return messages, None


def _read_messages_batched(read_many: ManyReader, raw_headers: Sequence[bytes], *, stream: bool) -> list[Message]:
    headers: list[_Header] = []
    spent = 0
    for raw_header in raw_headers:
        header = _header(raw_header)
        if headers and spent + header.fixed_bytes > BATCH_BYTES:
            break
        headers.append(header)
        spent += header.fixed_bytes
    firsts = _many(read_many, [piece for h in headers for piece in
                               ((h.name_ptr, h.name_len), (h.iov_ptr, h.iov_len * IOVEC.size),
                                (h.control_ptr, h.control_len))])
    payload_pieces: list[list[tuple[int, int]]] = []
    for i in range(len(headers)):
        pieces = _payload_pieces(firsts[3 * i + 1], stream=stream)
        size = sum(length for _, length in pieces)
        if payload_pieces and spent + size > BATCH_BYTES:
            break
        payload_pieces.append(pieces)
        spent += size
    payloads = _many(read_many, [piece for pieces in payload_pieces for piece in pieces])
    messages, offset = [], 0
    for i, pieces in enumerate(payload_pieces):
        control = firsts[3 * i + 2]
        check_control(control)
        messages.append(Message(name=firsts[3 * i] if headers[i].name_len else None,
                                payload=b"".join(payloads[offset:offset + len(pieces)]), control=control))
        offset += len(pieces)
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
