"""Policy + guests -> libnftables JSON commands. Pure: no I/O, no DNS, no clock.

The ruleset (docs/vm-guests.md explains why it is shaped so)::

    inet guestfence
      prerouting  hook prerouting, priority dstnat - 10 (-110), policy accept
          iifname . ip saddr vmap @dispatch4       -> goto policy.P   (the guest's own source)
          iifname . ip6 saddr vmap @dispatch6      -> goto policy.P
          ip6 saddr fe80::/64 iifname vmap @guests -> goto policy.P
          ip6 saddr :: but not in DAD/MLD: iifname vmap @drops -> goto guest_drop
          ip6 saddr :: iifname vmap @guests        -> goto policy.P
          iifname vmap @drops                      -> goto guest_drop (a guest's spoofed source)
          the same six keyed by iifname . ether saddr, @bridged_* (only while a guest is a bridge port)
          iifname "vmtap*" goto unregistered
      input, forward  hook input / forward, priority filter (0), policy accept
          ct status dnat ct state new goto redispatch: a connection the host
          translated is decided again for where it is delivered
      redispatch        the dispatch rules of prerouting
      policy.P          one per compiled policy ("profile"), shared by every guest
                        it compiles to the same rules for: [its MAC: iifname .
                        ether saddr @macs]; ct established iifname @accepted accept;
                        jump screen; ct related (counted) accept; ND and MLD to the
                        host accept; the deny rules; the allow rules of @gateway;
                        fib daddr type @to_host goto policy.P.host; goto
                        policy.P.out (either is guest_drop when it would accept nothing)
      policy.P.host     the other allow rules; default
      policy.P.out      allow rules naming addresses; other guests' addresses drop;
                        allow rules for *; default
      screen            advertised ND targets (iifname vmap @nd_targets -> jump
                        guest.NAME.nd), RA, redirects; martian destinations
                        (0.0.0.0/8, 127.0.0.0/8, @martians6); ct invalid: each
                        goto guest_drop; else return
      guest_drop        meter log_rate { iifname limit rate 5/second } log prefix "guestfence drop: ";
                        iifname @dropped drop; drop (guest_drop_bridged: the same keyed
                        by iifname . ether saddr)
      accepted, dropped sets of interfaces with a counter per element: the lookup
                        counts into the guest's element (its accepted, dropped packets)
      guest.NAME.nd     the only per-guest chain, for guests with IPv6 addresses
      postrouting       hook postrouting (nat): ip saddr @masquerade4 masquerade (and IPv6),
                        only while a guest masquerades (a nat chain costs every packet)
    arp guestfence      input: iifname vmap @guests -> goto screen (sender MAC and IPv4);
                        guest_drop as in inet
    bridge guestfence   prerouting: iifname vmap @guests -> goto screen (L2 anti-spoofing);
                        forward: iifname vmap @ports -> goto guest_drop (no L2 forwarding)

A guest is elements only: its addresses in the dispatch maps (and in arp,
bridge ``sources4``/``sources6``), its gateways in ``gateways4/6``
(``@gateway`` is ``iifname . ip daddr @gateways4``), its counters as
its elements of ``accepted`` and ``dropped`` (its drop log is limited per
interface by a meter, whose elements appear as guests drop), its MAC in
``macs``; plus ``guest.NAME.nd`` when it has IPv6 addresses. Its
policy is the profile ``policy.P``, where P is a digest of the profile's
compiled rules: guests whose rules compile the same (same policy, same
resolved names, same kind: routed, routed with a MAC, bridged) share it.
Why: libnftables 1.0.6 spends about 45 µs of CPU and 7 KB per rule it
adds and a few µs per element, and lists a named counter object ten
times slower than an element; 5,000 guests of one policy were ~75,000
rules, 30,000 chains and 15,000 counters (apply 13 s, 960 MB) and are
now ~60 rules, 16 chains and ~55,000 elements.

Rules of the compiler:

1. The first decision is made in prerouting, after conntrack (-200) and
   before destination NAT (-100): the destination seen is the one the guest
   aimed at, so a host port forwarded elsewhere is judged as the host port
   it is. A new connection the host translated (``ct status dnat``) is
   decided a second time in input or forward, after every prerouting
   chain, for the destination it is delivered to: it passes only if the
   policy allows both (``policy.decide.decide_translated``).
2. Per packet the cost is one map lookup to reach the guest's profile
   whatever the number of guests, and that lookup is the source check; a
   guest's accepted packets cost one more (its counting element). No rule
   is a guest's own but its ND-target check. A packet of an established
   connection is accepted right after the source (and MAC) check: what
   ``screen`` checks holds for a connection's first packet, and a
   connection whose first packet was dropped is never established (ND and
   RA are never tracked; ICMP errors, redirects among them, are
   ``related`` and pass ``screen`` first). Set lookups are what a packet
   of a new connection pays most for: a UDP packet to an allowed @gateway
   port pays three (its dispatch, its gateway, its counter) and no route
   lookup.
3. A rule becomes one nft rule per address family it can match; a DNS name
   becomes the addresses it resolved to (``names``); one that did not
   resolve makes an allow match nothing and a deny match every destination.
   ``@host`` is ``fib daddr type @to_host``: every address the host
   receives for itself (local, broadcast, multicast, anycast), read live.
   ``@gateway`` is a lookup of ``iifname . ip daddr`` (one rule per IP
   version; a guest without a gateway of a version has no element there).
4. Deny before allow, allow before the default, exactly as ``decide``. The
   only fixed accepts are what a link needs: ``ct established,related``
   (which holds the ICMP errors and packet-too-big of the guest's own
   connections), and neighbour discovery and MLD reports to the host
   (``LINK_ICMPV6``). ICMP echo is the policy's, like every flow. The
   route lookup that tells host from elsewhere (``fib daddr type``) comes
   after what does not need it: every deny (a deny of ``@host`` carries its
   own), and the allows of ``@gateway``, which ``decide`` matches by address
   (an allow of ``udp://@gateway:53`` costs no route lookup).
5. Guest-to-guest: another guest's address is reached only through a rule
   that names an address (a CIDR or a DNS name); ``*`` and the default do
   not cover it, as ``decide`` says with ``Context.guests``.
6. ``compile_add``/``compile_remove`` touch only one guest's elements
   and ND chain and its profile (re-created in place; deleted with its last
   guest), plus re-creating the constant base rules (the nat chain while
   any guest masquerades, the bridge ports' dispatch while a guest is one,
   so they are told the other guests), so the transaction is the same with
   1 guest or 10,000. Removal is idempotent (each object is added, then
   deleted, in the same transaction); each guest's profile is compiled
   with its own recorded names (``NamesOf``), so its removal re-adds its
   elements with the verdicts the kernel holds.
7. A verdict never follows a lookup that can miss in the same rule unless a
   miss is safe: ``iifname @dropped drop`` does nothing for an interface
   the set lacks, so ``guest_drop`` ends with a plain drop; an accept
   after ``iifname @accepted`` only fails closed. No chain is named like
   an nft keyword (``drop``): what ``nft list ruleset`` prints must load back.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, final

from guestfence.errors import PlanError
from guestfence.nftables import build as b
from guestfence.nftables.match import HOST_TYPES, GatewayLookup, Names, rule_matches
from guestfence.guests import names as n
from guestfence.guests.names import OURS
from guestfence.guests.antispoof import (
    LINK_LOCAL,
    arp_screen_rules,
    bridge_screen_rules,
    mac_rule,
    nd_rule,
    screen_rules,
    source_keys,
    unspecified_source_rules,
)
from guestfence.nftables.build import ACCEPT, Command, Expr
from guestfence.guests.guest import DEFAULT_PATTERN, Guest
from guestfence.guests.names import (
    ACCEPTED,
    ARP,
    BRIDGE,
    BRIDGED_ACCEPTED,
    BRIDGED_DISPATCH,
    BRIDGED_DROPPED,
    BRIDGED_DROPS_MAP,
    BRIDGED_GATEWAYS,
    BRIDGED_MAP,
    DISPATCH,
    DROP,
    DROP_BRIDGED,
    DROPPED,
    DROPS_MAP,
    FAMILIES,
    FORWARD,
    GATEWAYS,
    GUEST_ADDRS,
    GUESTS_MAP,
    INET,
    INPUT,
    BRIDGED_LOG_RATE_METER,
    LOG_RATE_METER,
    LOG_PREFIX,
    MACS,
    MASQUERADE,
    ND_TARGETS,
    PORTS_MAP,
    POSTROUTING,
    PREROUTING,
    REDISPATCH,
    SCREEN,
    SCREEN_BRIDGED,
    SOURCES,
    UNREGISTERED,
    WITH_MAC,
    guest_chain,
    profile_chain,
)
from guestfence.policy.model import Action, Address, AnyHost, Policy, Rule, Symbol, SymbolHost
from guestfence.value import Value, init_field

try:  # CPython's own SHA-256: hashlib loads OpenSSL for it (3 ms of every `guest add`, which digests one profile)
    from _sha256 import sha256
except ImportError:  # Python 3.12 and later name it _sha2; other Pythons
    from hashlib import sha256

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
class Settings(Value):
    """Table-wide settings. ``pattern``: interfaces of unregistered guests ('' for none).
    ``generation``: which recorded change the tables hold (kept in the set
    ``names.GENERATION``, so status and restore can tell an interrupted change).
    ``closed``: interfaces of recorded guests that could not be read back,
    dropped like unregistered ones until their record is fixed."""

    __slots__ = ("pattern", "generation", "closed")
    pattern: str
    generation: int
    closed: tuple[str, ...]

    def __init__(self, *, pattern: str = DEFAULT_PATTERN, generation: int = 0, closed: tuple[str, ...] = ()) -> None:
        init_field(self, "pattern", pattern)
        init_field(self, "generation", generation)
        init_field(self, "closed", closed)


@final
class NftPlan(Value):
    """One transaction: ``commands`` applied whole or not at all."""

    __slots__ = ("step", "commands")
    step: str
    commands: tuple[Command, ...]

    def __init__(self, *, step: str, commands: tuple[Command, ...] = ()) -> None:
        init_field(self, "step", step)
        init_field(self, "commands", commands)


@final
class Profile(Value):
    """A compiled policy, shared by every guest it compiles to the same rules
    for: ``chains`` are (name, rules) of ``policy.DIGEST``, ``.host``, ``.out``."""

    __slots__ = ("name", "chains")
    name: str
    chains: tuple[tuple[str, tuple[tuple[Expr, ...], ...]], ...]

    def __init__(self, *, name: str, chains: tuple[tuple[str, tuple[tuple[Expr, ...], ...]], ...]) -> None:
        init_field(self, "name", name)
        init_field(self, "chains", chains)


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


OwnerKey = tuple[str, object]
"""What no two guests may share: ("name", NAME), ("interface", IFACE),
("address", (VERSION, NUMBER)), ("bridge port MAC", (BRIDGE, MAC)). An
address is its version and number: made and hashed as an ipaddress object
it cost ``guest add`` more than the rest of the check, at 1000 guests."""


def owner_keys(name: str, iface: str, addresses: Iterable[tuple[int, int]], bridge: str | None, mac: str | None) -> list[OwnerKey]:
    """The keys a guest owns (``addresses``: its own, as ``address_key`` gives them), in the order they are checked."""
    keys: list[OwnerKey] = [("name", name), ("interface", iface)]
    keys += [("address", address) for address in addresses]
    if bridge is not None:
        keys.append(("bridge port MAC", (bridge, mac)))
    return keys


def claim(owners: dict[OwnerKey, str], name: str, keys: Iterable[OwnerKey], bridge: str | None) -> None:
    """Record in ``owners`` that guest ``name`` owns ``keys``; refuse (PlanError)
    a key another guest owns already, or a ``bridge`` that is another guest's interface."""
    for key in keys:
        if key in owners:
            raise PlanError(f"guest {name}: {key[0]} {_shown(key)} already belongs to guest {owners[key]}")
        owners[key] = name
    if bridge is not None and ("interface", bridge) in owners:
        raise PlanError(f"guest {name}: bridge {bridge} is another guest's interface")


