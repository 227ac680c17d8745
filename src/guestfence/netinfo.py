"""What the kernel says about this host's addresses, through pyroute2.

How ``@host`` is answered at decision time is guestfence.sandbox.route's
job (one raw netlink question, no list kept); this module lists.
"""

from __future__ import annotations

import ipaddress

from pyroute2 import IPRoute

from guestfence.errors import HostError
from guestfence.policy.model import Address


def collect_host_addresses() -> tuple[Address, ...]:
    """Every address configured on any interface of this network namespace."""
    try:
        with IPRoute() as ipr:
            # On a point-to-point link IFA_ADDRESS is the peer's; IFA_LOCAL is ours.
            found = {ipaddress.ip_address(a.get("IFA_LOCAL") or a.get("IFA_ADDRESS")) for a in ipr.get_addr()}
    except OSError as exc:
        raise HostError(f"cannot list host addresses: {exc}") from exc
    return tuple(sorted(found, key=lambda a: (a.version, a)))


def link_addresses(name: str) -> tuple[Address, ...] | None:
    """The addresses configured on link ``name``, or None when there is no such link."""
    try:
        with IPRoute() as ipr:
            indexes = ipr.link_lookup(ifname=name)
            if not indexes:
                return None
            found = {ipaddress.ip_address(a.get("IFA_LOCAL") or a.get("IFA_ADDRESS")) for a in ipr.get_addr(index=indexes[0])}
    except OSError as exc:
        raise HostError(f"cannot list the addresses of {name}: {exc}") from exc
    return tuple(sorted(found, key=lambda a: (a.version, a)))
