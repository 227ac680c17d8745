"""Every name guestfence gives an nftables object. Nothing else names objects.

Our objects live in tables called ``TABLE`` in three families: ``inet``
(the decisions), ``arp`` (ARP anti-spoofing for routed guests) and
``bridge`` (anti-spoofing for guests whose interface is a bridge port).
Nothing outside these tables is ever created, changed or deleted.

Per-guest names join parts with ``SEPARATOR``, a character ``GUEST_NAME``
does not allow, so guest ``a`` can never own guest ``a.x``'s objects and no
per-guest name equals a base chain's. Guest names are checked with
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

# Base chains, maps and sets, one of each per table that has them.
PREROUTING = "prerouting"
POSTROUTING = "postrouting"
INPUT = "input"
FORWARD = "forward"
UNREGISTERED = "unregistered"
GUESTS_MAP = "guests"
"""Interface name -> goto the guest's chain (inet, arp, bridge)."""
BRIDGED_MAP = "bridged"
"""inet: bridge name . source MAC -> goto the chain of a guest behind that bridge."""
PORTS_MAP = "ports"
"""bridge: port name -> goto the guest's drop chain, for frames bridged to other ports."""
DROPS_MAP = "drops"
"""inet: interface name -> goto the guest's drop chain (what the shared checks drop)."""
BRIDGED_DROPS_MAP = "bridged_drops"
"""inet: bridge name . source MAC -> goto the drop chain of a guest behind that bridge."""
SOURCES = {4: "sources4", 6: "sources6"}
"""inet: interface name . source address, every routed guest's own addresses (anti-spoofing)."""
BRIDGED_SOURCES = {4: "bridged_sources4", 6: "bridged_sources6"}
"""inet: bridge name . MAC . source address of the guests behind bridges."""
SCREEN = "screen"
SCREEN_BRIDGED = "screen_bridged"
"""inet: the checks every guest's packets pass first (antispoof.screen_rules), one chain for all guests."""
GUEST_ADDRS = {4: "guest_addrs4", 6: "guest_addrs6"}
"""Every registered guest's own addresses: only rules naming them reach another guest."""
MASQUERADE = {4: "masquerade4", 6: "masquerade6"}
"""Source addresses of guests registered with masquerade."""
GENERATION = "generation"
"""inet: one element, the recorded change the tables hold (see compile.Settings)."""

# Constant sets, shared by every guest's rules (compile.CONSTANT_SETS holds
# their elements). Named, not anonymous: libnftables reads every set of the
# table before changing elements, so per-rule anonymous sets would make
# adding a guest slower with every guest already there. The policy's
# matches name two of them (TO_HOST_TYPES, ICMP_PROTOS, imported above from
# the shared match compiler that names them).
LINK_ICMPV6 = "link_icmpv6"
UNSPECIFIED_SOURCE_ICMPV6 = "unspecified_source_icmpv6"
SPOOF_ICMPV6 = "spoof_icmpv6"
ETHERTYPES = "ethertypes"


def guest_chain(guest: str, part: str | None = None) -> str:
    """``guest.NAME`` (the guest's entry chain) or ``guest.NAME.PART``."""
    return SEPARATOR.join(("guest", guest) if part is None else ("guest", guest, part))


def guest_counter(guest: str, what: str) -> str:
    """``guest.NAME.accepted`` / ``guest.NAME.dropped``."""
    return guest_chain(guest, what)


def guest_of(object_name: str) -> str | None:
    """The guest a per-guest object name belongs to, or None for base objects."""
    parts = object_name.split(SEPARATOR)
    if len(parts) >= 2 and parts[0] == "guest" and GUEST_NAME.match(parts[1]):
        return parts[1]
    return None


def log_prefix(guest: str) -> str:
    """The kernel log prefix of a guest's dropped packets."""
    return f"guestfence drop {guest}: "
