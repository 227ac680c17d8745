"""A VM guest as guestfence knows it: a value, valid once it exists. Pure.

``parse_guest`` turns what a user typed (command line or a ``[[guest]]``
table) into a ``Guest``, checking every field: the name against
``names.GUEST_NAME``, interface names against ``IFACE_NAME`` (a subset of
what Linux allows that can never be read as an nftables wildcard ``*``, set
reference ``@`` or variable ``$`` even though we only ever pass them as JSON
data), addresses, gateways and the MAC. Errors are PolicyError naming the
field and the offending text.

``guest_to_json``/``guest_from_json`` are the recorded form (state file);
``recorded_guest`` checks a record as ``guest_from_json`` does and reads only
what ``guest add`` needs of the other guests, without making them.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping
from typing import Any, Union, final

from guestfence.errors import PolicyError
from guestfence.guests.names import DEFAULT_PATTERN, GUEST_NAME
from guestfence.policy.model import parse_policy
from guestfence.policy.model import Address, Policy
from guestfence.value import Value, init_field

Interface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]

IFACE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}\Z")
GUEST_PATTERN = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_.-]{0,14}\*?)?\Z")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")
COMMENT_MAX_BYTES = 80
"""nft keeps at most 128 bytes of a rule comment, and ours is "guest NAME: COMMENT"
with NAME up to 32 characters: 80 bytes always fit."""
COMMENT_HELP = (f"free text shown in the ruleset: at most {COMMENT_MAX_BYTES} bytes of printable text without "
                "'\"' (so that `nft list ruleset` output loads back)")  # fmt: skip


@final
class Guest(Value):
    """One guest: its link, its own addresses, its gateway(s) and its policy.

    ``addresses`` are the guest's own (with their prefix, as configured in
    the guest); ``gateways`` are the host-side addresses ``@gateway``
    stands for. ``bridge`` names the bridge whose port ``iface`` is, for
    guests attached through a bridge (they need ``mac``).
    """

    __slots__ = ("name", "iface", "addresses", "gateways", "policy", "mac", "masquerade", "bridge", "comment")
    name: str
    iface: str
    addresses: tuple[Interface, ...]
    gateways: tuple[Address, ...]
    policy: Policy
    mac: str | None
    masquerade: bool
    bridge: str | None
    comment: str

    def __init__(self, *, name: str, iface: str, addresses: tuple[Interface, ...], gateways: tuple[Address, ...] = (),
                 policy: Policy | None = None, mac: str | None = None, masquerade: bool = False,
                 bridge: str | None = None, comment: str = "") -> None:
        init_field(self, "name", name)
        init_field(self, "iface", iface)
        init_field(self, "addresses", addresses)
        init_field(self, "gateways", gateways)
        init_field(self, "policy", Policy() if policy is None else policy)
        init_field(self, "mac", mac)
        init_field(self, "masquerade", masquerade)
        init_field(self, "bridge", bridge)
        init_field(self, "comment", comment)
        if not GUEST_NAME.match(self.name):
            raise ValueError(f"invalid guest name {self.name!r}")
        for iface in (self.iface,) if self.bridge is None else (self.iface, self.bridge):
            if not IFACE_NAME.match(iface) or iface in (".", ".."):
                raise ValueError(f"invalid interface name {iface!r}")
        if not self.addresses:
            raise ValueError("a guest needs at least one address")
        if self.mac is not None and not _MAC.match(self.mac):
            raise ValueError(f"invalid MAC {self.mac!r}")
        if self.bridge is not None and self.mac is None:
            raise ValueError("a guest behind a bridge needs a MAC")

    def own(self, version: int) -> tuple[Address, ...]:
        """The guest's own addresses of one IP version."""
        return tuple(i.ip for i in self.addresses if i.version == version)

    def gateways_of(self, version: int) -> tuple[Address, ...]:
        return tuple(g for g in self.gateways if g.version == version)