def check_guests(guests: Sequence[Guest], owners: dict[OwnerKey, str] | None = None) -> dict[OwnerKey, str]:
    """Refuse guests that would share an interface, address or name, with each
    other or with ``owners`` (what the guests registered before own; not
    changed). Raises PlanError. Returns what all of them own."""
    owners = {} if owners is None else dict(owners)
    for guest in guests:
        check_guest(guest)
        claim(owners, guest.name, owner_keys(guest.name, guest.iface, [address_key(a) for a in guest.addresses], guest.bridge,
                                             guest.mac), guest.bridge)  # fmt: skip
    return owners


@final
class Others(Value):
    """The guests registered besides the one ``compile_add`` adds, as it needs
    them: what they own (``owner_keys``: the added guest is checked against
    it), whether any masquerades or is a bridge port (the skeleton's
    conditional chains), and ``samples``: a guest of each profile they use
    (or more: every one), so that replacing a guest can tell whether its
    profile is still used. Made from guests (``of``) or, without reading
    every guest, from the record (guestfence.guests.firewall)."""

    __slots__ = ("owners", "masquerade", "bridged", "samples")
    HASHED = ("masquerade", "bridged", "samples")
    owners: Mapping[OwnerKey, str]
    masquerade: bool
    bridged: bool
    samples: tuple[Guest, ...]

    def __init__(self, *, owners: Mapping[OwnerKey, str], masquerade: bool, bridged: bool, samples: tuple[Guest, ...]) -> None:
        init_field(self, "owners", owners)
        init_field(self, "masquerade", masquerade)
        init_field(self, "bridged", bridged)
        init_field(self, "samples", samples)

    @classmethod
    def of(cls, guests: Sequence[Guest]) -> Others:
        """``guests``, checked (PlanError) as ``check_guests`` does."""
        return cls(owners=check_guests(guests), masquerade=any(g.masquerade for g in guests),
                   bridged=any(g.bridge is not None for g in guests), samples=tuple(guests))  # fmt: skip


