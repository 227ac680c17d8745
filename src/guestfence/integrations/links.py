"""The host side of a guest's link, set up for the integrations whose host
software leaves it bare (a QEMU ``script=``, libvirt's ``type='ethernet'``).
Through pyroute2, in the current network namespace.

``give_gateways`` puts each gateway on a routed guest's interface, with the
prefix of the guest's own address of that version (192.0.2.1/30), unless it
is there: the host side of the link ``@gateway`` names, needed before the
guest is registered (registration checks the gateway is on its link).
``raise_link`` attaches a bridge-port guest's interface to its bridge and
sets the interface up: called only once the guest's rules are in force.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from guestfence.errors import HostError
from guestfence.guests.guest import Guest

_IFA_F_NODAD = 0x80
"""An IPv6 address usable at once: the link is the guest's alone."""


def gateway_addresses(guest: Guest) -> list[str]:
    """The interface's own addresses for a routed guest. Pure."""
    if guest.bridge is not None:
        return []
    found = []
    for gateway in guest.gateways:
        own = next((a for a in guest.addresses if a.version == gateway.version and gateway in a.network), None)
        if own is not None:
            found.append(f"{gateway}/{own.network.prefixlen}")
    return found


@contextmanager
def _link(guest: Guest, doing: str) -> Iterator[tuple[Any, int]]:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=guest.iface)
            if not found:
                raise HostError(f"interface {guest.iface} of guest {guest.name} does not exist")
            yield ipr, found[0]
    except NetlinkError as exc:
        raise HostError(f"{doing} {guest.iface}: {exc}") from None


def give_gateways(guest: Guest) -> None:
    wanted = gateway_addresses(guest)
    if not wanted:
        return
    with _link(guest, "addressing") as (ipr, index):
        present = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index)}
        for text in wanted:
            address = ipaddress.ip_interface(text)
            if (str(address.ip), address.network.prefixlen) not in present:
                extra = {"flags": _IFA_F_NODAD} if address.version == 6 else {}
                ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen, **extra)


def raise_link(guest: Guest) -> None:
    with _link(guest, "setting up") as (ipr, index):
        if guest.bridge is not None:
            bridges = ipr.link_lookup(ifname=guest.bridge)
            if not bridges:
                raise HostError(f"bridge {guest.bridge} of guest {guest.name} does not exist")
            ipr.link("set", index=index, master=bridges[0])
        ipr.link("set", index=index, state="up")
