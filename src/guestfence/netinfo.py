"""What the kernel says about this host's addresses, through pyroute2.

``@host`` means "local to the host at the moment of the decision", so this
module asks the kernel each time instead of keeping a list: an address
added a moment ago is local from its first packet.
"""

from __future__ import annotations

import ipaddress

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from guestfence.errors import HostError
from guestfence.policy.model import Address

RTN_LOCAL = 2


def lookup_is_local(address: Address) -> bool:
    """Whether the kernel routes ``address`` as local (``ip route get`` says ``local``).

    An address the kernel cannot route at all is not local.
    """
    try:
        with IPRoute() as ipr:
            routes = ipr.route("get", dst=str(address))
    except NetlinkError:
        return False
    except OSError as exc:
        raise HostError(f"route lookup for {address} failed: {exc}") from exc
    return bool(routes) and routes[0]["type"] == RTN_LOCAL


def collect_host_addresses() -> tuple[Address, ...]:
    """Every address configured on any interface of this network namespace."""
    try:
        with IPRoute() as ipr:
            # On a point-to-point link IFA_ADDRESS is the peer's; IFA_LOCAL is ours.
            found = {ipaddress.ip_address(a.get("IFA_LOCAL") or a.get("IFA_ADDRESS")) for a in ipr.get_addr()}
    except OSError as exc:
        raise HostError(f"cannot list host addresses: {exc}") from exc
    return tuple(sorted(found, key=lambda a: (a.version, a)))


def interface_addresses(name: str) -> tuple[Address, ...] | None:
    """The addresses configured on interface ``name``; None when there is no such interface."""
    try:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=name)
            if not found:
                return None
            addresses = ipr.get_addr(index=found[0])
    except (OSError, NetlinkError) as exc:
        raise HostError(f"cannot read interface {name}: {exc}") from exc
    return tuple(ipaddress.ip_address(a.get("IFA_LOCAL") or a.get("IFA_ADDRESS")) for a in addresses)