def address_key(address: Address) -> tuple[int, int]:
    """An address (or interface: its address) as ``owner_keys`` takes it."""
    return address.version, int(address)


def _shown(key: OwnerKey) -> str:
    kind, value = key
    if kind == "address":
        version, number = value  # type: ignore[misc]
        return str(ipaddress.IPv4Address(number) if version == 4 else ipaddress.IPv6Address(number))
    return " ".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


NamesOf = Callable[[Guest], Names]
"""What a guest's DNS names resolved to when it was applied (its record)."""


class Profiles:
    """Each guest's profile, each distinct one compiled once (5,000 guests of
    one policy: one compilation). ``names``: what the rules' DNS names
    resolved to, the same for every guest, or each guest's own (``NamesOf``):
    a guest's profile is then a function of its record alone, so removing it
    names the profile its elements point to."""

    def __init__(self, names: Names | NamesOf) -> None:
        self._names_of: NamesOf = names if callable(names) else lambda guest: names
        self._policies: dict[int, tuple[Policy, int, tuple[str, ...]]] = {}
        self._distinct: dict[Policy, int] = {}
        self._compiled: dict[tuple[Any, ...], Profile] = {}
        self.used: dict[str, Profile] = {}
        """Every profile asked for, by name, in the order first asked."""

    def of(self, guest: Guest) -> Profile:
        kind = "bridged" if guest.bridge is not None else "mac" if guest.mac is not None else "routed"
        # Guests parsed from one file or record mostly share one Policy
        # object (config, guest._recorded_policy): it is hashed once per
        # object, not once per guest (a policy's hash walks all its rules).
        policy = guest.policy
        known = self._policies.get(id(policy))
        if known is None or known[0] is not policy:
            index = self._distinct.setdefault(policy, len(self._distinct))
            known = self._policies[id(policy)] = (policy, index, tuple(sorted(policy.names())))
        _, index, wanted = known
        resolved = self._names_of(guest) if wanted else {}
        key = (index, kind, *((name, resolved.get(name)) for name in wanted))
        profile = self._compiled.get(key)
        if profile is None:
            profile = self._compiled[key] = _compile_profile(guest, kind, resolved)
        self.used.setdefault(profile.name, profile)
        return profile