def parse_guest(
    *,
    name: str,
    iface: str,
    addresses: Iterable[str],
    gateways: Iterable[str] = (),
    policy: Policy | None = None,
    mac: str | None = None,
    masquerade: bool = False,
    bridge: str | None = None,
    comment: str = "",
    where: str = "",
) -> Guest:
    """A guest from typed text. ``where`` prefixes errors (e.g. a file and line)."""
    if not isinstance(name, str) or not GUEST_NAME.match(name):
        raise PolicyError(
            f"{where}invalid guest name {name!r} (expected 1-32 letters, digits, '-' or '_', starting with a letter or digit)"
        )
    for label, value in (("interface", iface), ("bridge", bridge)):
        if label == "bridge" and value is None:
            continue
        if not isinstance(value, str) or not IFACE_NAME.match(value) or value in (".", ".."):
            raise PolicyError(
                f"{where}guest {name}: invalid {label} name {value!r} "
                "(expected 1-15 letters, digits, '_', '.' or '-', not starting with '.' or '-')"
            )
    own = tuple(_parse_interface(text, name, where) for text in addresses)
    if not own:
        raise PolicyError(f"{where}guest {name}: no address (give the guest's own address, e.g. --address 192.0.2.2/30)")
    gws = tuple(_parse_address(text, name, where) for text in gateways)
    if mac is not None:
        mac = mac.lower() if isinstance(mac, str) else mac
        if not isinstance(mac, str) or not _MAC.match(mac):
            raise PolicyError(f"{where}guest {name}: invalid MAC {mac!r} (expected six hex pairs, e.g. 02:00:00:00:00:01)")
    if bridge is not None and mac is None:
        raise PolicyError(f"{where}guest {name}: a guest behind bridge {bridge!r} needs --mac (it is how the host tells guests on one bridge apart)")
    if not isinstance(comment, str):
        raise PolicyError(f"{where}guest {name}: the comment must be text")
    problem = comment_problem(comment)
    if problem:
        raise PolicyError(f"{where}guest {name}: invalid comment {comment!r}: {problem}")
    return Guest(
        name=name,
        iface=iface,
        addresses=own if len(own) == 1 else tuple(dict.fromkeys(own)),  # (hashing an interface is not free)
        gateways=gws if len(gws) < 2 else tuple(dict.fromkeys(gws)),
        policy=policy or Policy(),
        mac=mac,
        masquerade=bool(masquerade),
        bridge=bridge,
        comment=comment,
    )


def comment_problem(comment: str) -> str | None:
    """Why nft could not list ``comment`` in a form that loads back, or None.
    A '"' would end the quoted comment in ``nft list ruleset`` output and let
    the rest be read as ruleset text."""
    if '"' in comment:
        return "'\"' is not allowed (nft could not load the listed ruleset back)"
    if not comment.isprintable():
        return "only printable characters are allowed (no newlines, tabs or control characters)"
    if len(comment.encode("utf-8")) > COMMENT_MAX_BYTES:
        return f"at most {COMMENT_MAX_BYTES} bytes (nft keeps 128 for the whole rule comment)"
    return None


def parse_pattern(text: str, *, where: str = "") -> str:
    """The interface pattern of unregistered guests: a name with an optional
    trailing ``*``, or empty to turn the check off."""
    if not isinstance(text, str) or not GUEST_PATTERN.match(text):
        raise PolicyError(f"{where}invalid guest interface pattern {text!r} (expected e.g. 'vmtap*', or '' for none)")
    return text


def _parse_interface(text: str, guest: str, where: str) -> Interface:
    try:
        iface = _fast_interface(text)
    except (ValueError, TypeError):
        raise PolicyError(f"{where}guest {guest}: invalid address {text!r} (expected e.g. 192.0.2.2/30 or 2001:db8::2/64)") from None
    problem = _own_address_problem(iface.ip)  # (.ip is made anew at each access)
    if problem:
        raise PolicyError(f"{where}guest {guest}: {text!r} {problem}")
    return iface


def _own_address_problem(ip: Address) -> str | None:
    """Why ``ip`` cannot be a guest's own address, or None."""
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return "is IPv4-mapped; give the IPv4 address"
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
        return "cannot be a guest's own address"
    return None


