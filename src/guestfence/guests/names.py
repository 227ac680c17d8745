"""Every name guestfence gives an nftables object. Nothing else names objects.

Our objects live in tables called ``TABLE`` in three families: ``inet``
(the decisions), ``arp`` (ARP anti-spoofing for routed guests) and
``bridge`` (anti-spoofing for guests whose interface is a bridge port).
Nothing outside these tables is ever created, changed or deleted.

The one per-guest name (``guest.NAME.nd``) joins parts with ``SEPARATOR``,
a character ``GUEST_NAME`` does not allow, so guest ``a`` can never own
guest ``a.x``'s objects and no per-guest name equals a base chain's or a
profile's (``policy.DIGEST``). Guest names are checked with
``GUEST_NAME`` once, where they enter (command line, TOML file, state file).
"""

from __future__ import annotations

import re

from guestfence.nftables.build import Table
from guestfence.nftables.match import ICMP_PROTOS, TO_HOST_TYPES

TABLE = "guestfence"
OURS = Table(TABLE)
"""The command builders for our tables (guestfence.nftables.build.Table)."""
INET, ARP, BRIDGE = "inet", "arp", "bridge"
FAMILIES = (INET, ARP, BRIDGE)

SEPARATOR = "."
DEFAULT_PATTERN = "vmtap*"
"""Interfaces of unregistered guests: traffic from them is dropped (``guest_pattern``)."""
GUEST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}\Z")

# Base chains, maps and sets, one of each per table that has them. Per-guest
# data is only ever an element of these (keyed by the guest's interface, or
# by ``bridge . MAC`` in inet for a bridge port), never a rule.
PREROUTING = "prerouting"
POSTROUTING = "postrouting"
INPUT = "input"
FORWARD = "forward"
UNREGISTERED = "unregistered"
REDISPATCH = "redispatch"
"""inet: prerouting's dispatch, run again in input and forward for connections the host translated."""
SCREEN = "screen"
"""The checks every guest's packets pass (inet: the shared part of the profile;
arp, bridge: all of anti-spoofing), one chain for all guests."""
SCREEN_BRIDGED = "screen_bridged"
"""inet: the same for guests behind a bridge."""
DROP = "guest_drop"
"""The drop of every guest: the log (rate-limited per guest), its counter, drop.
(Not "drop": a chain named like a keyword would not load back from ``nft list``.)"""
DROP_BRIDGED = "guest_drop_bridged"
"""inet: the same for guests behind a bridge (keyed by bridge . MAC)."""
DISPATCH = {4: "dispatch4", 6: "dispatch6"}
"""inet: interface . source address -> goto the guest's policy profile: the
dispatch is the anti-spoofing check (a source not the guest's own misses)."""
BRIDGED_DISPATCH = {4: "bridged_dispatch4", 6: "bridged_dispatch6"}
"""inet: bridge . MAC . source address -> goto the profile of a guest behind that bridge."""
GUESTS_MAP = "guests"
"""inet: interface -> goto the profile, for IPv6 link-local and ``::`` sources;
arp and bridge: interface -> goto ``screen``. Every family: closed interfaces -> ``unregistered``."""
BRIDGED_MAP = "bridged"
"""inet: bridge . MAC -> goto the profile, for IPv6 link-local and ``::`` sources."""
DROPS_MAP = "drops"
"""inet: interface -> goto ``guest_drop``: the packets of a guest the dispatch missed (spoofed sources)."""
BRIDGED_DROPS_MAP = "bridged_drops"
"""inet: bridge . MAC -> goto ``guest_drop_bridged``."""
PORTS_MAP = "ports"
"""bridge: port -> goto ``guest_drop``, for frames bridged to other ports."""
ND_TARGETS = "nd_targets"
"""inet (routed guests), bridge: interface -> jump the guest's ``guest.NAME.nd`` chain
(the targets its neighbour advertisements may claim), or goto ``guest_drop`` for a guest
without IPv6 addresses. nft 1.0.6 can key no set by the raw ND target."""
SOURCES = {4: "sources4", 6: "sources6"}
"""arp (IPv4), bridge: interface . source address, every guest's own addresses."""
WITH_MAC = "with_mac"
"""arp: interfaces of routed guests given a MAC."""
MACS = "macs"
"""inet, arp: interface . MAC of routed guests given one; bridge: port . MAC."""
GATEWAYS = {4: "gateways4", 6: "gateways6"}
"""inet: interface . address, what ``@gateway`` stands for, per guest."""
BRIDGED_GATEWAYS = {4: "bridged_gateways4", 6: "bridged_gateways6"}
ACCEPTED = "accepted"
"""inet: interfaces, each element counting the packets of its guest accepted
(a lookup that finds an element counts into it: the guest's counter is its element)."""
DROPPED = "dropped"
"""every family: interfaces, each element counting the packets of its guest dropped."""
BRIDGED_ACCEPTED, BRIDGED_DROPPED = "bridged_accepted", "bridged_dropped"
"""inet: the same two keyed by bridge . MAC."""
COUNTING = {(INET, ACCEPTED): "accepted", (INET, BRIDGED_ACCEPTED): "accepted", (INET, DROPPED): "dropped",
            (INET, BRIDGED_DROPPED): "dropped", (ARP, DROPPED): "dropped", (BRIDGE, DROPPED): "dropped"}  # fmt: skip