def compile_ruleset(guests: Sequence[Guest], settings: Settings, names: Names | NamesOf) -> NftPlan:
    """Replace our tables whole with ``guests`` (apply, restore). Each set's
    elements are one command: libnftables pays per command as well as per element."""
    check_guests(guests)
    commands: list[Command] = []
    for family in FAMILIES:
        commands += [OURS.add_table(family), OURS.delete_table(family)]
    commands += _skeleton(settings, masquerade=any(g.masquerade for g in guests),
                          bridged=any(g.bridge is not None for g in guests))  # fmt: skip
    profiles = Profiles(names)
    elements: dict[tuple[str, str], list[object]] = {}
    objects: list[Command] = []
    for guest in guests:
        objects += _guest_objects(guest)
        for family, name, owned in _elements_of(guest, profiles.of(guest)):
            elements.setdefault((family, name), []).extend(owned)
    for profile in profiles.used.values():
        commands += _profile_commands(profile)
    commands += objects
    commands += [OURS.add_element(family, name, owned) for (family, name), owned in elements.items()]
    return NftPlan(step="replace the guestfence tables", commands=tuple(commands))


def compile_add(guest: Guest, settings: Settings, names: Names | NamesOf, *, others: Others,
                replaces: Guest | None) -> NftPlan:  # fmt: skip
    """Add ``guest`` (replacing its earlier record ``replaces``) next to ``others``.
    ``names``: what the DNS names of each guest's rules resolved to (the
    others' profiles tell whether one of them still uses the replaced profile)."""
    check_guests([guest], others.owners)
    profiles = Profiles(names)
    profile = profiles.of(guest)
    commands = _skeleton(settings, masquerade=others.masquerade or guest.masquerade,
                         bridged=others.bridged or guest.bridge is not None)  # fmt: skip
    if replaces is not None:
        old = profiles.of(replaces)
        last = old.name != profile.name and old.name not in {profiles.of(g).name for g in others.samples}
        commands += _guest_removal(replaces, old, last=last)
    commands += _profile_commands(profile)
    commands += _guest_objects(guest)
    commands += [OURS.add_element(family, name, owned) for family, name, owned in _elements_of(guest, profile)]
    return NftPlan(step=f"add guest {guest.name}", commands=tuple(commands))


def compile_remove(guest: Guest, settings: Settings, names: Names | NamesOf, *, others: Sequence[Guest]) -> NftPlan:
    """Remove ``guest``; ``others`` are the guests that stay (its profile goes with its last guest)."""
    profiles = Profiles(names)
    profile = profiles.of(guest)
    last = profile.name not in {profiles.of(g).name for g in others}
    commands = _skeleton(settings, masquerade=any(g.masquerade for g in others),
                         bridged=any(g.bridge is not None for g in others))  # fmt: skip
    commands += _guest_removal(guest, profile, last=last)
    return NftPlan(step=f"remove guest {guest.name}", commands=tuple(commands))


def compile_flush() -> NftPlan:
    """Delete our tables, whether they exist or not; nothing else."""
    commands = [c for family in FAMILIES for c in (OURS.add_table(family), OURS.delete_table(family))]
    return NftPlan(step="flush the guestfence tables", commands=tuple(commands))


# The skeleton: tables, base and shared chains, maps and sets, and the constant rules.

_IIFNAME = b.meta("iifname")
_BRIDGED_WHO = [_IIFNAME, b.payload("ether", "saddr")]
_BRIDGED_KEY = b.concat(*_BRIDGED_WHO)
"""inet: who sent, for a guest behind a bridge (the hooks see the bridge; the
bridge table has checked the port's MAC)."""


