"""Anti-spoofing rules: what a guest may claim to be. Pure.

Every rule here ends in a drop chain (counted per guest, logged): a frame
or packet that does not come from the guest's own MAC and addresses is
dropped before any other rule sees it. No rule here is a guest's own: the
checks are written once, in shared chains, and read each guest's values
from set and map elements keyed by its interface (``source_keys`` and the
other element builders here):

- ``inet``: the dispatch itself checks the source. A packet reaches a
  guest's policy only through ``iifname . ip saddr vmap @dispatch4`` (and
  IPv6, and ``iifname . ether saddr . ip saddr`` for bridge ports), whose
  elements are the guest's own addresses; a packet of a registered
  interface the dispatch misses goes to ``guest_drop``, and so does ``::``
  outside DAD and MLD (``unspecified_source_rules``, in the dispatch).
  What the source cannot say is checked in ``screen`` (``screen_rules``):
  neighbour advertisement targets (through the per-guest chain
  ``guest.NAME.nd``: nft 1.0.6 can key no set by the raw ND target; a
  bridge port's are checked in the bridge table), router advertisements
  and redirects; and, for routed guests given a MAC, in their profile
  (``mac_rule``).
- ``arp`` (routed guests) and ``bridge`` (bridge ports, with the L2 checks
  only it can see: MAC, ethertypes, ARP): one ``screen`` chain each
  (``arp_screen_rules``, ``bridge_screen_rules``).

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
    DROP,
    ETHERTYPES,
    MACS,
    ND_TARGETS,
    SOURCES,
    SPOOF_ICMPV6,
    UNSPECIFIED_SOURCE_ICMPV6,
    WITH_MAC,
)

LINK_LOCAL = ipaddress.IPv6Network("fe80::/64")
_ND_TARGET_BITS = 64
"""The target address of a neighbour advertisement starts 64 bits into the ICMPv6 header."""
_LINK_LOCAL_BITS = hex(int(LINK_LOCAL.network_address) >> 64)


def unspecified_source_rules(drop: Expr) -> list[list[Expr]]:
    """Source ``::`` only for DAD and MLD. Two rules, because a match on the
    ICMPv6 type implies "is ICMPv6" and so can never drop a UDP or TCP packet."""
    return [
        [match(payload("ip6", "saddr"), "::"), match(meta("l4proto"), "ipv6-icmp", "!="), drop],
        [match(payload("ip6", "saddr"), "::"), match(payload("icmpv6", "type"), f"@{UNSPECIFIED_SOURCE_ICMPV6}", "!="), drop],
    ]  # fmt: skip


def screen_rules(drop: Expr, *, nd_targets: bool) -> list[list[Expr]]:
    """The source checks the dispatch cannot make, for every guest:
    advertised targets (``nd_targets``: through the ``nd_targets`` map;
    bridge ports are checked in the bridge table), router advertisements and
    redirects. ``drop``: the verdict of a failed check."""
    rules = [_advert_dispatch()] if nd_targets else []
    rules += [
        [match(payload("icmpv6", "type"), f"@{SPOOF_ICMPV6}"), drop],
        [match(payload("icmp", "type"), "redirect"), drop],
    ]
    return rules


def _advert_dispatch() -> list[Expr]:
    """Advertisements of a target that is not link-local go to the sender's ``guest.NAME.nd``."""
    return [
        match(payload("icmpv6", "type"), "nd-neighbor-advert"),
        match(raw_th(_ND_TARGET_BITS, 64), _LINK_LOCAL_BITS, "!="),
        vmap(meta("iifname"), ND_TARGETS),
    ]


def mac_rule(drop: Expr) -> list[Expr]:
    """A routed guest given a MAC: the frame's source MAC must be it (in its profile)."""
    return [match(concat(meta("iifname"), payload("ether", "saddr")), f"@{MACS}", "!="), drop]


def nd_rule(guest: Guest, drop: Expr) -> list[Expr]:
    """The one rule of ``guest.NAME.nd``: an advertised target (not link-local,
    checked before) must be one of the guest's IPv6 addresses."""
    return [*_none_of(raw_th(_ND_TARGET_BITS, 128), [hex(int(a)) for a in guest.own(6)]), drop]


def arp_screen_rules() -> list[list[Expr]]:
    """The arp table's ``screen``: sender MAC (guests given one) and sender IPv4."""
    drop = goto(DROP)
    iifname = meta("iifname")
    return [
        [match(iifname, f"@{WITH_MAC}"), match(concat(iifname, payload("arp", "saddr ether")), f"@{MACS}", "!="), drop],
        _arp_sender_rule(drop),
    ]


def bridge_screen_rules() -> list[list[Expr]]:
    """The bridge table's ``screen``, for every bridge port: MAC, ethertypes,
    ARP, IP sources, then what ``screen_rules`` checks, advertised targets included."""
    drop = goto(DROP)
    iifname = meta("iifname")
    return [
        [match(concat(iifname, payload("ether", "saddr")), f"@{MACS}", "!="), drop],
        [match(payload("ether", "type"), f"@{ETHERTYPES}", "!="), drop],
        [match(concat(iifname, payload("arp", "saddr ether")), f"@{MACS}", "!="), drop],
        _arp_sender_rule(drop),
        [match(concat(iifname, payload("ip", "saddr")), f"@{SOURCES[4]}", "!="), drop],
        [*_none_of(payload("ip6", "saddr"), [net_value(LINK_LOCAL), "::"]),
         match(concat(iifname, payload("ip6", "saddr")), f"@{SOURCES[6]}", "!="), drop],
        *unspecified_source_rules(drop),
        *screen_rules(drop, nd_targets=True),
    ]  # fmt: skip


def _arp_sender_rule(drop: Expr) -> list[Expr]:
    """ARP sender IPv4: the guest's own, or 0.0.0.0 (address probes)."""
    return [match(payload("arp", "saddr ip"), "0.0.0.0", "!="),
            match(concat(meta("iifname"), payload("arp", "saddr ip")), f"@{SOURCES[4]}", "!="), drop]  # fmt: skip


def source_keys(who: Sequence[str], addresses: Sequence[str]) -> list[object]:
    """Elements ``who . address`` (``who``: interface, or bridge and MAC; addresses as text)."""
    return [concat(*who, a) for a in addresses]


def _none_of(left: Expr, values: Sequence[object]) -> list[Expr]:
    """"Not one of these values" as one ``!=`` per value in the same rule: the
    values are few, and an anonymous set would make every later change slower."""
    return [match(left, value, "!=") for value in values]
