"""Policy + guests -> libnftables JSON commands. Pure: no I/O, no DNS, no clock.

The ruleset (docs/vm-guests.md explains why it is shaped so)::

    inet guestfence
      prerouting  hook prerouting, priority dstnat - 10 (-110), policy accept
          iifname vmap @guests                    -> goto guest.NAME
          iifname . ether saddr vmap @bridged     -> goto guest.NAME   (bridge ports)
          iifname "vmtap*" goto unregistered
      input, forward  hook input / forward, priority filter (0), policy accept
          ct status dnat ct state new, then the same two dispatches: a connection
          the host translated is decided again for where it is delivered
      guest.NAME        jump screen (screen_bridged for bridge ports);
                        its MAC (routed guests given one), its ND advert targets;
                        ct established,related accept;
                        fib daddr type @to_host (local,broadcast,multicast,anycast)
                        goto guest.NAME.host; goto guest.NAME.out (or .drop when
                        the out chain would accept nothing)
      screen            shared by every guest: iifname . saddr not in @sources4/6
                        (own addresses; fe80::/64 and :: for ICMPv6 DAD/MLD aside),
                        RA, redirects, martian destinations, ct invalid: each
                        ``iifname vmap @drops`` -> guest.NAME.drop; else return
      guest.NAME.host   what the link needs (ND, MLD); deny rules; allow rules; default
      guest.NAME.out    deny rules; allow rules naming addresses; other guests' addresses drop;
                        allow rules for *; default
      guest.NAME.drop   rate-limited log prefixed with the guest's name; count; drop
      postrouting       hook postrouting (nat): ip saddr @masquerade4 masquerade (and IPv6),
                        only while a guest masquerades (a nat chain costs every packet)
    arp guestfence      input: iifname vmap @guests -> ARP anti-spoofing of routed guests
    bridge guestfence   prerouting: iifname vmap @guests -> L2 anti-spoofing of bridge ports;
                        forward: iifname vmap @ports -> guest.NAME.drop (no L2 forwarding)

Rules of the compiler:

1. The first decision is made in prerouting, after conntrack (-200) and
   before destination NAT (-100): the destination seen is the one the guest
   aimed at, so a host port forwarded elsewhere is judged as the host port
   it is. A new connection the host translated (``ct status dnat``) is
   decided a second time in input or forward, after every prerouting
   chain, for the destination it is delivered to: it passes only if the
   policy allows both (``policy.decide.decide_translated``).
2. Per packet the cost is one map lookup whatever the number of guests; a
   guest's own chains hold only what is its own (its policy, its MAC and
   ND targets); every check that is the same for all guests is written
   once, in ``screen``, with the guest's data as set and map elements
   keyed by its interface (``bridge . MAC`` for bridge ports). A guest
   costs about a dozen rules plus its policy, not ~40.
3. A rule becomes one nft rule per address family it can match; a DNS name
   becomes the addresses it resolved to (``names``); one that did not
   resolve makes an allow match nothing and a deny match every destination.
   ``@host`` is ``fib daddr type @to_host``: every address the host
   receives for itself (local, broadcast, multicast, anycast), read live.
4. Deny before allow, allow before the default, exactly as ``decide``. The
   only fixed accepts are what a link needs: ``ct established,related``
   (which holds the ICMP errors and packet-too-big of the guest's own
   connections), and neighbour discovery and MLD reports to the host
   (``LINK_ICMPV6``). ICMP echo is the policy's, like every flow.
5. Guest-to-guest: another guest's address is reached only through a rule
   that names an address (a CIDR or a DNS name); ``*`` and the default do
   not cover it, as ``decide`` says with ``Context.guests``.
6. ``compile_add``/``compile_remove`` touch only one guest's chains,
   counters and elements, plus re-creating the constant base rules (the
   nat chain among them while any guest masquerades, so they are told the
   other guests), so a change costs the same with 1 guest or 10,000. Removal is idempotent
   (each object is added, then deleted, in the same transaction).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import final

from guestfence.errors import PlanError
from guestfence.nftables import build as b
from guestfence.nftables.match import HOST_TYPES, Names, rule_matches
from guestfence.guests import names as n
from guestfence.guests.names import OURS
from guestfence.guests.antispoof import antispoof_rules, guest_antispoof_rules, screen_drop, screen_rules, source_keys
from guestfence.nftables.build import ACCEPT, Command, Expr
from guestfence.guests.guest import DEFAULT_PATTERN, Guest
from guestfence.guests.names import (
    ARP,
    BRIDGE,
    BRIDGED_DROPS_MAP,
    BRIDGED_MAP,
    BRIDGED_SOURCES,
    DROPS_MAP,
    FAMILIES,
    FORWARD,
    GUEST_ADDRS,
    GUESTS_MAP,
    INET,
    INPUT,
    MASQUERADE,
    PORTS_MAP,
    POSTROUTING,
    PREROUTING,
    SCREEN,
    SCREEN_BRIDGED,
    SOURCES,
    UNREGISTERED,
    guest_chain,
    guest_counter,
    log_prefix,
)
from guestfence.policy.model import Action, AnyHost, Rule, Symbol, SymbolHost

MARTIAN_DESTINATIONS = tuple(ipaddress.ip_network(n) for n in ("0.0.0.0/8", "127.0.0.0/8", "::/128", "::1/128", "::ffff:0:0/96"))
"""Destinations no packet arriving on a link may have: unspecified, loopback
(the kernel drops them as martians unless route_localnet is set; we drop
them whatever the sysctls say) and IPv4-mapped (on the wire no IPv4
address: the host never delivers it as one, so no rule may read it as one).
``guests.explain`` names the same list."""
PRIO_INET_PREROUTING = -110
"""After conntrack (-200), before destination NAT (-100)."""
PRIO_SRCNAT = 100
PRIO_FILTER = 0
"""input and forward: after every prerouting chain, destination NAT included."""
PRIO_BRIDGE_FILTER = -200
PRIO_ARP_FILTER = 0
LOG_RATE = (5, "second", 10)
"""Rate, unit and burst of the drop log: enough to diagnose, never a flood."""
CONSTANT_SETS: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {
    (INET, n.TO_HOST_TYPES): ("fib_addrtype", HOST_TYPES),
    (INET, n.LINK_ICMPV6): ("icmpv6_type", ("nd-neighbor-solicit", "nd-neighbor-advert", "mld-listener-report", "mld2-listener-report")),
    (INET, n.ICMP_PROTOS): ("inet_proto", ("icmp", "ipv6-icmp")),
    **{
        (family, n.UNSPECIFIED_SOURCE_ICMPV6): ("icmpv6_type", ("nd-neighbor-solicit", "mld-listener-report", "mld2-listener-report"))
        for family in (INET, BRIDGE)
    },
    **{(family, n.SPOOF_ICMPV6): ("icmpv6_type", ("nd-router-advert", "nd-redirect")) for family in (INET, BRIDGE)},
    (BRIDGE, n.ETHERTYPES): ("ether_type", ("ip", "ip6", "arp")),
}
"""(family, set name) -> (element type, elements): what the link needs, what a guest may never send."""
_DADDR = {4: "ip", 6: "ip6"}
_ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}



@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Table-wide settings. ``pattern``: interfaces of unregistered guests ('' for none).
    ``generation``: which recorded change the tables hold (kept in the set
    ``names.GENERATION``, so status and restore can tell an interrupted change).
    ``closed``: interfaces of recorded guests that could not be read back,
    dropped like unregistered ones until their record is fixed."""

    pattern: str = DEFAULT_PATTERN
    generation: int = 0
    closed: tuple[str, ...] = ()


