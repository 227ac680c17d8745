"""``guestfence-qemu-ifup`` / ``guestfence-qemu-ifdown``: QEMU's
``-netdev tap,ifname=TAP,script=...,downscript=...`` pair.

QEMU runs ``script`` with the TAP's name as ``$1`` after creating the TAP
and before the guest runs; a non-zero exit aborts QEMU's start. The guest
comes from a guests file, the same ``[[guest]]`` tables as ``guestfence
apply`` (``$GUESTFENCE_GUESTS``, else /etc/guestfence/guests.toml): the table
whose ``iface`` is ``$1``, else the one whose ``name`` is ``$1`` (its
``iface`` is then taken to be ``$1``).

ifup, in this order, so the link carries nothing before its rules exist:
while the TAP is still down, attach it to the guest's ``bridge`` if it has
one, else give it each gateway address (with the prefix of the guest's
address of that version) unless it has it -- ``guest add`` checks that the
gateways are the link's; register the guest (one transaction, recorded);
set the TAP up. Any failure exits non-zero with the reason on stderr (and
removes the registration, since QEMU then runs no downscript).

ifdown removes the guest registered for ``$1`` (by interface, else by name)
and succeeds when there is none: the TAP is gone, and its rules must go
before another TAP of that name comes.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from guestfence.config import load_config
from guestfence.errors import GuestfenceError, HostError, PolicyError
from guestfence.integrations import registry
from guestfence.nft.guest import Guest
from guestfence.state import state_dir

ENV_GUESTS = "GUESTFENCE_GUESTS"
DEFAULT_GUESTS = Path("/etc/guestfence/guests.toml")


def guests_file() -> Path:
    return Path(os.environ.get(ENV_GUESTS) or DEFAULT_GUESTS)


def select_guest(guests: Sequence[Guest], tap: str, *, source: str) -> Guest:
    """The guest for ``tap``: by interface, else by name. Pure."""
    match = next((g for g in guests if g.iface == tap), None) or next((g for g in guests if g.name == tap), None)
    if match is None:
        raise PolicyError(f"{source}: no [[guest]] has iface or name {tap!r}; refusing to start the guest unfiltered")
    return dataclasses.replace(match, iface=tap)


def gateway_addresses(guest: Guest) -> list[str]:
    """The TAP's own addresses for a routed guest: each gateway with the
    prefix of the guest's address of its version (192.0.2.1/30). Pure."""
    found = []
    for gateway in guest.gateways:
        own = next((a for a in guest.addresses if a.version == gateway.version), None)
        if own is not None and gateway in own.network:
            found.append(f"{gateway}/{own.network.prefixlen}")
    return found


def prepare_link(guest: Guest) -> None:
    """Attach the (down) TAP to the bridge, or give it the gateway addresses."""
    _with_link(guest, lambda ipr, index: _attach_or_address(ipr, index, guest))


def set_up(guest: Guest) -> None:
    _with_link(guest, lambda ipr, index: ipr.link("set", index=index, state="up"))


def _attach_or_address(ipr: Any, index: int, guest: Guest) -> None:
    if guest.bridge is not None:
        bridges = ipr.link_lookup(ifname=guest.bridge)
        if not bridges:
            raise HostError(f"bridge {guest.bridge} of guest {guest.name} does not exist")
        ipr.link("set", index=index, master=bridges[0])
        return
    present = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index)}
    for text in gateway_addresses(guest):
        address = ipaddress.ip_interface(text)
        if (str(address.ip), address.network.prefixlen) not in present:
            extra = {"flags": 0x80} if address.version == 6 else {}  # IFA_F_NODAD: usable at once
            ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen, **extra)


def _with_link(guest: Guest, action: Callable[[Any, int], None]) -> None:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=guest.iface)
            if not found:
                raise HostError(f"interface {guest.iface} does not exist")
            action(ipr, found[0])
    except NetlinkError as exc:
        raise HostError(f"setting up {guest.iface}: {exc}") from None


def run_ifup(tap: str) -> str:
    config = load_config(guests_file())
    guest = select_guest(config.guests, tap, source=config.source)
    directory = state_dir()
    prepare_link(guest)
    registry.register(guest, directory)
    try:
        set_up(guest)
    except BaseException:
        # QEMU will not start, so no downscript will run: take the rules back.
        registry.unregister_where(lambda g: g.name == guest.name, directory)
        raise
    return f"guest {guest.name} registered on {tap}"


def run_ifdown(tap: str) -> str:
    gone = registry.unregister_where(lambda g: g.iface == tap, state_dir())
    return f"guest {', '.join(gone)} removed from {tap}" if gone else f"no guest registered on {tap}"


def _main(prog: str, action: Callable[[str], str]) -> NoReturn:
    if len(sys.argv) < 2 or not sys.argv[1]:
        print(f"{prog}: usage: {prog} TAP (QEMU passes the interface name)", file=sys.stderr)
        sys.exit(2)
    try:
        print(f"{prog}: {action(sys.argv[1])}", file=sys.stderr)
    except GuestfenceError as err:
        from guestfence.cli import EXIT_CODES

        print(f"{prog}: {err}", file=sys.stderr)
        sys.exit(next((code for cls, code in EXIT_CODES if isinstance(err, cls)), 1))
    sys.exit(0)


def ifup() -> NoReturn:
    _main("guestfence-qemu-ifup", run_ifup)


def ifdown() -> NoReturn:
    _main("guestfence-qemu-ifdown", run_ifdown)
