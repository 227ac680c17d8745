"""Decisions: precedence, protocol isolation, wildcards, ranges, CIDR edges, mapped addresses."""

from __future__ import annotations

import ipaddress

import pytest

from guestfence.policy.decide import decide
from guestfence.policy.grammar import parse_destination
from guestfence.policy.model import parse_policy
from guestfence.policy.model import Action, AddressType, Context, local_types

GATEWAY = ipaddress.ip_address("192.0.2.1")
HOST_ADDRESSES = {ipaddress.ip_address(a) for a in ("192.0.2.1", "198.51.100.7", "127.0.0.1", "::1")}
CONTEXT = Context(
    gateways=frozenset({GATEWAY}),
    address_type=local_types(HOST_ADDRESSES),
    names={"api.example.com": frozenset({ipaddress.ip_address("203.0.113.80")})},
)

POLICY = parse_policy(
    allow=[
        "tcp://@gateway:8080",
        "udp://192.0.2.53:53",
        "icmp://*",
        "tcp://10.0.0.0/8:1000-2000",
        "tcp://[2001:db8::]/32:443",
        "api.example.com:443",
        "tcp://192.0.2.1:22",
    ],
    deny=["tcp://192.0.2.0/24:22", "tcp://10.9.0.0/16:*"],
)

CASES = [
    # (destination, verdict, deciding rule or None for the default)
    ("tcp://192.0.2.1:8080", "allow", "tcp://@gateway:8080"),
    ("tcp://192.0.2.1:22", "deny", "tcp://192.0.2.0/24:22"),  # deny beats allow
    ("tcp://192.0.2.1:8081", "deny", None),
    ("udp://192.0.2.1:8080", "deny", None),  # a TCP rule never authorises UDP
    ("udp://192.0.2.53:53", "allow", "udp://192.0.2.53:53"),
    ("tcp://192.0.2.53:53", "deny", None),  # a UDP rule never authorises TCP
    ("icmp://198.18.0.1", "allow", "icmp://*"),
    ("tcp://10.0.0.1:999", "deny", None),  # range lower edge
    ("tcp://10.0.0.1:1000", "allow", "tcp://10.0.0.0/8:1000-2000"),
    ("tcp://10.255.255.255:2000", "allow", "tcp://10.0.0.0/8:1000-2000"),  # CIDR and range upper edges
    ("tcp://11.0.0.0:1500", "deny", None),  # just outside the CIDR
    ("tcp://9.255.255.255:1500", "deny", None),
    ("tcp://10.9.1.1:1500", "deny", "tcp://10.9.0.0/16:*"),
    ("tcp://[2001:db8:ffff::1]:443", "allow", "tcp://[2001:db8::]/32:443"),
    ("tcp://[2001:db9::1]:443", "deny", None),
    ("tcp://203.0.113.80:443", "allow", "tcp://api.example.com:443"),
    ("tcp://203.0.113.81:443", "deny", None),
    ("tcp://[::ffff:192.0.2.1]:22", "deny", "tcp://192.0.2.0/24:22"),  # mapped = IPv4
    ("tcp://[::ffff:192.0.2.1]:8080", "allow", "tcp://@gateway:8080"),
    ("tcp://[::ffff:10.9.1.1]:1500", "deny", "tcp://10.9.0.0/16:*"),
]


@pytest.mark.parametrize(("dest", "verdict", "rule"), CASES)
def test_decides_by_precedence_and_protocol(dest: str, verdict: str, rule: str | None) -> None:
    decision = decide(POLICY, parse_destination(dest), CONTEXT)
    assert decision.action.value == verdict
    assert (None if decision.rule is None else str(decision.rule)) == rule


def test_default_allow_with_host_deny() -> None:
    policy = parse_policy(default="allow", deny=["tcp://@host:*", "udp://@host:*"])
    assert decide(policy, parse_destination("tcp://198.51.100.7:22"), CONTEXT).action is Action.DENY
    assert decide(policy, parse_destination("udp://[::1]:53"), CONTEXT).action is Action.DENY
    assert decide(policy, parse_destination("tcp://[::ffff:127.0.0.1]:5432"), CONTEXT).action is Action.DENY
    outside = decide(policy, parse_destination("tcp://203.0.113.5:443"), CONTEXT)
    assert outside.action is Action.ALLOW and outside.rule is None
    assert outside.decided_by == "default allow"


def test_rule_order_never_matters() -> None:
    rules = ["tcp://*:80", "tcp://192.0.2.1:80", "udp://*:53"]
    forward = parse_policy(allow=rules, deny=["tcp://192.0.2.0/24:80"])
    backward = parse_policy(allow=rules[::-1], deny=["tcp://192.0.2.0/24:80"])
    assert forward == backward
    assert decide(forward, parse_destination("tcp://192.0.2.1:80")).action is Action.DENY


def test_unknown_symbols_and_names_are_decided_closed() -> None:
    empty = Context()
    allow_only = parse_policy(allow=["tcp://@gateway:80", "tcp://@host:80", "tcp://api.example.com:80"])
    assert decide(allow_only, parse_destination("tcp://192.0.2.1:80"), empty).action is Action.DENY
    deny_host = parse_policy(default="allow", deny=["tcp://@host:*"])
    assert decide(deny_host, parse_destination("tcp://203.0.113.1:80"), empty).action is Action.DENY
    deny_name = parse_policy(default="allow", deny=["tcp://evil.example:*"])
    assert decide(deny_name, parse_destination("tcp://203.0.113.1:80"), empty).action is Action.DENY