@final
@dataclass(frozen=True, kw_only=True)
class NftPlan:
    """One transaction: ``commands`` applied whole or not at all."""

    step: str
    commands: tuple[Command, ...] = field(default=())


def check_guest(guest: Guest) -> None:
    """Refuse a guest its rules cannot work for. Raises PlanError."""
    for rule in guest.policy.rules:
        if isinstance(rule.host, SymbolHost) and rule.host.symbol is Symbol.GATEWAY:
            if not guest.gateways:
                raise PlanError(f"guest {guest.name}: rule {rule} uses @gateway but the guest has no gateway (give --gateway ADDR)")
    for gateway in guest.gateways:
        if not guest.own(gateway.version):
            raise PlanError(
                f"guest {guest.name}: gateway {gateway} is IPv{gateway.version} but the guest has no IPv{gateway.version} address"
            )


def check_guests(guests: Sequence[Guest]) -> None:
    """Refuse guests that would share an interface, address or name. Raises PlanError."""
    owners: dict[object, str] = {}
    for guest in guests:
        check_guest(guest)
        keys = [("name", guest.name), ("interface", guest.iface)]
        keys += [("address", a.ip) for a in guest.addresses]
        if guest.bridge is not None:
            keys.append(("bridge port MAC", (guest.bridge, guest.mac)))
        for key in keys:
            if key in owners:
                raise PlanError(f"guest {guest.name}: {key[0]} {_shown(key[1])} already belongs to guest {owners[key]}")
            owners[key] = guest.name
        if guest.bridge is not None and ("interface", guest.bridge) in owners:
            raise PlanError(f"guest {guest.name}: bridge {guest.bridge} is another guest's interface")