def _maps(family: str) -> list[Command]:
    """The sets and maps of ``family`` that hold per-guest elements."""
    if family == INET:
        bridged = ["ifname", "ether_addr"]
        return [
            *(OURS.add_set(INET, GUEST_ADDRS[v], _ADDR_TYPE[v]) for v in (4, 6)),
            *(OURS.add_set(INET, MASQUERADE[v], _ADDR_TYPE[v]) for v in (4, 6)),
            *(OURS.add_verdict_map(INET, DISPATCH[v], ["ifname", _ADDR_TYPE[v]]) for v in (4, 6)),
            *(OURS.add_verdict_map(INET, BRIDGED_DISPATCH[v], [*bridged, _ADDR_TYPE[v]]) for v in (4, 6)),
            *(OURS.add_set(INET, GATEWAYS[v], ["ifname", _ADDR_TYPE[v]]) for v in (4, 6)),
            *(OURS.add_set(INET, BRIDGED_GATEWAYS[v], [*bridged, _ADDR_TYPE[v]]) for v in (4, 6)),
            OURS.add_verdict_map(INET, GUESTS_MAP, "ifname"),
            OURS.add_verdict_map(INET, BRIDGED_MAP, bridged),
            OURS.add_verdict_map(INET, DROPS_MAP, "ifname"),
            OURS.add_verdict_map(INET, BRIDGED_DROPS_MAP, bridged),
            OURS.add_verdict_map(INET, ND_TARGETS, "ifname"),
            OURS.add_set(INET, MACS, bridged),
            OURS.add_set(INET, ACCEPTED, "ifname", counters=True),
            OURS.add_set(INET, DROPPED, "ifname", counters=True),
            OURS.add_set(INET, BRIDGED_ACCEPTED, bridged, counters=True),
            OURS.add_set(INET, BRIDGED_DROPPED, bridged, counters=True),
        ]
    commands = [
        OURS.add_verdict_map(family, GUESTS_MAP, "ifname"),
        OURS.add_set(family, MACS, ["ifname", "ether_addr"]),
        OURS.add_set(family, SOURCES[4], ["ifname", "ipv4_addr"]),
        OURS.add_set(family, DROPPED, "ifname", counters=True),
    ]
    if family == ARP:
        return [*commands, OURS.add_set(ARP, WITH_MAC, "ifname")]
    return [*commands, OURS.add_verdict_map(BRIDGE, PORTS_MAP, "ifname"), OURS.add_verdict_map(BRIDGE, ND_TARGETS, "ifname"),
            OURS.add_set(BRIDGE, SOURCES[6], ["ifname", "ipv6_addr"])]  # fmt: skip


def _shared_chains() -> dict[tuple[str, str], list[list[Expr]]]:
    """(family, chain) -> rules of the chains every guest shares."""
    drop, drop_bridged = b.goto(DROP), b.goto(DROP_BRIDGED)
    return {
        (INET, DROP): _drop_rules(_IIFNAME, LOG_RATE_METER, DROPPED),
        (INET, DROP_BRIDGED): _drop_rules(_BRIDGED_KEY, BRIDGED_LOG_RATE_METER, BRIDGED_DROPPED),
        (INET, SCREEN): _screen(drop, nd_targets=True),
        (INET, SCREEN_BRIDGED): _screen(drop_bridged, nd_targets=False),
        (ARP, DROP): _drop_rules(_IIFNAME, LOG_RATE_METER, DROPPED),
        (ARP, SCREEN): arp_screen_rules(),
        (BRIDGE, DROP): _drop_rules(_IIFNAME, LOG_RATE_METER, DROPPED),
        (BRIDGE, SCREEN): bridge_screen_rules(),
    }


def _drop_rules(key: Expr, meter: str, counters: str) -> list[list[Expr]]:
    """Log (rate-limited per guest: one guest's flood never silences another's
    log), count (the lookup counts into the guest's element), drop: the final
    plain ``drop`` holds even for a key the set lacks (rule 7)."""
    return [[b.meter_limit(meter, key, *LOG_RATE), b.log(LOG_PREFIX)], [b.match(key, f"@{counters}"), b.DROP], [b.DROP]]


