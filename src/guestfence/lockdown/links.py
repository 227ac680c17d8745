"""The kernel's interfaces, through pyroute2: which exist, which carry the
host itself, and a watcher that reports each link as it appears.

Everything here reads; nothing changes the system. The watcher subscribes
to RTNLGRP_LINK *before* the caller lists the existing links, so a link
created in between is reported rather than missed (at worst twice, which
read-compare-write makes harmless).

pyroute2 is imported inside each function: importing it takes ~80 ms, and
commands that only load this module (``guest add``, via the lockdown
feature) never call them.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from guestfence.errors import HostError
from guestfence.lockdown.plan import Link

MAIN_TABLE = 254


def collect_links() -> tuple[Link, ...]:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            return tuple(Link(name=m.get_attr("IFLA_IFNAME"), ifindex=m["index"]) for m in ipr.get_links())
    except (OSError, NetlinkError) as exc:
        raise HostError(f"cannot list network interfaces: {exc}") from exc


def collect_protected() -> dict[str, str]:
    """Interfaces lockdown must not take without --force: loopback and every
    interface a default route of the main table leaves through."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    protected = {"lo": "loopback"}
    try:
        with IPRoute() as ipr:
            names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in ipr.get_links()}
            for family in (2, 10):
                for route in ipr.get_routes(family=family, table=MAIN_TABLE):
                    if route["dst_len"] != 0:
                        continue
                    oifs = [route.get_attr("RTA_OIF")]
                    oifs += [hop["oif"] for hop in route.get_attr("RTA_MULTIPATH") or []]
                    for oif in oifs:
                        if oif in names:
                            protected[names[oif]] = f"default route, IPv{4 if family == 2 else 6}"
    except (OSError, NetlinkError) as exc:
        raise HostError(f"cannot read the routing table: {exc}") from exc
    return protected


LinkEvent = Callable[[str, Link], None]


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
                    on_event(kind, Link(name=name, ifindex=message["index"]))

    try:
        yield run
    finally:
        ipr.close()
