"""A policy rule -> nftables match expressions, for any backend's table. Pure.

Both nftables backends that enforce a policy (the guests' firewall, the
rootless stacks' output-hook rules) read a rule through ``rule_matches``,
so a rule means the same in each. The matches name two constant sets the
table must hold (``constant_sets`` builds them): ``TO_HOST_TYPES``, the
``fib daddr type`` values of ``@host`` (local, broadcast, multicast,
anycast: the kernel's own route types, read at each packet, so no address
list is copied), and ``ICMP_PROTOS``, ICMP of either family.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from guestfence.nftables import build as b
from guestfence.nftables.build import Command, Expr
from guestfence.policy.model import HOST_RECEIVED, Address, AnyHost, NameHost, NetHost, Proto, Rule, Symbol, SymbolHost

TO_HOST_TYPES = "to_host"
ICMP_PROTOS = "icmp_protos"
HOST_TYPES = tuple(sorted(t.value for t in HOST_RECEIVED))
"""``fib daddr type`` values of ``@host`` (AddressType names are the kernel's route type names)."""
_DADDR = {4: "ip", 6: "ip6"}
_ICMP_L4 = {4: "icmp", 6: "ipv6-icmp"}

Names = Mapping[str, frozenset[Address]]
"""DNS name -> the addresses it resolved to (a name missing did not resolve)."""


def constant_sets(table: b.Table, family: str) -> list[Command]:
    """The sets ``rule_matches`` names, in ``table`` (re-adding is a no-op)."""
    return [table.add_set(family, TO_HOST_TYPES, "fib_addrtype", HOST_TYPES),
            table.add_set(family, ICMP_PROTOS, "inet_proto", ("icmp", "ipv6-icmp"))]  # fmt: skip


GatewayLookup = Callable[[int], Expr]
"""IP version -> the match of ``@gateway`` as a lookup (e.g. ``iifname . ip
daddr @gateways4``), for rules shared by guests whose gateways differ."""


def rule_matches(rule: Rule, names: Names, gateways: Iterable[Address] | GatewayLookup, *, deny: bool) -> list[list[Expr]]:
    """The match expressions of one policy rule: one list per nft rule it
    becomes (one per address family where it names addresses), empty when it
    can match nothing. A name that did not resolve matches nothing in an allow, everything (of its protocol and
    ports) in a deny. ``gateways``: the addresses ``@gateway`` stands for, or
    a ``GatewayLookup`` (then ``@gateway`` becomes one rule per IP version)."""
    return [[*_proto_exprs(rule, version), *host_exprs]
            for version, host_exprs in _host_alternatives(rule, gateways, names, deny=deny)]


def _proto_exprs(rule: Rule, version: int | None) -> list[Expr]:
    l4proto = b.meta("l4proto")
    if rule.proto is Proto.ICMP:
        value = _ICMP_L4[version] if version else f"@{ICMP_PROTOS}"
        return [b.match(l4proto, value)]
    exprs = [b.match(l4proto, rule.proto.value)]
    ports = b.ports_value(rule.ports)
    if ports is not None:
        exprs.append(b.match(b.payload("th", "dport"), ports))
    return exprs


def _host_alternatives(rule: Rule, gateways: Iterable[Address] | GatewayLookup, names: Names, *,
                       deny: bool) -> list[tuple[int | None, list[Expr]]]:
    """(IP version or None for both, destination matches), one per nft rule;
    empty when the rule can match nothing."""
    host = rule.host
    if isinstance(host, AnyHost):
        return [(None, [])]
    if isinstance(host, NetHost):
        version = host.network.version
        return [(version, [b.match(b.payload(_DADDR[version], "daddr"), b.net_value(host.network))])]
    if isinstance(host, SymbolHost) and host.symbol is Symbol.HOST:
        return [(None, [b.match(b.fib_daddr_type(), f"@{TO_HOST_TYPES}")])]
    if isinstance(host, SymbolHost):
        if callable(gateways):
            return [(version, [gateways(version)]) for version in (4, 6)]
        return _address_sets(gateways)
    assert isinstance(host, NameHost)
    resolved = names.get(host.name)
    if resolved is None:
        return [(None, [])] if deny else []
    return _address_sets(resolved)


def _address_sets(addresses: Iterable[Address]) -> list[tuple[int | None, list[Expr]]]:
    alternatives: list[tuple[int | None, list[Expr]]] = []
    for version in (4, 6):
        chosen = sorted(str(a) for a in addresses if a.version == version)
        if chosen:
            alternatives.append((version, [b.match(b.payload(_DADDR[version], "daddr"), b.one_or_set(chosen))]))
    return alternatives