# Reading the record of 1000 guests parses 2000 addresses on every `guest add`;
# ipaddress parses text in Python (and ip_address/ip_interface try IPv4 first),
# inet_pton in C. The result is built from the number, so it is the same value;
# what inet_pton refuses (a scope "%eth0", a netmask prefix) goes to ipaddress,
# which accepts or refuses it as before. test_guest.py compares the two.
_FAMILY = {4: (socket.AF_INET, ipaddress.IPv4Address, ipaddress.IPv4Interface),
           6: (socket.AF_INET6, ipaddress.IPv6Address, ipaddress.IPv6Interface)}  # fmt: skip


def _fast_address(text: str) -> Address:
    family, address, _ = _FAMILY[6 if ":" in text else 4]
    try:
        return address(int.from_bytes(socket.inet_pton(family, text), "big"))
    except OSError:
        return address(text)


def _plain_interface(text: str) -> tuple[int, int, int] | None:
    """(version, address as a number, prefix length) of an interface in the
    plain form inet_pton reads (``192.0.2.2/30``, ``2001:db8::2``), else None."""
    version = 6 if ":" in text else 4
    addr, slash, prefix = text.partition("/")
    if not slash or (prefix.isascii() and prefix.isdigit() and len(prefix) <= 3 and int(prefix) <= (32 if version == 4 else 128)):
        try:
            packed = socket.inet_pton(_FAMILY[version][0], addr)
        except OSError:
            return None
        return version, int.from_bytes(packed, "big"), int(prefix) if slash else 8 * len(packed)
    return None


def _fast_interface(text: str) -> Interface:
    plain = _plain_interface(text)
    if plain is None:
        return _FAMILY[6 if ":" in text else 4][2](text)
    version, number, prefix = plain
    return _FAMILY[version][2]((number, prefix))


_REFUSED_OWN = {version: tuple((int(net.netmask), int(net.network_address)) for net in map(ipaddress.ip_network, nets))
                for version, nets in ((4, ("0.0.0.0/32", "127.0.0.0/8", "224.0.0.0/4")),
                                      (6, ("::/128", "::1/128", "ff00::/8", "::ffff:0:0/96")))}  # fmt: skip
"""What ``_own_address_problem`` refuses (unspecified, loopback, multicast,
IPv4-mapped), as (netmask, network) numbers: test_guest.py compares the two."""


def own_address_of(text: Any) -> tuple[int, int] | None:
    """The address (without its prefix) that a recorded guest's own address
    ``text`` stands for, as (version, number), when it is in the plain form
    and ``parse_guest`` accepts it; None when telling takes ``parse_guest``.
    Makes no interface (nor its network: two per recorded guest, a tenth of
    ``guest add`` at 1000), nor address."""
    plain = _plain_interface(text) if isinstance(text, str) else None
    if plain is None:
        return None
    version, number, _ = plain
    for mask, network in _REFUSED_OWN[version]:
        if number & mask == network:
            return None
    return version, number


def packed_address(text: Any) -> bytes | None:
    """An address in the plain form inet_pton reads (which ``ipaddress``
    reads the same, see ``_fast_address``), as bytes; else None."""
    if not isinstance(text, str):
        return None
    try:
        return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
    except OSError:
        return None


def gateway_of(text: Any) -> bool:
    """Whether ``parse_guest`` accepts the recorded gateway ``text``, when it
    is in the plain form inet_pton reads (else False: parse it)."""
    packed = packed_address(text)
    return packed is not None and (len(packed) == 4 or packed[:12] != _MAPPED_PREFIX)


_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


def _parse_address(text: str, guest: str, where: str) -> Address:
    try:
        address = _fast_address(text)
    except (ValueError, TypeError):
        raise PolicyError(f"{where}guest {guest}: invalid gateway {text!r} (expected an address, e.g. 192.0.2.1)") from None
    if address.version == 6 and address.ipv4_mapped is not None:
        raise PolicyError(f"{where}guest {guest}: gateway {text!r} is IPv4-mapped; give the IPv4 address")
    return address


def policy_to_json(policy: Policy) -> dict[str, Any]:
    """The whole policy, ``unix://`` rules included (the firewall ignores them,
    and says so when they are given): the record reads back equal to what was
    registered, as an integration's check compares."""
    return {
        "default": policy.default.value,
        "allow": [str(r) for r in policy.allow + policy.allow_unix],
        "deny": [str(r) for r in policy.deny + policy.deny_unix],
    }


