"""The kernel's interfaces, through pyroute2: which exist (with their kind,
their lower device and the IPv6 configuration disabling IPv6 would delete),
which carry the host itself, and a watcher that reports each link as it appears.

Everything here reads; nothing changes the system. The watcher subscribes
to RTNLGRP_LINK *before* the caller lists the existing links, so a link
created in between is reported rather than missed (at worst twice, which
read-compare-write makes harmless).

pyroute2 is imported inside each function: importing it takes ~80 ms.
collect_protected, which ``guest add`` calls every time, reads a raw
netlink dump (guestfence.rtnl) instead.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from guestfence import rtnl
from guestfence.errors import HostError

if TYPE_CHECKING:  # the lockdown model is imported where links are listed, not by collect_protected (guest add)
    from guestfence.lockdown.plan import Link

MAIN_TABLE = 254


AF_INET6 = 10
RT_SCOPE_LINK = 253
RT_SCOPE_HOST = 254
IFAPROT_KERNEL_LL = 3  # IFA_PROTO (Linux 6.3+) of the link-local address the kernel made
# Routes the kernel or router advertisements made come back with IPv6; others would not.
_KERNEL_ROUTE_PROTOCOLS = (2, 9)


def collect_links() -> tuple[Link, ...]:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            config = _ipv6_config(ipr)
            return tuple(_link(m, config.get(m["index"], ())) for m in ipr.get_links())
    except (OSError, NetlinkError) as exc:
        raise HostError(f"cannot list network interfaces: {exc}") from exc


def _link(message: Any, ipv6_config: tuple[str, ...]) -> Link:
    """A link from its RTM_NEWLINK message. Its lower device counts only when
    it is in this namespace (no IFLA_LINK_NETNSID)."""
    from guestfence.lockdown.plan import Link

    lower = message.get_attr("IFLA_LINK")
    in_here = message.get_attr("IFLA_LINK_NETNSID") is None
    return Link(
        name=message.get_attr("IFLA_IFNAME"),
        ifindex=message["index"],
        kind=message.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND"),
        lower=lower if lower and in_here and lower != message["index"] else None,
        ipv6_config=ipv6_config,
    )


def _ipv6_config(ipr: IPRoute) -> dict[int, tuple[str, ...]]:
    """Per interface index, what setting disable_ipv6 would delete and
    re-enabling would not bring back: addresses other than the kernel's
    link-local one, and routes through it not made by the kernel or by
    router advertisements. A kernel that marks its own addresses (IFA_PROTO,
    Linux 6.3+, probed: it marks ::1 on lo too) tells a static link-local
    address from its own; before that a link-local address is taken for
    the kernel's and is not listed."""
    found: dict[int, list[str]] = {}
    addresses = list(ipr.get_addr(family=AF_INET6))
    marks_own = any(addr.get_attr("IFA_PROTO") is not None for addr in addresses)
    kernel_made = (IFAPROT_KERNEL_LL,) if marks_own else (None, IFAPROT_KERNEL_LL)
    for addr in addresses:
        if addr["scope"] == RT_SCOPE_HOST or (addr["scope"] == RT_SCOPE_LINK and addr.get_attr("IFA_PROTO") in kernel_made):
            continue
        found.setdefault(addr["index"], []).append(f"address {addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}")
    for route in ipr.get_routes(family=AF_INET6):
        oif = route.get_attr("RTA_OIF")
        if oif is None or route["proto"] in _KERNEL_ROUTE_PROTOCOLS:
            continue
        dst = route.get_attr("RTA_DST") or "::"
        table = route.get_attr("RTA_TABLE")
        found.setdefault(oif, []).append(f"route {dst}/{route['dst_len']}" + ("" if table == MAIN_TABLE else f" table {table}"))
    return {index: tuple(dict.fromkeys(items)) for index, items in found.items()}


def collect_protected() -> dict[str, str]:
    """Interfaces lockdown must not take without --force: loopback and every
    interface a default route of the main table leaves through. Read with
    guestfence.rtnl, not pyroute2: ``guest add`` asks this every time."""
    protected = {"lo": "loopback"}
    try:
        names = rtnl.link_names()
        for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
            for oif in rtnl.default_route_interfaces(family):
                if oif in names:
                    protected[names[oif]] = f"default route, IPv{version}"
    except OSError as exc:
        raise HostError(f"cannot read the routing table: {exc}") from exc
    return protected


LinkEvent = Callable[[str, "Link"], None]


@contextmanager
def link_events() -> Iterator[Callable[[LinkEvent], None]]:
    """Subscribe to link notifications now; the yielded function runs the
    loop, calling ``on_event("new" | "del", link)`` for each until interrupted.
    When the kernel drops notifications (ENOBUFS), every link is reported again."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.rtnl import RTMGRP_LINK

    try:
        ipr = IPRoute()
        ipr.bind(groups=RTMGRP_LINK)
    except (OSError, NetlinkError) as exc:
        raise HostError(f"cannot subscribe to link notifications: {exc}") from exc

    def run(on_event: LinkEvent) -> None:
        while True:
            try:
                messages = ipr.get()
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise HostError(f"link notifications failed: {exc}") from exc
                # The kernel dropped notifications: look at every link again.
                for link in collect_links():
                    on_event("new", link)
                continue
            for message in messages:
                kind = {"RTM_NEWLINK": "new", "RTM_DELLINK": "del"}.get(message["event"])
                name = message.get_attr("IFLA_IFNAME")
                if kind is not None and name:
                    on_event(kind, _link(message, ()))

    try:
        yield run
    finally:
        ipr.close()
