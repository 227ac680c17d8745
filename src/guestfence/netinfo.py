"""What the kernel says about this host's addresses, through pyroute2.

How ``@host`` is answered at decision time is guestfence.sandbox.route's
job (one raw netlink question, no list kept); this module lists addresses.

pyroute2 is imported when first asked (it takes ~80 ms to import; most
commands never need it).
"""

from __future__ import annotations

import ipaddress

from guestfence.errors import HostError
from guestfence.policy.model import Address


def collect_host_addresses() -> tuple[Address, ...]:
    """Every address configured on any interface of this network namespace."""
    from pyroute2 import IPRoute

    try:
        with IPRoute() as ipr:
            # On a point-to-point link IFA_ADDRESS is the peer's; IFA_LOCAL is ours.
            found = {ipaddress.ip_address(a.get("IFA_LOCAL") or a.get("IFA_ADDRESS")) for a in ipr.get_addr()}
    except OSError as exc:
        raise HostError(f"cannot list host addresses: {exc}") from exc
    return tuple(sorted(found, key=lambda a: (a.version, a)))


def interface_addresses(name: str) -> tuple[Address, ...] | None:
    """The addresses configured on interface ``name``; None when there is no such interface."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=name)
            if not found:
                return None
            addresses = ipr.get_addr(index=found[0])
    except (OSError, NetlinkError) as exc:
        raise HostError(f"cannot read interface {name}: {exc}") from exc
    return tuple(ipaddress.ip_address(a.get("IFA_LOCAL") or a.get("IFA_ADDRESS")) for a in addresses)
