"""Anti-spoofing rules: what a guest may claim to be. Pure.

Every rule here ends in the guest's drop chain (counted, logged): a frame
or packet that does not come from the guest's own MAC and addresses is
dropped before any other rule sees it. The ``bridge`` table (bridge ports)
and the ``arp`` table (routed guests) hold these rules in each guest's own
chain (``antispoof_rules``), the bridge table adding the L2 checks only it
can see: ethertypes and ARP. The ``inet`` table, where every packet of every
guest is decided, holds them once for all guests in the shared chains
``screen`` and ``screen_bridged`` (``screen_rules``): a guest's own
addresses are elements of the sets ``sources4``/``sources6`` keyed by
interface (``bridge . MAC`` for bridge ports), and a packet that fails is
sent to the guest's drop chain through the verdict map ``drops``
(``bridged_drops``). Only what is the guest's own and cannot be a set key
stays a rule in its chain (``guest_antispoof_rules``): its MAC, and the
target of its neighbour advertisements.

What a guest may claim:
- source MAC: the guest's ``mac``, when one is given (bridged guests must);
- IPv4 source: its own IPv4 addresses; no IPv4 at all when it has none;
- IPv6 source: its own IPv6 addresses, any link-local (fe80::/64, which we
  cannot know in advance and neighbour discovery needs; a link-local source
  reaches nothing beyond the link), and ``::`` only in ICMPv6 duplicate
  address detection and multicast listener reports
  (``UNSPECIFIED_SOURCE_ICMPV6``): never in UDP, TCP or other ICMPv6;
- neighbour advertisements: only for its own or link-local targets;
- never router advertisements or redirects;
- ARP (bridge and arp tables): sender MAC and IPv4 its own (0.0.0.0 for
  address probes).

"Not one of these values" is written as one ``!=`` match per value in the
same rule, not as an anonymous set: the values are few, and anonymous sets
would make every later change slower (see names.py on constant sets).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from guestfence.nftables.build import (
    Expr,
    concat,
    goto,
    match,
    meta,
    net_value,
    payload,
    raw_th,
    vmap,
)
from guestfence.guests.guest import Guest
from guestfence.guests.names import (
    ARP,
    BRIDGE,
    BRIDGED_DROPS_MAP,
    BRIDGED_SOURCES,
    DROPS_MAP,
    ETHERTYPES,
    SOURCES,
    SPOOF_ICMPV6,
    UNSPECIFIED_SOURCE_ICMPV6,
    guest_chain,
)

LINK_LOCAL = ipaddress.IPv6Network("fe80::/64")
_ND_TARGET_BITS = 64
"""The target address of a neighbour advertisement starts 64 bits into the ICMPv6 header."""


def antispoof_rules(guest: Guest, family: str) -> list[list[Expr]]:
    """The anti-spoofing rules of ``guest`` in its own chain of ``family`` (bridge or arp)."""
    drop = goto(guest_chain(guest.name, "drop"))
    if family == ARP:
        return _arp_rules(guest, drop)
    rules: list[list[Expr]] = []
    if guest.mac is not None:
        rules.append([match(payload("ether", "saddr"), guest.mac, "!="), drop])
    if family == BRIDGE:
        rules.append([match(payload("ether", "type"), f"@{ETHERTYPES}", "!="), drop])
        rules.extend(_arp_rules(guest, drop))
    own4, own6 = guest.own(4), guest.own(6)
    if own4:
        rules.append([*_none_of(payload("ip", "saddr"), [str(a) for a in own4]), drop])
    else:
        rules.append([match(meta("protocol"), "ip"), drop])
    allowed6 = [str(a) for a in own6] + [net_value(LINK_LOCAL), "::"]
    rules.append([*_none_of(payload("ip6", "saddr"), allowed6), drop])
    # Source ``::`` only for DAD and MLD: two rules, because a match on the
    # ICMPv6 type implies "is ICMPv6" and so can never drop a UDP or TCP packet.
    rules.append([match(payload("ip6", "saddr"), "::"), match(meta("l4proto"), "ipv6-icmp", "!="), drop])
    rules.append(
        [
            match(payload("ip6", "saddr"), "::"),
            match(payload("icmpv6", "type"), f"@{UNSPECIFIED_SOURCE_ICMPV6}", "!="),
            drop,
        ]
    )
    rules.append(_advert_rule(own6, drop))
    rules.append([match(payload("icmpv6", "type"), f"@{SPOOF_ICMPV6}"), drop])
    rules.append([match(payload("icmp", "type"), "redirect"), drop])
    return rules


def screen_rules(*, bridged: bool) -> list[list[Expr]]:
    """The source checks every guest's packets pass in ``inet``, keyed by
    ``iifname`` (routed guests) or ``iifname . ether saddr`` (bridge ports:
    the inet hooks see the bridge, and the bridge table has checked the MAC)."""
    who = _who(bridged=bridged)
    sources = BRIDGED_SOURCES if bridged else SOURCES
    drop = screen_drop(bridged=bridged)
    return [
        [match(concat(*who, payload("ip", "saddr")), f"@{sources[4]}", "!="), drop],
        [*_none_of(payload("ip6", "saddr"), [net_value(LINK_LOCAL), "::"]),
         match(concat(*who, payload("ip6", "saddr")), f"@{sources[6]}", "!="), drop],
        # Source ``::`` only for DAD and MLD: two rules, because a match on the
        # ICMPv6 type implies "is ICMPv6" and so can never drop a UDP or TCP packet.
        [match(payload("ip6", "saddr"), "::"), match(meta("l4proto"), "ipv6-icmp", "!="), drop],
        [match(payload("ip6", "saddr"), "::"), match(payload("icmpv6", "type"), f"@{UNSPECIFIED_SOURCE_ICMPV6}", "!="), drop],
        [match(payload("icmpv6", "type"), f"@{SPOOF_ICMPV6}"), drop],
        [match(payload("icmp", "type"), "redirect"), drop],
    ]  # fmt: skip


def _who(*, bridged: bool) -> list[Expr]:
    return [meta("iifname"), payload("ether", "saddr")] if bridged else [meta("iifname")]


def screen_drop(*, bridged: bool) -> Expr:
    """The verdict of a failed shared check: the guest's drop chain, looked up by who sent."""
    who = _who(bridged=bridged)
    return vmap(concat(*who) if bridged else who[0], BRIDGED_DROPS_MAP if bridged else DROPS_MAP)