def test_host_is_decided_when_asked_so_new_addresses_count() -> None:
    local = set()
    context = Context(address_type=local_types(local))
    policy = parse_policy(default="allow", deny=["tcp://@host:*"])
    flow = parse_destination("tcp://203.0.113.50:22")
    assert decide(policy, flow, context).action is Action.ALLOW
    local.add(ipaddress.ip_address("203.0.113.50"))
    assert decide(policy, flow, context).action is Action.DENY


def test_ipv6_rule_does_not_match_ipv4_flow() -> None:
    policy = parse_policy(allow=["tcp://[::]/0:*"])
    assert decide(policy, parse_destination("tcp://192.0.2.1:80")).action is Action.DENY
    assert decide(policy, parse_destination("tcp://[::ffff:192.0.2.1]:80")).action is Action.DENY
    assert decide(policy, parse_destination("tcp://[2001:db8::1]:80")).action is Action.ALLOW


def test_deny_bare_host_covers_every_protocol() -> None:
    policy = parse_policy(default="allow", deny=["@host"])
    for dest in ("tcp://198.51.100.7:22", "udp://198.51.100.7:53", "icmp://198.51.100.7"):
        assert decide(policy, parse_destination(dest), CONTEXT).action is Action.DENY
    assert decide(policy, parse_destination("udp://203.0.113.1:53"), CONTEXT).action is Action.ALLOW


KERNEL_TYPES = {
    "192.0.2.1": AddressType.LOCAL,
    "192.0.2.255": AddressType.BROADCAST,
    "2001:db8:1::": AddressType.ANYCAST,
    "ff02::fb": AddressType.MULTICAST,
}
KERNEL = Context(address_type=lambda a: KERNEL_TYPES.get(str(a), AddressType.UNICAST))


@pytest.mark.parametrize("dest", [
    "udp://192.0.2.1:53", "udp://192.0.2.255:53", "udp://255.255.255.255:67", "udp://224.0.0.251:5353",
    "udp://239.255.255.250:1900", "udp://[ff02::fb]:5353", "udp://[ff02::c]:1900", "icmp://[ff02::1]",
    "tcp://[2001:db8:1::]:22", "tcp://127.0.0.1:22", "tcp://127.9.9.9:22", "udp://127.255.255.255:53",
    "tcp://[::1]:22", "tcp://0.0.0.0:22", "tcp://[::]:22", "tcp://[::ffff:0.0.0.0]:22",
    "tcp://[::ffff:127.0.0.1]:22", "udp://[::ffff:255.255.255.255]:67", "udp://[::ffff:224.0.0.251]:5353",
])  # fmt: skip
def test_host_is_every_address_the_host_receives_on(dest: str) -> None:
    policy = parse_policy(default="allow", deny=["@host"])
    assert decide(policy, parse_destination(dest), KERNEL).action is Action.DENY
    assert decide(policy, parse_destination(dest), Context()).action is Action.DENY  # closed when unknown


@pytest.mark.parametrize("dest", ["tcp://198.51.100.1:22", "udp://[2001:db8:2::5]:53", "tcp://192.0.2.0:22"])
def test_host_leaves_out_what_the_host_routes_elsewhere(dest: str) -> None:
    policy = parse_policy(default="allow", deny=["@host"])
    assert decide(policy, parse_destination(dest), KERNEL).action is Action.ALLOW


@pytest.mark.parametrize(("dest", "rule"), [
    ("tcp://0.0.0.0:22", "tcp://127.0.0.0/8:*"), ("tcp://[::ffff:0.0.0.0]:22", "tcp://127.0.0.0/8:*"),
    ("tcp://[::]:22", "tcp://[::1]:*"), ("udp://[::ffff:127.0.0.53]:53", "udp://127.0.0.0/8:*"),
])  # fmt: skip
def test_loopback_rules_catch_what_the_kernel_delivers_to_loopback(dest: str, rule: str) -> None:
    policy = parse_policy(default="allow", deny=[rule])
    decision = decide(policy, parse_destination(dest), Context())
    assert decision.action is Action.DENY and str(decision.rule) == rule


def test_another_guest_is_reached_only_through_a_rule_naming_its_address() -> None:
    other = Context(guests=frozenset({ipaddress.ip_address("192.0.2.10")}))
    flow = parse_destination("tcp://192.0.2.10:22")
    decision = decide(parse_policy(default="allow"), flow, other)
    assert decision.action is Action.DENY and decision.decided_by == "deny (another guest)"
    assert decide(parse_policy(allow=["tcp://*:*"]), flow, other).action is Action.DENY
    assert decide(parse_policy(allow=["tcp://192.0.2.8/30:22"]), flow, other).action is Action.ALLOW
    assert decide(parse_policy(default="allow"), parse_destination("tcp://192.0.2.14:22"), other).action is Action.ALLOW
