"""Guest bytes -> values: what the kernel will take as the destination, and the caps."""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct

import pytest

from guestfence.sandbox.materialize import (
    BATCH_BYTES,
    MAX_CONTROL,
    MAX_DATAGRAM,
    MAX_STREAM_SEND,
    MSGHDR,
    Destination,
    GuestFault,
    NoDestination,
    check_control,
    parse_sockaddr,
    read_message,
    read_messages,
    payload_length,
    read_sockaddr,
    sockaddr_length,
)

V4 = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 53) + bytes([192, 0, 2, 1]) + bytes(8)
V6 = struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", 443, 0) + ipaddress.IPv6Address("2001:db8::1").packed \
    + bytes(4)
UNSPEC = struct.pack("=H", socket.AF_UNSPEC) + V4[2:]
DEST_V4 = Destination(address=ipaddress.IPv4Address("192.0.2.1"), port=53)
DEST_V6 = Destination(address=ipaddress.IPv6Address("2001:db8::1"), port=443)

PEER, REFUSED = NoDestination.PEER, NoDestination.REFUSED
CASES = [
    # (raw, socket domain, is_connect, stream, destination the kernel uses)
    (V4, socket.AF_INET, True, True, DEST_V4),
    (V4, socket.AF_INET6, False, False, DEST_V4),  # dual-stack: IPv4 sockaddr on an IPv6 socket
    (V6, socket.AF_INET6, True, False, DEST_V6),
    (V6, socket.AF_INET, True, False, REFUSED),  # EAFNOSUPPORT
    (UNSPEC, socket.AF_INET, False, False, DEST_V4),  # udp_sendmsg reads AF_UNSPEC as AF_INET
    (UNSPEC, socket.AF_INET, True, False, REFUSED),  # connect(AF_UNSPEC) disconnects
    (UNSPEC, socket.AF_INET6, False, False, PEER),  # udpv6 drops the name
    (UNSPEC, socket.AF_INET6, False, True, REFUSED),  # TCP fast open: EOPNOTSUPP
    (UNSPEC, socket.AF_INET, False, True, REFUSED),
    (V4[:15], socket.AF_INET, True, True, REFUSED),  # short: the kernel says EINVAL
    (V6[:23], socket.AF_INET6, True, True, REFUSED),
    (V6[:24], socket.AF_INET6, True, True, DEST_V6),  # RFC 2133 length, no scope id
    (b"\x01", socket.AF_INET, True, False, REFUSED),
    (struct.pack("=H", socket.AF_UNIX) + b"/tmp/x\0", socket.AF_INET, True, False, REFUSED),
]


@pytest.mark.parametrize(("raw", "domain", "is_connect", "stream", "expected"), CASES)
def test_parse_sockaddr_reads_the_destination_the_kernel_uses(raw, domain, is_connect, stream, expected) -> None:
    assert parse_sockaddr(raw, domain=domain, is_connect=is_connect, stream=stream) == expected


@pytest.mark.parametrize("value", [-1, 129, 0xFFFFFFFF, 1 << 31])
def test_sockaddr_length_out_of_range_is_einval(value: int) -> None:
    with pytest.raises(GuestFault) as info:
        sockaddr_length(value)
    assert info.value.errno == errno.EINVAL


def test_sockaddr_length_reads_the_low_32_bits() -> None:
    assert sockaddr_length((1 << 32) | 16) == 16