def _shown(value: object) -> str:
    return " ".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def compile_ruleset(guests: Sequence[Guest], settings: Settings, names: Names) -> NftPlan:
    """Replace our tables whole with ``guests`` (apply, restore)."""
    check_guests(guests)
    commands: list[Command] = []
    for family in FAMILIES:
        commands += [OURS.add_table(family), OURS.delete_table(family)]
    commands += _skeleton(settings, masquerade=any(g.masquerade for g in guests))
    for guest in guests:
        commands += _guest_objects(guest, names)
    return NftPlan(step="replace the guestfence tables", commands=tuple(commands))


def compile_add(guest: Guest, settings: Settings, names: Names, *, others: Sequence[Guest], replaces: Guest | None) -> NftPlan:
    """Add ``guest`` (replacing its earlier record ``replaces``) next to ``others``."""
    check_guests([*others, guest])
    commands = _skeleton(settings, masquerade=guest.masquerade or any(g.masquerade for g in others))
    if replaces is not None:
        commands += _guest_removal(replaces)
    commands += _guest_objects(guest, names)
    return NftPlan(step=f"add guest {guest.name}", commands=tuple(commands))


def compile_remove(guest: Guest, settings: Settings, *, others: Sequence[Guest]) -> NftPlan:
    """Remove ``guest``; ``others`` are the guests that stay."""
    commands = _skeleton(settings, masquerade=any(g.masquerade for g in others)) + _guest_removal(guest)
    return NftPlan(step=f"remove guest {guest.name}", commands=tuple(commands))


def compile_flush() -> NftPlan:
    """Delete our tables, whether they exist or not; nothing else."""
    commands = [c for family in FAMILIES for c in (OURS.add_table(family), OURS.delete_table(family))]
    return NftPlan(step="flush the guestfence tables", commands=tuple(commands))


# The skeleton: tables, base chains, maps and sets, and the constant base rules.


