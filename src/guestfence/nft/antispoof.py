"""Anti-spoofing rules: what a guest may claim to be. Pure.

Every rule here ends in ``goto DROP_CHAIN`` of the guest (counted, logged):
a frame or packet that does not come from the guest's own MAC and
addresses is dropped before any other rule sees it. The same rules serve
the ``inet`` table (routed guests) and the ``bridge`` table (bridge ports),
which adds the L2 checks only it can see: ethertypes and ARP.

What a guest may claim:
- source MAC: the guest's ``mac``, when one is given (bridged guests must);
- IPv4 source: its own IPv4 addresses; no IPv4 at all when it has none;
- IPv6 source: its own IPv6 addresses, any link-local (fe80::/64, which we
  cannot know in advance), and ``::`` only for duplicate address detection
  and multicast listener reports;
- neighbour advertisements: only for its own or link-local targets;
- never router advertisements or redirects;
- ARP (bridge and arp tables): sender MAC and IPv4 its own (0.0.0.0 for
  address probes).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from guestfence.nft.build import (
    Expr,
    goto,
    match,
    meta,
    net_value,
    one_or_set,
    payload,
    raw_th,
)
from guestfence.nft.guest import Guest
from guestfence.nft.names import ARP, BRIDGE, guest_chain

LINK_LOCAL = ipaddress.IPv6Network("fe80::/64")
UNSPECIFIED_SOURCE_ICMPV6 = ("nd-neighbor-solicit", "mld-listener-report", "mld2-listener-report")
_ND_TARGET_BITS = 64
"""The target address of a neighbour advertisement starts 64 bits into the ICMPv6 header."""


def antispoof_rules(guest: Guest, family: str) -> list[list[Expr]]:
    """The anti-spoofing rules of ``guest`` in ``family`` (inet, bridge or arp)."""
    drop = goto(guest_chain(guest.name, "drop"))
    if family == ARP:
        return _arp_rules(guest, drop)
    rules: list[list[Expr]] = []
    if guest.mac is not None:
        rules.append([match(payload("ether", "saddr"), guest.mac, "!="), drop])
    if family == BRIDGE:
        rules.append([match(payload("ether", "type"), {"set": ["ip", "ip6", "arp"]}, "!="), drop])
        rules.extend(_arp_rules(guest, drop))
    own4, own6 = guest.own(4), guest.own(6)
    if own4:
        rules.append([match(payload("ip", "saddr"), one_or_set([str(a) for a in own4]), "!="), drop])
    else:
        rules.append([match(meta("protocol"), "ip"), drop])
    allowed6 = [str(a) for a in own6] + [net_value(LINK_LOCAL), "::"]
    rules.append([match(payload("ip6", "saddr"), {"set": allowed6}, "!="), drop])
    rules.append(
        [
            match(payload("ip6", "saddr"), "::"),
            match(payload("icmpv6", "type"), {"set": list(UNSPECIFIED_SOURCE_ICMPV6)}, "!="),
            drop,
        ]
    )
    rules.append(_advert_rule(own6, drop))
    rules.append([match(payload("icmpv6", "type"), {"set": ["nd-router-advert", "nd-redirect"]}), drop])
    rules.append([match(payload("icmp", "type"), "redirect"), drop])
    return rules


def _arp_rules(guest: Guest, drop: Expr) -> list[list[Expr]]:
    rules = []
    if guest.mac is not None:
        rules.append([match(payload("arp", "saddr ether"), guest.mac, "!="), drop])
    senders = [str(a) for a in guest.own(4)] + ["0.0.0.0"]
    rules.append([match(payload("arp", "saddr ip"), one_or_set(senders), "!="), drop])
    return rules


def _advert_rule(own6: Sequence[ipaddress.IPv6Address], drop: Expr) -> list[Expr]:
    """Drop neighbour advertisements for targets that are neither link-local nor the guest's."""
    link_local_bits = hex(int(LINK_LOCAL.network_address) >> 64)
    exprs = [
        match(payload("icmpv6", "type"), "nd-neighbor-advert"),
        match(raw_th(_ND_TARGET_BITS, 64), link_local_bits, "!="),
    ]
    if own6:
        targets = [hex(int(a)) for a in own6]
        exprs.append(match(raw_th(_ND_TARGET_BITS, 128), one_or_set(targets), "!="))
    return [*exprs, drop]