class Memory:
    """A fake guest address space: bytes at 0x1000, everything else unmapped."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads: list[tuple[int, int]] = []

    def __call__(self, address: int, length: int) -> bytes:
        self.reads.append((address, length))
        if length == 0:
            return b""
        start = address - 0x1000
        if start < 0 or start + length > len(self.data):
            raise OSError(errno.EFAULT, "bad address")
        return self.data[start:start + length]


def test_unmapped_address_is_efault() -> None:
    with pytest.raises(GuestFault) as info:
        read_sockaddr(Memory(b""), 0x10, 16)
    assert info.value.errno == errno.EFAULT


def test_oversized_datagram_is_emsgsize_and_stream_send_is_short() -> None:
    with pytest.raises(GuestFault) as info:
        payload_length(MAX_DATAGRAM + 1, stream=False)
    assert info.value.errno == errno.EMSGSIZE
    assert payload_length(MAX_STREAM_SEND + 5, stream=True) == MAX_STREAM_SEND
    assert payload_length(100, stream=False) == 100


def _msghdr(name: int, namelen: int, iov: int, iovlen: int, control: int = 0, controllen: int = 0) -> bytes:
    return MSGHDR.pack(name, namelen, iov, iovlen, control, controllen, 0)


def test_read_message_clamps_an_overlong_name_as_the_kernel_does() -> None:
    memory = Memory(V4 + bytes(200))
    assert read_message(memory, _msghdr(0x1000, 200, 0x1000, 0), stream=False).name == (V4 + bytes(200))[:128]


def test_read_message_copies_name_iovecs_and_control_once() -> None:
    # layout at 0x1000: V4 (16) | iovecs (2 x 16) | "hello" | " world"
    iovecs = struct.pack("=QQQQ", 0x1030, 5, 0x1035, 6)
    memory = Memory(V4 + iovecs + b"hello world")
    message = read_message(memory, _msghdr(0x1000, 16, 0x1010, 2), stream=False)
    assert message.name == V4
    assert message.payload == b"hello world" and message.control == b""


@pytest.mark.parametrize(("header", "err"), [
    (_msghdr(0, 0, 0x1000, 1025), errno.EMSGSIZE),
    (_msghdr(0, 0, 0x1000, 0, 0x1000, MAX_CONTROL + 1), errno.ENOBUFS),
    (_msghdr(0x1000, 0xFFFFFFFF, 0x1000, 0), errno.EINVAL),  # msg_namelen is an int: -1
    (_msghdr(0, 0, 0x9999, 1), errno.EFAULT),
])
def test_read_message_caps_and_faults(header: bytes, err: int) -> None:
    with pytest.raises(GuestFault) as info:
        read_message(Memory(bytes(64)), header, stream=False)
    assert info.value.errno == err


@pytest.mark.parametrize(("level", "kind", "refused"), [
    (socket.IPPROTO_IP, 7, True),  # IP_RETOPTS: source route
    (socket.IPPROTO_IPV6, 57, True),  # IPV6_RTHDR
    (socket.IPPROTO_IP, socket.IP_TTL, False),
    (socket.IPPROTO_IP, 8, False),  # IP_PKTINFO
])
def test_rerouting_control_messages_are_eperm(level: int, kind: int, refused: bool) -> None:
    control = socket.CMSG_LEN(4).to_bytes(8, "little") + struct.pack("=iI", level, kind) + bytes(8)
    if refused:
        with pytest.raises(GuestFault) as info:
            check_control(control)
        assert info.value.errno == errno.EPERM
    else:
        check_control(control)


def test_read_messages_batches_and_stops_at_the_first_faulting_entry() -> None:
    memory = Memory(V4 + struct.pack("=QQ", 0x1020, 3) + b"abc")
    many_calls: list[int] = []

    def read_many(pieces):  # type: ignore[no-untyped-def]
        many_calls.append(len(pieces))
        return [memory(address, length) for address, length in pieces]

    good = _msghdr(0x1000, 16, 0x1010, 1)
    messages, fault = read_messages(memory, read_many, [good, good], stream=False)
    assert fault is None and [m.payload for m in messages] == [b"abc", b"abc"]
    assert many_calls == [6, 2]  # names+iovecs+controls, then payloads
    bad = _msghdr(0x1000, 16, 0x9000, 1)
    messages, fault = read_messages(memory, read_many, [good, bad, good], stream=False)
    assert len(messages) == 1 and fault is not None and fault.errno == errno.EFAULT


def test_read_messages_stops_a_batch_at_its_byte_budget() -> None:
    """1,024 entries naming one big buffer cost one batch of BATCH_BYTES at a time."""
    size = 60000
    memory = Memory(V4 + struct.pack("=QQ", 0x1020, size) + bytes(size))
    header = _msghdr(0x1000, 16, 0x1010, 1)
    messages, fault = read_messages(memory, lambda pieces: [memory(a, n) for a, n in pieces], [header] * 1024,
                                    stream=False)
    assert fault is None and 1 <= len(messages) <= BATCH_BYTES // size + 1