def _skeleton(settings: Settings, *, masquerade: bool) -> list[Command]:
    """``masquerade``: whether a guest masquerades. The nat chain exists only
    then: a nat chain makes the kernel run its NAT hooks for every packet of
    every connection on the host, guests' or not."""
    commands = [OURS.add_table(family) for family in FAMILIES]
    commands += [OURS.add_set(family, name, kind, elements) for (family, name), (kind, elements) in CONSTANT_SETS.items()]
    commands += [
        *(OURS.add_set(INET, GUEST_ADDRS[v], _ADDR_TYPE[v]) for v in (4, 6)),
        *(OURS.add_set(INET, MASQUERADE[v], _ADDR_TYPE[v]) for v in (4, 6)),
        *(OURS.add_set(INET, SOURCES[v], ["ifname", _ADDR_TYPE[v]]) for v in (4, 6)),
        *(OURS.add_set(INET, BRIDGED_SOURCES[v], ["ifname", "ether_addr", _ADDR_TYPE[v]]) for v in (4, 6)),
        OURS.add_verdict_map(INET, GUESTS_MAP, "ifname"),
        OURS.add_verdict_map(INET, BRIDGED_MAP, ["ifname", "ether_addr"]),
        OURS.add_verdict_map(INET, DROPS_MAP, "ifname"),
        OURS.add_verdict_map(INET, BRIDGED_DROPS_MAP, ["ifname", "ether_addr"]),
        OURS.add_verdict_map(ARP, GUESTS_MAP, "ifname"),
        OURS.add_verdict_map(BRIDGE, GUESTS_MAP, "ifname"),
        OURS.add_verdict_map(BRIDGE, PORTS_MAP, "ifname"),
        OURS.add_set(INET, n.GENERATION, "mark"),
        OURS.flush_set(INET, n.GENERATION),
        OURS.add_element(INET, n.GENERATION, [settings.generation]),
    ]
    base = [
        (INET, PREROUTING, "prerouting", PRIO_INET_PREROUTING, "filter"),
        (INET, INPUT, "input", PRIO_FILTER, "filter"),
        (INET, FORWARD, "forward", PRIO_FILTER, "filter"),
        (ARP, INPUT, "input", PRIO_ARP_FILTER, "filter"),
        (BRIDGE, PREROUTING, "prerouting", PRIO_BRIDGE_FILTER, "filter"),
        (BRIDGE, FORWARD, "forward", PRIO_BRIDGE_FILTER, "filter"),
    ]
    for family, name, hook, prio, kind in base:
        commands += [OURS.add_base_chain(family, name, hook=hook, prio=prio, kind=kind), OURS.flush_chain(family, name)]
    for chain, bridged in ((SCREEN, False), (SCREEN_BRIDGED, True)):
        commands += [OURS.add_chain(INET, chain), OURS.flush_chain(INET, chain)]
        commands += [OURS.add_rule(INET, chain, exprs) for exprs in _screen(bridged=bridged)]
    for family in FAMILIES:
        commands += [OURS.add_chain(family, UNREGISTERED), OURS.flush_chain(family, UNREGISTERED)]
        if settings.closed:
            commands.append(OURS.add_element(family, GUESTS_MAP, [b.map_entry(iface, UNREGISTERED) for iface in settings.closed]))
        commands.append(
            OURS.add_rule(family, UNREGISTERED, [b.limit(*LOG_RATE), b.log("guestfence drop unregistered: ")])
        )
        commands.append(OURS.add_rule(family, UNREGISTERED, [b.counter(), b.DROP]))
    iifname = b.meta("iifname")
    dispatch = {
        (INET, PREROUTING): [
            [b.vmap(iifname, GUESTS_MAP)],
            [b.vmap(b.concat(iifname, b.payload("ether", "saddr")), BRIDGED_MAP)],
        ],
        (ARP, INPUT): [[b.vmap(iifname, GUESTS_MAP)]],
        (BRIDGE, PREROUTING): [[b.vmap(iifname, GUESTS_MAP)]],
        (BRIDGE, FORWARD): [[b.vmap(iifname, PORTS_MAP)]],
    }
    # The second decision, after destination NAT: a new connection the host
    # translated runs through the guest's chains again with the destination
    # it is delivered to.
    translated = [b.match(b.ct("status"), "dnat", "in"), b.match(b.ct("state"), "new", "in")]
    for chain in (INPUT, FORWARD):
        dispatch[(INET, chain)] = [[*translated, *exprs] for exprs in dispatch[(INET, PREROUTING)]]
    for (family, chain), rules in dispatch.items():
        for exprs in rules:
            commands.append(OURS.add_rule(family, chain, exprs))
        if settings.pattern and (chain == PREROUTING or (family, chain) == (ARP, INPUT)):
            commands.append(OURS.add_rule(family, chain, [b.match(iifname, settings.pattern), b.goto(UNREGISTERED)]))
    nat = OURS.add_base_chain(INET, POSTROUTING, hook="postrouting", prio=PRIO_SRCNAT, kind="nat")
    if not masquerade:
        return [*commands, nat, OURS.flush_chain(INET, POSTROUTING), OURS.delete_chain(INET, POSTROUTING)]
    commands += [nat, OURS.flush_chain(INET, POSTROUTING)]
    for v in (4, 6):
        source = b.payload(_DADDR[v], "saddr")
        commands.append(OURS.add_rule(INET, POSTROUTING, [b.match(source, f"@{MASQUERADE[v]}"), b.masquerade()]))
    return commands