"""(family, set) -> what its elements count, for status."""
LOG_RATE_METER = "log_rate"
"""every family: the meter (a dynamic set the drop chain fills) limiting each
interface's drop log lines; ``log_rate_bridged``: by bridge . MAC in inet."""
BRIDGED_LOG_RATE_METER = "log_rate_bridged"
GUEST_ADDRS = {4: "guest_addrs4", 6: "guest_addrs6"}
"""Every registered guest's own addresses: only rules naming them reach another guest."""
MASQUERADE = {4: "masquerade4", 6: "masquerade6"}
"""Source addresses of guests registered with masquerade."""
GENERATION = "generation"
"""inet: one element, the recorded change the tables hold (see compile.Settings)."""
PROFILE = "policy"
"""Chains ``policy.DIGEST[.host|.out]``: a compiled policy, shared by every guest it compiles to the same rules for."""

# Constant sets, shared by every guest's rules (compile.CONSTANT_SETS holds
# their elements). Named, not anonymous: libnftables reads every set of the
# table before changing elements, so per-rule anonymous sets would make
# adding a guest slower with every guest already there. The policy's
# matches name two of them (TO_HOST_TYPES, ICMP_PROTOS, imported above from
# the shared match compiler that names them).
LINK_ICMPV6 = "link_icmpv6"
MARTIANS6 = "martians6"
UNSPECIFIED_SOURCE_ICMPV6 = "unspecified_source_icmpv6"
SPOOF_ICMPV6 = "spoof_icmpv6"
ETHERTYPES = "ethertypes"


def guest_chain(guest: str, part: str | None = None) -> str:
    """``guest.NAME`` (the guest's entry chain) or ``guest.NAME.PART``."""
    return SEPARATOR.join(("guest", guest) if part is None else ("guest", guest, part))


def profile_chain(digest: str, part: str | None = None) -> str:
    """``policy.DIGEST`` (a profile's entry chain) or ``policy.DIGEST.PART``."""
    return SEPARATOR.join((PROFILE, digest) if part is None else (PROFILE, digest, part))



def guest_of(object_name: str) -> str | None:
    """The guest a per-guest object name belongs to, or None for base objects."""
    parts = object_name.split(SEPARATOR)
    if len(parts) >= 2 and parts[0] == "guest" and GUEST_NAME.match(parts[1]):
        return parts[1]
    return None


LOG_PREFIX = "guestfence drop: "
"""The kernel log prefix of every guest's dropped packets: one shared drop chain
cannot name the guest, the log line's ``IN=`` (and for a bridge port ``MAC=``) does."""