def source_keys(guest: Guest, version: int) -> list[object]:
    """The guest's elements of ``sources4``/``sources6`` (or the bridged sets)."""
    who = [guest.bridge, guest.mac] if guest.bridge is not None else [guest.iface]
    return [concat(*who, str(a)) for a in guest.own(version)]


def guest_antispoof_rules(guest: Guest) -> list[list[Expr]]:
    """What stays in the guest's own inet chain: its MAC (a routed guest
    given one; a bridge port's MAC is part of its dispatch key) and the
    targets its neighbour advertisements may claim."""
    drop = goto(guest_chain(guest.name, "drop"))
    rules: list[list[Expr]] = []
    if guest.mac is not None and guest.bridge is None:
        rules.append([match(payload("ether", "saddr"), guest.mac, "!="), drop])
    rules.append(_advert_rule(guest.own(6), drop))
    return rules


def _arp_rules(guest: Guest, drop: Expr) -> list[list[Expr]]:
    rules = []
    if guest.mac is not None:
        rules.append([match(payload("arp", "saddr ether"), guest.mac, "!="), drop])
    senders = [str(a) for a in guest.own(4)] + ["0.0.0.0"]
    rules.append([*_none_of(payload("arp", "saddr ip"), senders), drop])
    return rules


def _none_of(left: Expr, values: Sequence[object]) -> list[Expr]:
    return [match(left, value, "!=") for value in values]


def _advert_rule(own6: Sequence[ipaddress.IPv6Address], drop: Expr) -> list[Expr]:
    """Drop neighbour advertisements for targets that are neither link-local nor the guest's."""
    link_local_bits = hex(int(LINK_LOCAL.network_address) >> 64)
    exprs = [
        match(payload("icmpv6", "type"), "nd-neighbor-advert"),
        match(raw_th(_ND_TARGET_BITS, 64), link_local_bits, "!="),
    ]
    exprs += _none_of(raw_th(_ND_TARGET_BITS, 128), [hex(int(a)) for a in own6])
    return [*exprs, drop]