def _screen(*, bridged: bool) -> list[list[Expr]]:
    """The shared chain every guest's chain jumps to first: anti-spoofing
    (antispoof.screen_rules), martian destinations, ``ct state invalid``.
    What fails goes to the guest's own drop chain (``drops`` map); what
    passes returns to the guest's chain."""
    drop = screen_drop(bridged=bridged)
    # One prefix match each: cheaper per packet than a lookup in an interval set.
    martians = [[b.match(b.payload(_DADDR[net.version], "daddr"), b.net_value(net)), drop] for net in MARTIAN_DESTINATIONS]
    return [*screen_rules(bridged=bridged), *martians, [b.match(b.ct("state"), "invalid"), drop]]


# One guest's objects, and their removal.


def _tables_of(guest: Guest) -> tuple[str, ...]:
    """The families holding the guest's chains: bridge ports are checked at L2
    in the bridge table, routed guests' ARP in the arp table."""
    return (INET, BRIDGE) if guest.bridge is not None else (INET, ARP)


def _chains_of(guest: Guest, family: str) -> tuple[str, ...]:
    parts: tuple[str | None, ...] = (None, "host", "out", "drop") if family == INET else (None, "drop")
    return tuple(guest_chain(guest.name, part) for part in parts)


def _counters_of(guest: Guest, family: str) -> tuple[str, ...]:
    whats = ("accepted", "dropped") if family == INET else ("dropped",)
    return tuple(guest_counter(guest.name, what) for what in whats)


def _elements_of(guest: Guest) -> list[tuple[str, str, list[object]]]:
    """(family, map or set, elements) the guest owns."""
    entry, drop = guest_chain(guest.name), guest_chain(guest.name, "drop")
    owned: list[tuple[str, str, list[object]]] = []
    if guest.bridge is None:
        owned.append((INET, GUESTS_MAP, [b.map_entry(guest.iface, entry)]))
        owned.append((INET, DROPS_MAP, [b.map_entry(guest.iface, drop)]))
        owned.append((ARP, GUESTS_MAP, [b.map_entry(guest.iface, entry)]))
    else:
        owned.append((INET, BRIDGED_MAP, [b.map_entry(b.concat(guest.bridge, guest.mac), entry)]))
        owned.append((INET, BRIDGED_DROPS_MAP, [b.map_entry(b.concat(guest.bridge, guest.mac), drop)]))
        owned.append((BRIDGE, GUESTS_MAP, [b.map_entry(guest.iface, entry)]))
        owned.append((BRIDGE, PORTS_MAP, [b.map_entry(guest.iface, drop)]))
    sources = SOURCES if guest.bridge is None else BRIDGED_SOURCES
    for v in (4, 6):
        own = [str(a) for a in guest.own(v)]
        if own:
            owned.append((INET, sources[v], source_keys(guest, v)))
            owned.append((INET, GUEST_ADDRS[v], own))
            if guest.masquerade:
                owned.append((INET, MASQUERADE[v], own))
    return owned


def _guest_removal(guest: Guest) -> list[Command]:
    """Delete the guest's objects; each is added first, so a missing one is no error."""
    commands: list[Command] = []
    for family in _tables_of(guest):
        commands += [OURS.add_chain(family, chain) for chain in _chains_of(guest, family)]
        commands += [OURS.add_counter(family, counter) for counter in _counters_of(guest, family)]
    for family, name, elements in _elements_of(guest):
        commands += [OURS.add_element(family, name, elements), OURS.delete_element(family, name, [_key(e) for e in elements])]
    for family in _tables_of(guest):
        commands += [OURS.flush_chain(family, chain) for chain in _chains_of(guest, family)]
        commands += [OURS.delete_chain(family, chain) for chain in _chains_of(guest, family)]
        commands += [OURS.delete_counter(family, counter) for counter in _counters_of(guest, family)]
    return commands


def _key(element: object) -> object:
    return element[0] if isinstance(element, list) else element


def _guest_objects(guest: Guest, names: Names) -> list[Command]:
    commands: list[Command] = []
    for family in _tables_of(guest):
        commands += [OURS.add_counter(family, counter) for counter in _counters_of(guest, family)]
        commands += [OURS.add_chain(family, chain) for chain in _chains_of(guest, family)]
    entry = guest_chain(guest.name)
    label = f"guest {guest.name}" + (f": {guest.comment}" if guest.comment else "")
    out = _out_rules(guest, names)
    for family in _tables_of(guest):
        rules = _entry_rules(guest, out) if family == INET else antispoof_rules(guest, family)
        for index, exprs in enumerate(rules):
            commands.append(OURS.add_rule(family, entry, exprs, comment=label if index == 0 else None))
        commands += _drop_chain(guest, family)
    for exprs in _host_rules(guest, names):
        commands.append(OURS.add_rule(INET, guest_chain(guest.name, "host"), exprs))
    for exprs in out if _accepts(out) else []:
        commands.append(OURS.add_rule(INET, guest_chain(guest.name, "out"), exprs))
    for family, name, elements in _elements_of(guest):
        commands.append(OURS.add_element(family, name, elements))
    return commands


