"""Properties of the grammar and the decision, checked on generated input."""

from __future__ import annotations

import ipaddress
import os

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from guestfence.errors import RuleSyntaxError
from guestfence.policy.decide import decide
from guestfence.policy.grammar import parse_rule
from guestfence.policy.model import (
    ANY_PORT,
    Action,
    AnyHost,
    Flow,
    NameHost,
    NetHost,
    Policy,
    PortRange,
    Proto,
    Rule,
    Symbol,
    SymbolHost,
    merge_ports,
    unmap_network,
)

FUZZ_EXAMPLES = int(os.environ.get("GUESTFENCE_FUZZ_EXAMPLES", "3000"))

ipv4_networks = st.builds(
    lambda addr, length: ipaddress.IPv4Network((addr, length), strict=False),
    st.ip_addresses(v=4),
    st.integers(0, 32),
)
ipv6_networks = st.builds(
    lambda addr, length: unmap_network(ipaddress.IPv6Network((addr, length), strict=False)),
    st.ip_addresses(v=6),
    st.integers(0, 128),
)
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
hosts = st.one_of(
    st.just(AnyHost()),
    st.builds(NetHost, network=st.one_of(ipv4_networks, ipv6_networks)),
    st.builds(lambda parts: NameHost(".".join(parts)), st.lists(labels, min_size=1, max_size=4)).filter(
        lambda h: not all(c in "0123456789." for c in h.name)
    ),
    st.sampled_from([SymbolHost(Symbol.HOST), SymbolHost(Symbol.GATEWAY)]),
)
port_ranges = st.builds(
    lambda a, b: PortRange(min(a, b), max(a, b)), st.integers(1, 65535), st.integers(1, 65535)
)
port_lists = st.one_of(
    st.just((ANY_PORT,)),
    st.lists(port_ranges, min_size=1, max_size=5).map(lambda rs: tuple(merge_ports(rs))),
)


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    proto = draw(st.sampled_from(list(Proto)))
    ports = draw(port_lists) if proto.has_ports else ()
    return Rule(proto=proto, host=draw(hosts), ports=ports)


@given(rules())
def test_formatting_then_parsing_gives_the_same_rule(rule: Rule) -> None:
    assert parse_rule(str(rule)) == rule


@given(st.one_of(ipv4_networks, ipv6_networks), st.data())
def test_every_address_inside_a_cidr_rule_is_decided_by_it(network, data: st.DataObject) -> None:
    rule = Rule(proto=Proto.TCP, host=NetHost(network=network), ports=(ANY_PORT,))
    policy = Policy(default=Action.DENY, allow=(rule,))
    offset = data.draw(st.integers(0, network.num_addresses - 1))
    inside = network.network_address + offset
    # An IPv6 rule whose range merely contains ::ffff:0:0/96 governs only real
    # IPv6: a mapped destination is decided as the IPv4 address it maps.
    assume(inside.version == 4 or inside.ipv4_mapped is None)
    # 0.0.0.0 and :: as destinations are delivered to loopback, and decided
    # as loopback (test_decide covers that), not as the rule's range says.
    assume(not inside.is_unspecified)
    decision = decide(policy, Flow(proto=Proto.TCP, address=inside, port=80))
    assert decision.action is Action.ALLOW and decision.rule == rule
    if network.version == 4:
        mapped = ipaddress.IPv6Address(f"::ffff:{inside}")
        assert decide(policy, Flow(proto=Proto.TCP, address=mapped, port=80)).rule == rule
    if int(network.broadcast_address) < 2**network.max_prefixlen - 1:
        outside = network.broadcast_address + 1
        assert decide(policy, Flow(proto=Proto.TCP, address=outside, port=80)).action is Action.DENY


@settings(max_examples=FUZZ_EXAMPLES)
@given(st.one_of(st.text(), st.text(alphabet="tcpudim:/[]*@.,-0123456789abcdef:hostgateway ")))
def test_fuzz_random_text_raises_only_the_parsers_error(text: str) -> None:
    try:
        rule = parse_rule(text)
    except RuleSyntaxError as err:
        assert 1 <= err.column <= max(1, len(text)) + 1
        str(err)
    else:
        assert parse_rule(str(rule)) == rule
