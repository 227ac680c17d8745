"""The rule grammar: accepted forms, normalisation, and the exact rejections."""

from __future__ import annotations

import ipaddress

import pytest

from guestfence.errors import RuleSyntaxError
from guestfence.policy.grammar import parse_destination, parse_rule, parse_rules
from guestfence.policy.model import (
    ANY_PORT,
    AnyHost,
    NameHost,
    NetHost,
    PortRange,
    Proto,
    Rule,
    Symbol,
    SymbolHost,
)


def net(text: str) -> NetHost:
    return NetHost(network=ipaddress.ip_network(text))


ACCEPTED = [
    ("192.0.2.1:22", Rule(proto=Proto.TCP, host=net("192.0.2.1/32"), ports=(PortRange(22, 22),))),
    ("tcp://192.0.2.1:22", Rule(proto=Proto.TCP, host=net("192.0.2.1/32"), ports=(PortRange(22, 22),))),
    ("udp://[2001:db8::53]:53", Rule(proto=Proto.UDP, host=net("2001:db8::53/128"), ports=(PortRange(53, 53),))),
    ("udp://[2001:db8::]/32:*", Rule(proto=Proto.UDP, host=net("2001:db8::/32"), ports=(ANY_PORT,))),
    ("tcp://10.0.0.0/8:1-1024", Rule(proto=Proto.TCP, host=net("10.0.0.0/8"), ports=(PortRange(1, 1024),))),
    ("icmp://*", Rule(proto=Proto.ICMP, host=AnyHost())),
    ("icmp://203.0.113.9", Rule(proto=Proto.ICMP, host=net("203.0.113.9/32"))),
    ("tcp://@gateway:8080", Rule(proto=Proto.TCP, host=SymbolHost(Symbol.GATEWAY), ports=(PortRange(8080, 8080),))),
    ("@host:*", Rule(proto=Proto.TCP, host=SymbolHost(Symbol.HOST), ports=(ANY_PORT,))),
    ("Api.Example.COM.:443", Rule(proto=Proto.TCP, host=NameHost("api.example.com"), ports=(PortRange(443, 443),))),
    ("localhost:80", Rule(proto=Proto.TCP, host=NameHost("localhost"), ports=(PortRange(80, 80),))),
    ("*:80,443", Rule(proto=Proto.TCP, host=AnyHost(), ports=(PortRange(80, 80), PortRange(443, 443)))),
]


@pytest.mark.parametrize(("text", "rule"), ACCEPTED)
def test_accepts_valid_forms(text: str, rule: Rule) -> None:
    assert parse_rule(text) == rule


NORMALISED = [
    ("192.0.2.1:22", "tcp://192.0.2.1:22"),
    ("tcp://*:443,80,81-90,85", "tcp://*:80-90,443"),
    ("tcp://*:1-65535", "tcp://*:1-65535"),
    ("tcp://[::ffff:127.0.0.1]:22", "tcp://127.0.0.1:22"),
    ("tcp://[::ffff:10.0.0.0]/104:22", "tcp://10.0.0.0/8:22"),
    ("tcp://[2001:DB8:0::1]:22", "tcp://[2001:db8::1]:22"),
    ("udp://192.0.2.0/32:53", "udp://192.0.2.0:53"),
    ("EXAMPLE.org.:1", "tcp://example.org:1"),
]


@pytest.mark.parametrize(("text", "canonical"), NORMALISED)
def test_normalises_to_canonical_text(text: str, canonical: str) -> None:
    assert str(parse_rule(text)) == canonical