def _drop_chain(guest: Guest, family: str) -> list[Command]:
    chain = guest_chain(guest.name, "drop")
    return [
        OURS.add_rule(family, chain, [b.limit(*LOG_RATE), b.log(log_prefix(guest.name))]),
        OURS.add_rule(family, chain, [b.counter_ref(guest_counter(guest.name, "dropped")), b.DROP]),
    ]


def _accept(guest: Guest) -> list[Expr]:
    return [b.counter_ref(guest_counter(guest.name, "accepted")), ACCEPT]


def _entry_rules(guest: Guest, out: list[list[Expr]]) -> list[list[Expr]]:
    """The guest's inet chain: the shared checks, its own anti-spoofing,
    state, then host or elsewhere. When nothing elsewhere is accepted the
    out chain stays empty and this chain goes straight to the drop chain."""
    onwards = "out" if _accepts(out) else "drop"
    return [
        [b.jump(SCREEN_BRIDGED if guest.bridge is not None else SCREEN)],
        *guest_antispoof_rules(guest),
        [b.match(b.ct("state"), ["established", "related"], "in"), *_accept(guest)],
        [b.match(b.fib_daddr_type(), f"@{n.TO_HOST_TYPES}"), b.goto(guest_chain(guest.name, "host"))],
        [b.goto(guest_chain(guest.name, onwards))],
    ]


def _accepts(rules: list[list[Expr]]) -> bool:
    return any(ACCEPT in exprs for exprs in rules)


def _host_rules(guest: Guest, names: Names) -> list[list[Expr]]:
    """Packets for the host itself (local, broadcast, multicast, anycast
    destinations): what the link needs, then the policy; ICMP echo is the
    policy's like any other flow."""
    accept = _accept(guest)
    rules = [[b.match(b.payload("icmpv6", "type"), f"@{n.LINK_ICMPV6}"), *accept]]
    rules += _policy_rules(guest, names, guest.policy.deny, deny=True)
    rules += _policy_rules(guest, names, guest.policy.allow, deny=False)
    rules.append(_default(guest))
    return rules


def _out_rules(guest: Guest, names: Names) -> list[list[Expr]]:
    """Packets the host would forward elsewhere (other guests, other networks)."""
    elsewhere = [r for r in guest.policy.allow if not isinstance(r.host, SymbolHost)]
    named = [r for r in elsewhere if not isinstance(r.host, AnyHost)]
    wildcard = [r for r in elsewhere if isinstance(r.host, AnyHost)]
    drop = b.goto(guest_chain(guest.name, "drop"))
    rules = _policy_rules(guest, names, [r for r in guest.policy.deny if not _is_host(r)], deny=True)
    rules += _policy_rules(guest, names, named, deny=False)
    rules += [[b.match(b.payload(_DADDR[v], "daddr"), f"@{GUEST_ADDRS[v]}"), drop] for v in (4, 6)]
    rules += _policy_rules(guest, names, wildcard, deny=False)
    rules.append(_default(guest))
    return rules


def _is_host(rule: Rule) -> bool:
    return isinstance(rule.host, SymbolHost) and rule.host.symbol is Symbol.HOST


def _default(guest: Guest) -> list[Expr]:
    if guest.policy.default is Action.ALLOW:
        return _accept(guest)
    return [b.goto(guest_chain(guest.name, "drop"))]


def _policy_rules(guest: Guest, names: Names, rules: Iterable[Rule], *, deny: bool) -> list[list[Expr]]:
    verdict = [b.goto(guest_chain(guest.name, "drop"))] if deny else _accept(guest)
    return [[*matches, *verdict] for rule in rules
            for matches in rule_matches(rule, names, guest.gateways, deny=deny)]