def guest_to_json(guest: Guest) -> dict[str, Any]:
    return {
        "name": guest.name,
        "iface": guest.iface,
        "address": [str(a) for a in guest.addresses],
        "gateway": [str(g) for g in guest.gateways],
        "policy": policy_to_json(guest.policy),
        "mac": guest.mac,
        "masquerade": guest.masquerade,
        "bridge": guest.bridge,
        "comment": guest.comment,
    }


@functools.lru_cache(maxsize=1024)
def _recorded_policy(default: str, allow: tuple[str, ...], deny: tuple[str, ...]) -> Policy:
    """Recorded guests mostly share their policies: each distinct one is
    parsed once per process (1000 guests: 60 ms -> under 1 ms). A Policy is
    immutable, so guests can share it."""
    return parse_policy(allow=allow, deny=deny, default=default)


def guest_from_json(data: Mapping[str, Any], *, where: str) -> Guest:
    """The inverse of ``guest_to_json``. Raises PolicyError naming ``where``."""
    try:
        policy_data = data["policy"]
        policy = _recorded_policy(policy_data["default"], tuple(policy_data["allow"]), tuple(policy_data["deny"]))
        return parse_guest(
            name=data["name"],
            iface=data["iface"],
            addresses=data["address"],
            gateways=data["gateway"],
            policy=policy,
            mac=data["mac"],
            masquerade=data["masquerade"],
            bridge=data["bridge"],
            comment=data["comment"],
            where=f"{where}: ",
        )
    except (KeyError, TypeError) as exc:
        raise PolicyError(f"{where}: malformed guest record ({exc!r})") from None


RecordedFields = tuple[str, str, Union[str, None], Union[str, None], bool, tuple[tuple[int, int], ...], Policy]
"""What ``guest add`` needs of another recorded guest, read without making
it (``recorded_guest``): (name, iface, bridge, mac, masquerade, addresses,
policy), the addresses as (version, number). A tuple: one is made for each
recorded guest at every ``guest add``, and a Value of seven fields costs as
much as reading the record."""


def recorded_guest(data: Mapping[str, Any]) -> RecordedFields | None:
    """``data`` read as ``guest_from_json`` reads it, without making the
    guest, when the record is in the form guestfence writes and
    ``guest_from_json`` accepts it; None when telling takes
    ``guest_from_json`` (an unusual form, or an error to report)."""
    try:
        policy_data = data["policy"]
        policy = _recorded_policy(policy_data["default"], tuple(policy_data["allow"]), tuple(policy_data["deny"]))
        name, iface, bridge, mac, comment = data["name"], data["iface"], data["bridge"], data["mac"], data["comment"]
        texts, gateways, masquerade = data["address"], data["gateway"], data["masquerade"]
    except Exception:  # noqa: BLE001 - whatever it is, guest_from_json says it
        return None
    if not (isinstance(name, str) and GUEST_NAME.match(name) and isinstance(iface, str) and IFACE_NAME.match(iface)
            and iface not in (".", "..") and type(texts) is list and texts and type(gateways) is list):  # fmt: skip
        return None
    if bridge is not None and (not isinstance(bridge, str) or not IFACE_NAME.match(bridge) or bridge in (".", "..") or mac is None):
        return None
    if mac is not None and (not isinstance(mac, str) or not _MAC.match(mac.lower())):
        return None
    if not isinstance(comment, str) or comment_problem(comment) is not None:
        return None
    # Loops, not generators: this runs for every recorded guest, and three
    # generators a record were more than half of it.
    addresses = []
    for text in texts:
        address = own_address_of(text)
        if address is None:
            return None
        addresses.append(address)
    if len(addresses) > 1 and len(set(addresses)) != len(addresses):
        return None  # (an address twice: parse_guest keeps one of each interface)
    for text in gateways:
        if not gateway_of(text):
            return None
    return name, iface, bridge, None if mac is None else mac.lower(), bool(masquerade), tuple(addresses), policy
