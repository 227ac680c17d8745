"""verdict: the socket's own protocol picks the rules; unknown protocols are denied."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from guestfence import Policy
from guestfence.policy.model import AddressType, Context, Proto
from guestfence.sandbox.materialize import Destination
from guestfence.sandbox.verdict import SocketKind, verdict

POLICY = Policy.parse(allow=["udp://192.0.2.53:53", "tcp://192.0.2.1:443", "icmp://192.0.2.1", "tcp://[2001:db8::1]:22"])
TCP4 = SocketKind(domain=socket.AF_INET, type=socket.SOCK_STREAM, protocol=socket.IPPROTO_TCP)
UDP4 = SocketKind(domain=socket.AF_INET, type=socket.SOCK_DGRAM, protocol=socket.IPPROTO_UDP)
UDP6 = SocketKind(domain=socket.AF_INET6, type=socket.SOCK_DGRAM, protocol=socket.IPPROTO_UDP)
PING4 = SocketKind(domain=socket.AF_INET, type=socket.SOCK_DGRAM, protocol=socket.IPPROTO_ICMP)
PING6 = SocketKind(domain=socket.AF_INET6, type=socket.SOCK_DGRAM, protocol=socket.IPPROTO_ICMPV6)
RAW_ICMP = SocketKind(domain=socket.AF_INET, type=socket.SOCK_RAW, protocol=socket.IPPROTO_ICMP)
SCTP = SocketKind(domain=socket.AF_INET, type=socket.SOCK_STREAM, protocol=132)


def dest(address: str, port: int) -> Destination:
    return Destination(address=ipaddress.ip_address(address), port=port)


@pytest.mark.parametrize(("kind", "destination", "allowed", "decided_by"), [
    (UDP4, dest("192.0.2.53", 53), True, "allow udp://192.0.2.53:53"),
    (TCP4, dest("192.0.2.53", 53), False, "default deny"),  # a UDP rule never authorises TCP
    (TCP4, dest("192.0.2.1", 443), True, "allow tcp://192.0.2.1:443"),
    (UDP4, dest("192.0.2.1", 443), False, "default deny"),
    (PING4, dest("192.0.2.1", 0), True, "allow icmp://192.0.2.1"),  # the port of a ping socket is ignored
    (PING6, dest("::ffff:192.0.2.1", 7), True, "allow icmp://192.0.2.1"),
    (UDP6, dest("::ffff:192.0.2.53", 53), True, "allow udp://192.0.2.53:53"),  # mapped is IPv4
    (RAW_ICMP, dest("192.0.2.1", 0), False, "protocol 1 is not governed by any rule"),
    (SCTP, dest("192.0.2.1", 443), False, "protocol 132 is not governed by any rule"),
])
def test_verdict_by_socket_protocol(kind: SocketKind, destination: Destination, allowed: bool, decided_by: str) -> None:
    result = verdict(POLICY, Context(), kind, destination)
    assert (result.allowed, result.decided_by) == (allowed, decided_by)


def test_unknown_protocol_is_logged_with_its_number() -> None:
    assert verdict(POLICY, Context(), SCTP, dest("2001:db8::1", 22)).destination == "protocol 132 [2001:db8::1]:22"


def test_ping_flow_has_no_port() -> None:
    result = verdict(POLICY, Context(), PING4, dest("192.0.2.1", 1234))
    assert result.flow is not None and result.flow.proto is Proto.ICMP and result.flow.port is None


def test_host_symbol_asks_the_context_at_each_decision() -> None:
    local: set[str] = set()
    context = Context(address_type=lambda a: AddressType.LOCAL if str(a) in local else AddressType.UNICAST)
    policy = Policy.parse(default="allow", deny=["udp://@host:*"])
    assert verdict(policy, context, UDP4, dest("192.0.2.7", 9)).allowed
    local.add("192.0.2.7")
    assert not verdict(policy, context, UDP4, dest("192.0.2.7", 9)).allowed