def _skeleton(settings: Settings, *, masquerade: bool, bridged: bool) -> list[Command]:
    """What the tables hold whatever the guests, and two things that depend
    on all of them: whether any guest there will be masquerades, and
    whether any is a bridge port. The nat chain
    exists only while a guest masquerades: a nat chain makes the kernel run
    its NAT hooks for every packet of every connection on the host, guests'
    or not. The dispatch of bridge ports exists only while a guest is one:
    its lookups cost every packet of the host's own that reaches prerouting."""
    commands = [OURS.add_table(family) for family in FAMILIES]
    commands += [OURS.add_set(family, name, kind, elements) for (family, name), (kind, elements) in CONSTANT_SETS.items()]
    commands.append(OURS.add_set(INET, n.MARTIANS6, "ipv6_addr", [b.net_value(net) for net in MARTIAN_DESTINATIONS if net.version == 6],
                                 interval=True))  # fmt: skip
    for family in FAMILIES:
        commands += _maps(family)
    commands += [OURS.add_set(INET, n.GENERATION, "mark"), OURS.flush_set(INET, n.GENERATION),
                 OURS.add_element(INET, n.GENERATION, [settings.generation])]  # fmt: skip
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
    shared = _shared_chains()
    for family, chain in [*shared, *((family, UNREGISTERED) for family in FAMILIES)]:
        commands += [OURS.add_chain(family, chain), OURS.flush_chain(family, chain)]
    for (family, chain), rules in shared.items():
        commands += [OURS.add_rule(family, chain, exprs) for exprs in rules]
    for family in FAMILIES:
        if settings.closed:
            closed = [b.map_entry(iface, UNREGISTERED) for iface in settings.closed]
            commands.append(OURS.add_element(family, GUESTS_MAP, closed))
            if family == INET:
                commands.append(OURS.add_element(INET, DROPS_MAP, closed))
        commands.append(
            OURS.add_rule(family, UNREGISTERED, [b.limit(*LOG_RATE), b.log("guestfence drop unregistered: ")])
        )
        commands.append(OURS.add_rule(family, UNREGISTERED, [b.counter(), b.DROP]))
    dispatch = {
        (INET, PREROUTING): [*_dispatch([_IIFNAME], DISPATCH, GUESTS_MAP, DROPS_MAP),
                             *(_dispatch(_BRIDGED_WHO, BRIDGED_DISPATCH, BRIDGED_MAP, BRIDGED_DROPS_MAP) if bridged else [])],
        (ARP, INPUT): [[b.vmap(_IIFNAME, GUESTS_MAP)]],
        (BRIDGE, PREROUTING): [[b.vmap(_IIFNAME, GUESTS_MAP)]],
        (BRIDGE, FORWARD): [[b.vmap(_IIFNAME, PORTS_MAP)]],
    }  # fmt: skip
    # The second decision, after destination NAT: a new connection the host
    # translated runs through the guest's profile again with the destination
    # it is delivered to. One rule in each hook, so other packets pay one test.
    dispatch[(INET, REDISPATCH)] = dispatch[(INET, PREROUTING)]
    translated = [b.match(b.ct("status"), "dnat", "in"), b.match(b.ct("state"), "new", "in"), b.goto(REDISPATCH)]
    for chain in (INPUT, FORWARD):
        dispatch[(INET, chain)] = [translated]
    commands += [OURS.add_chain(INET, REDISPATCH), OURS.flush_chain(INET, REDISPATCH)]
    for (family, chain), rules in dispatch.items():
        for exprs in rules:
            commands.append(OURS.add_rule(family, chain, exprs))
        if settings.pattern and (chain == PREROUTING or (family, chain) == (ARP, INPUT)):
            commands.append(OURS.add_rule(family, chain, [b.match(_IIFNAME, settings.pattern), b.goto(UNREGISTERED)]))
    nat = OURS.add_base_chain(INET, POSTROUTING, hook="postrouting", prio=PRIO_SRCNAT, kind="nat")
    if not masquerade:
        return [*commands, nat, OURS.flush_chain(INET, POSTROUTING), OURS.delete_chain(INET, POSTROUTING)]
    commands += [nat, OURS.flush_chain(INET, POSTROUTING)]
    for v in (4, 6):
        source = b.payload(_DADDR[v], "saddr")
        commands.append(OURS.add_rule(INET, POSTROUTING, [b.match(source, f"@{MASQUERADE[v]}"), b.masquerade()]))
    return commands


def _dispatch(who: list[Expr], by_source: dict[int, str], by_link: str, drops: str) -> list[list[Expr]]:
    """Who sent (``who``: its parts), with its source, -> the guest's profile:
    the source check is the lookup (one per packet). IPv6 link-local and
    ``::`` sources, which a guest may use whatever its addresses (``screen``
    ``::`` only in DAD and MLD), by who sent alone; a registered sender the
    lookups missed -> its drop chain."""
    sender = b.concat(*who) if len(who) > 1 else who[0]
    source6 = b.payload("ip6", "saddr")
    return [
        *([b.vmap(b.concat(*who, b.payload(_DADDR[v], "saddr")), by_source[v])] for v in (4, 6)),
        [b.match(source6, b.net_value(LINK_LOCAL)), b.vmap(sender, by_link)],
        *unspecified_source_rules(b.vmap(sender, drops)),
        [b.match(source6, "::"), b.vmap(sender, by_link)],
        [b.vmap(sender, drops)],
    ]


def _screen(drop: Expr, *, nd_targets: bool) -> list[list[Expr]]:
    """The checks a profile makes before its policy: anti-spoofing the
    dispatch cannot do (antispoof.screen_rules, ICMP only), martian
    destinations, ``ct state invalid``. What fails goes to the drop chain;
    what passes returns to the profile. A set lookup costs a UDP or TCP
    packet more than a few failed tests (each protocol test fails at once),
    so IPv4 martians are two prefix matches; the IPv6 ones are a set, which
    IPv4 packets never reach."""
    martians4 = [[b.match(b.payload("ip", "daddr"), b.net_value(net)), drop] for net in MARTIAN_DESTINATIONS if net.version == 4]
    return [
        *screen_rules(drop, nd_targets=nd_targets),
        *martians4,
        [b.match(b.payload("ip6", "daddr"), f"@{n.MARTIANS6}"), drop],
        [b.match(b.ct("state"), "invalid"), drop],
    ]


# Profiles: a policy compiled once for every guest that shares it.