REJECTED = [
    ("", 1, "empty rule"),
    ("http://x:80", 1, "unknown scheme 'http' (expected tcp, udp, icmp or unix)"),
    ("tcp://", 6, "missing host after the scheme (use * for any host)"),
    ("tcp://x", 7, "missing port for tcp (expected :PORT, :LO-HI, a comma list or :*)"),
    ("udp://192.0.2.1", 15, "missing port for udp"),
    ("icmp://x:1", 9, "icmp rules take no port"),
    ("tcp://x:0", 9, "port 0 is out of range (expected 1-65535)"),
    ("tcp://@gateway:0", 16, "port 0 is out of range (expected 1-65535)"),
    ("tcp://x:70000", 9, "port 70000 is out of range (expected 1-65535)"),
    ("tcp://x:99999999999999999999999", 9, "is out of range"),
    ("tcp://x:80-22", 9, "port range '80-22' runs backwards"),
    ("tcp://x:*,80", 9, "'*' cannot be combined with other ports"),
    ("tcp://x:80,,81", 11, "empty port in list"),
    ("tcp://x:http", 9, "invalid port 'http' (expected a number 1-65535)"),
    ("tcp://x:", 8, "missing port after ':'"),
    ("2001:db8::1:22", 1, "IPv6 addresses must be written in brackets"),
    ("tcp://[::1:22", 7, "missing ']' after the IPv6 address"),
    ("tcp://[::g]:22", 8, "invalid IPv6 address '::g'"),
    ("tcp://300.1.1.1:22", 7, "invalid IPv4 address '300.1.1.1'"),
    ("tcp://192.0.2.1/24:22", 7, "has host bits set (did you mean 192.0.2.0/24?)"),
    ("tcp://192.0.2.0/33:22", 17, "invalid prefix length '33' (expected 0-32)"),
    ("tcp://[2001:db8::]/129:22", 20, "invalid prefix length '129' (expected 0-128)"),
    ("tcp://@hots:22", 7, "unknown symbol '@hots' (expected @host or @gateway)"),
    ("tcp://-bad-.com:22", 7, "invalid host '-bad-.com'"),
    ("tcp://a b:22", 8, "unexpected whitespace"),
    ("tcp://x:22/", 9, "invalid port '22/'"),
]


@pytest.mark.parametrize(("text", "column", "message"), REJECTED)
def test_rejects_with_position_and_expectation(text: str, column: int, message: str) -> None:
    with pytest.raises(RuleSyntaxError) as caught:
        parse_rule(text)
    assert caught.value.column == column
    assert message in caught.value.message


def test_error_text_quotes_the_rule_and_points_at_the_token() -> None:
    with pytest.raises(RuleSyntaxError) as caught:
        parse_rule("tcp://db.internal:70000")
    located = caught.value.located(source="policy.toml", line=4, offset=10)
    assert str(located) == (
        "policy.toml:4:28: port 70000 is out of range (expected 1-65535)\n"
        "    tcp://db.internal:70000\n"
        "                      ^^^^^"
    )


def test_rejects_port_zero_for_gateway_rules() -> None:
    with pytest.raises(RuleSyntaxError, match="port 0"):
        parse_rule("tcp://@gateway:0")


DESTINATIONS = [
    ("tcp://192.0.2.1:22", Proto.TCP, "192.0.2.1", 22),
    ("192.0.2.1:443", Proto.TCP, "192.0.2.1", 443),
    ("udp://[2001:db8::1]:53", Proto.UDP, "2001:db8::1", 53),
    ("icmp://203.0.113.9", Proto.ICMP, "203.0.113.9", None),
    ("tcp://[::ffff:127.0.0.1]:22", Proto.TCP, "127.0.0.1", 22),
]


@pytest.mark.parametrize(("text", "proto", "address", "port"), DESTINATIONS)
def test_parses_destinations(text: str, proto: Proto, address: str, port: int | None) -> None:
    flow = parse_destination(text)
    assert (flow.proto, flow.address, flow.port) == (proto, ipaddress.ip_address(address), port)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tcp://example.com:80", "is not an IP address"),
        ("tcp://192.0.2.1:80,81", "a destination has one port"),
        ("tcp://192.0.2.1:*", "a destination has one port, not"),
        ("tcp://10.0.0.0/8:80", "is not an IP address"),
    ],
)
def test_rejects_destinations_that_are_not_one_address_and_port(text: str, message: str) -> None:
    with pytest.raises(RuleSyntaxError, match=message):
        parse_destination(text)


@pytest.mark.parametrize(
    ("text", "expanded"),
    [
        ("@host", ["tcp://@host:*", "udp://@host:*", "icmp://@host", "unix://*"]),
        ("*", ["tcp://*:*", "udp://*:*", "icmp://*", "unix://*"]),
        ("[2001:db8::]/32", ["tcp://[2001:db8::]/32:*", "udp://[2001:db8::]/32:*", "icmp://[2001:db8::]/32"]),
        ("192.0.2.1:22", ["tcp://192.0.2.1:22"]),
        ("udp://192.0.2.1:53", ["udp://192.0.2.1:53"]),
    ],
)
def test_bare_host_expands_to_every_protocol(text: str, expanded: list[str]) -> None:
    assert [str(r) for r in parse_rules(text)] == expanded


def test_bare_host_is_refused_where_exactly_one_rule_is_read() -> None:
    with pytest.raises(RuleSyntaxError, match="missing port for tcp"):
        parse_rule("@host")


def test_bare_host_errors_point_into_the_text_as_typed() -> None:
    with pytest.raises(RuleSyntaxError) as caught:
        parse_rules("@hots")
    assert (caught.value.column, caught.value.text) == (1, "@hots")