def _compile_profile(guest: Guest, kind: str, names: Names) -> Profile:
    """``kind``: routed, mac (routed, given a MAC) or bridged. Per-guest values
    are lookups keyed by who sent (``iifname``, or ``iifname . ether saddr``)."""
    bridged = kind == "bridged"
    who = _BRIDGED_KEY if bridged else _IIFNAME
    drop = b.goto(DROP_BRIDGED if bridged else DROP)
    accept = [b.match(who, f"@{BRIDGED_ACCEPTED if bridged else ACCEPTED}"), ACCEPT]
    gateway_sets = BRIDGED_GATEWAYS if bridged else GATEWAYS

    def gateway(version: int) -> Expr:
        parts = _BRIDGED_WHO if bridged else [_IIFNAME]
        return b.match(b.concat(*parts, b.payload(_DADDR[version], "daddr")), f"@{gateway_sets[version]}")

    policy = guest.policy
    to_host = b.match(b.fib_daddr_type(), f"@{n.TO_HOST_TYPES}")
    # Decided before the host/elsewhere split (one route lookup less for
    # what they decide): what the link needs (to the host only), every deny
    # (a deny of @host names the host in its own match), and the allows of
    # @gateway, which ``decide`` matches by address wherever it is.
    decided = [
        [b.match(b.payload("icmpv6", "type"), f"@{n.LINK_ICMPV6}"), to_host, *accept],
        *_policy_rules(policy.deny, names, gateway, [drop]),
        *_policy_rules([r for r in policy.allow if _is_gateway(r)], names, gateway, accept, deny=False),
    ]
    host = _host_rules(guest, names, gateway, accept, drop)
    out = _out_rules(guest, names, gateway, accept, drop)
    accepts_host, accepts_out = (any(ACCEPT in exprs for exprs in rules) for rules in (host, out))
    digest = sha256(json.dumps([kind, decided, host if accepts_host else [], out if accepts_out else []],
                                       sort_keys=True).encode()).hexdigest()[:16]  # fmt: skip
    name = profile_chain(digest)
    entry = [mac_rule(drop)] if kind == "mac" else []
    entry += [
        [b.match(b.ct("state"), "established", "in"), *accept],
        [b.jump(SCREEN_BRIDGED if bridged else SCREEN)],
        [b.match(b.ct("state"), "related", "in"), *accept],
        *decided,
    ]
    if accepts_host or accepts_out:
        entry.append([to_host, b.goto(profile_chain(digest, "host")) if accepts_host else drop])
    entry.append([b.goto(profile_chain(digest, "out")) if accepts_out else drop])
    chains = ((name, entry), (profile_chain(digest, "host"), host if accepts_host else []),
              (profile_chain(digest, "out"), out if accepts_out else []))  # fmt: skip
    return Profile(name=name, chains=tuple((chain, tuple(tuple(r) for r in rules)) for chain, rules in chains))


def _profile_commands(profile: Profile) -> list[Command]:
    """Create (or re-create, in place: other guests may use it) a profile's chains."""
    commands = [OURS.add_chain(INET, chain) for chain, _ in profile.chains]
    commands += [OURS.flush_chain(INET, chain) for chain, _ in profile.chains]
    commands += [OURS.add_rule(INET, chain, list(exprs)) for chain, rules in profile.chains for exprs in rules]
    return commands


def _host_rules(guest: Guest, names: Names, gateway: GatewayLookup, accept: list[Expr], drop: Expr) -> list[list[Expr]]:
    """Packets for the host itself (local, broadcast, multicast, anycast
    destinations), past what the profile decided before: the other allows,
    then the default. ICMP echo is the policy's like any other flow."""
    policy = guest.policy
    rules = _policy_rules([r for r in policy.allow if not _is_gateway(r)], names, gateway, accept, deny=False)
    rules.append(accept if policy.default is Action.ALLOW else [drop])
    return rules


def _out_rules(guest: Guest, names: Names, gateway: GatewayLookup, accept: list[Expr], drop: Expr) -> list[list[Expr]]:
    """Packets the host would forward elsewhere (other guests, other
    networks), past what the profile decided before."""
    policy = guest.policy
    elsewhere = [r for r in policy.allow if not isinstance(r.host, SymbolHost)]
    named = [r for r in elsewhere if not isinstance(r.host, AnyHost)]
    wildcard = [r for r in elsewhere if isinstance(r.host, AnyHost)]
    rules = _policy_rules(named, names, gateway, accept, deny=False)
    rules += [[b.match(b.payload(_DADDR[v], "daddr"), f"@{GUEST_ADDRS[v]}"), drop] for v in (4, 6)]
    rules += _policy_rules(wildcard, names, gateway, accept, deny=False)
    rules.append(accept if policy.default is Action.ALLOW else [drop])
    return rules


def _is_gateway(rule: Rule) -> bool:
    return isinstance(rule.host, SymbolHost) and rule.host.symbol is Symbol.GATEWAY


def _policy_rules(rules: Iterable[Rule], names: Names, gateway: GatewayLookup, verdict: list[Expr], *,
                  deny: bool = True) -> list[list[Expr]]:  # fmt: skip
    return [[*matches, *verdict] for rule in rules for matches in rule_matches(rule, names, gateway, deny=deny)]


# One guest's objects and elements, and their removal.


def _tables_of(guest: Guest) -> tuple[str, ...]:
    """The families holding the guest's objects: bridge ports are checked at L2
    in the bridge table, routed guests' ARP in the arp table."""
    return (INET, BRIDGE) if guest.bridge is not None else (INET, ARP)


def _nd_chain_family(guest: Guest) -> str | None:
    """Where the guest's ``guest.NAME.nd`` chain is (None: it has no IPv6 address)."""
    if not guest.own(6):
        return None
    return BRIDGE if guest.bridge is not None else INET


def _guest_objects(guest: Guest) -> list[Command]:
    """The guest's ND-target chain (its only object but elements)."""
    commands: list[Command] = []
    family = _nd_chain_family(guest)
    if family is not None:
        chain = guest_chain(guest.name, "nd")
        commands += [OURS.add_chain(family, chain), OURS.flush_chain(family, chain),
                     OURS.add_rule(family, chain, nd_rule(guest, b.goto(DROP)))]  # fmt: skip
    return commands


def _elements_of(guest: Guest, profile: Profile) -> list[tuple[str, str, list[object]]]:
    """(family, map or set, elements) the guest owns."""
    label = f"guest {guest.name}" + (f": {guest.comment}" if guest.comment else "")
    # Each address as text once: this runs for every guest of apply and status.
    own = {v: [str(a.ip) for a in guest.addresses if a.version == v] for v in (4, 6)}
    gateways = {v: [str(g) for g in guest.gateways if g.version == v] for v in (4, 6)}
    nd = [b.jump(guest_chain(guest.name, "nd"))] if own[6] else [b.goto(DROP)]
    owned: list[tuple[str, str, list[object]]] = []
    if guest.bridge is None:
        iface = guest.iface
        owned += [(INET, DISPATCH[v], [b.map_entry(key, profile.name) for key in source_keys([iface], own[v])]) for v in (4, 6)]
        owned += [
            (INET, GUESTS_MAP, [b.map_entry(iface, profile.name, label)]),
            (INET, DROPS_MAP, [b.map_entry(iface, DROP)]),
            (INET, ND_TARGETS, [[iface, *nd]]),
            *((INET, GATEWAYS[v], source_keys([iface], gateways[v])) for v in (4, 6)),
            (INET, ACCEPTED, [iface]),
            (INET, DROPPED, [iface]),
            (ARP, GUESTS_MAP, [b.map_entry(iface, SCREEN)]),
            (ARP, SOURCES[4], source_keys([iface], own[4])),
            (ARP, DROPPED, [iface]),
        ]
        if guest.mac is not None:
            owned += [(family, MACS, [b.concat(iface, guest.mac)]) for family in (INET, ARP)]
            owned.append((ARP, WITH_MAC, [iface]))
    else:
        port, who = guest.iface, [guest.bridge, guest.mac]
        key = b.concat(*who)
        owned += [(INET, BRIDGED_DISPATCH[v], [b.map_entry(k, profile.name) for k in source_keys(who, own[v])]) for v in (4, 6)]
        owned += [
            (INET, BRIDGED_MAP, [b.map_entry(key, profile.name, label)]),
            (INET, BRIDGED_DROPS_MAP, [b.map_entry(key, DROP_BRIDGED)]),
            *((INET, BRIDGED_GATEWAYS[v], source_keys(who, gateways[v])) for v in (4, 6)),
            (INET, BRIDGED_ACCEPTED, [key]),
            (INET, BRIDGED_DROPPED, [key]),
            (BRIDGE, GUESTS_MAP, [b.map_entry(port, SCREEN)]),
            (BRIDGE, PORTS_MAP, [b.map_entry(port, DROP)]),
            (BRIDGE, ND_TARGETS, [[port, *nd]]),
            (BRIDGE, MACS, [b.concat(port, guest.mac)]),
            *((BRIDGE, SOURCES[v], source_keys([port], own[v])) for v in (4, 6)),
            (BRIDGE, DROPPED, [port]),
        ]
    for v in (4, 6):
        owned.append((INET, GUEST_ADDRS[v], own[v]))
        if guest.masquerade:
            owned.append((INET, MASQUERADE[v], own[v]))
    return [(family, name, elements) for family, name, elements in owned if elements]


def _guest_removal(guest: Guest, profile: Profile, *, last: bool) -> list[Command]:
    """Delete the guest's objects, and its ``profile`` when it was the ``last``
    guest using it (else the profile is re-created in place, as by
    ``compile_add``); each object is added first, so a missing one is no
    error. Elements go first: they refer to the chains."""
    commands: list[Command] = []
    nd_family = _nd_chain_family(guest)
    nd = guest_chain(guest.name, "nd")
    if nd_family is not None:
        commands.append(OURS.add_chain(nd_family, nd))
    commands += _profile_commands(profile)
    for family, name, elements in _elements_of(guest, profile):
        commands += [OURS.add_element(family, name, elements), OURS.delete_element(family, name, [_key(e) for e in elements])]
    if nd_family is not None:
        commands += [OURS.flush_chain(nd_family, nd), OURS.delete_chain(nd_family, nd)]
    if last:
        commands += [OURS.flush_chain(INET, chain) for chain, _ in profile.chains]
        commands += [OURS.delete_chain(INET, chain) for chain, _ in profile.chains]
    return commands


def _key(element: object) -> object:
    if isinstance(element, list):
        element = element[0]
    if isinstance(element, dict) and "elem" in element:
        return element["elem"]["val"]
    return element
