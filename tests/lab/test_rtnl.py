"""guestfence.rtnl's hand-read dumps say what pyroute2 and ip(8) say, in a namespace of the test's own."""

from __future__ import annotations

import json
import sys

import pytest

from tests.lab.netlab import Lab, sh

pytestmark = pytest.mark.lab

READ = """
import json, socket
from guestfence import rtnl, netinfo
from guestfence.lockdown.links import collect_protected
names = rtnl.link_names()
print(json.dumps({
    "names": sorted(names.values()),
    "default4": sorted(names[i] for i in rtnl.default_route_interfaces(socket.AF_INET)),
    "default6": sorted(names[i] for i in rtnl.default_route_interfaces(socket.AF_INET6)),
    "p0": sorted(map(str, netinfo.interface_addresses("p0"))),
    "d0": sorted(map(str, netinfo.interface_addresses("d0"))),
    "missing": netinfo.interface_addresses("nosuchlink0"),
    "protected": collect_protected(),
}))
"""

WITH_PYROUTE2 = """
import ipaddress, json
from pyroute2 import IPRoute
with IPRoute() as ipr:
    names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in ipr.get_links()}
    def defaults(family):
        found = set()
        for route in ipr.get_routes(family=family, table=254):
            if route["dst_len"] == 0:
                found.add(route.get_attr("RTA_OIF"))
                found.update(hop["oif"] for hop in route.get_attr("RTA_MULTIPATH") or [])
        return sorted(names[i] for i in found if i in names)
    def addresses(name):
        index = ipr.link_lookup(ifname=name)[0]
        return sorted(str(ipaddress.ip_address(a.get("IFA_LOCAL") or a.get("IFA_ADDRESS"))) for a in ipr.get_addr(index=index))
    print(json.dumps({"names": sorted(names.values()), "default4": defaults(2), "default6": defaults(10),
                      "p0": addresses("p0"), "d0": addresses("d0")}))
"""


def test_links_default_routes_and_addresses_match_pyroute2(lab: Lab) -> None:
    ns = lab.netns("gfrt")
    for a, b in (("p0", "p1"), ("d0", "d1"), ("m0", "m1"), ("x0", "x1")):
        sh("ip", "link", "add", a, "type", "veth", "peer", "name", b, netns=ns)
        sh("ip", "link", "set", a, "up", netns=ns)
        sh("ip", "link", "set", b, "up", netns=ns)
    sh("ip", "addr", "add", "192.0.2.1", "peer", "192.0.2.2/32", "dev", "p0", netns=ns)  # point-to-point
    sh("ip", "addr", "add", "2001:db8:1::1/64", "dev", "p0", "nodad", netns=ns)
    sh("ip", "addr", "add", "198.51.100.1/24", "dev", "d0", netns=ns)
    sh("ip", "addr", "add", "203.0.113.1/24", "dev", "m0", netns=ns)
    sh("ip", "addr", "add", "2001:db8:2::1/64", "dev", "d0", "nodad", netns=ns)
    sh("ip", "route", "add", "default", "via", "198.51.100.2", "dev", "d0", netns=ns)
    sh("ip", "-6", "route", "add", "default", "nexthop", "via", "2001:db8:2::2", "dev", "d0",
       "nexthop", "via", "2001:db8:1::2", "dev", "p0", netns=ns)  # multipath: both hops count
    sh("ip", "addr", "add", "10.9.9.1/24", "dev", "x0", netns=ns)
    sh("ip", "route", "add", "default", "via", "10.9.9.2", "table", "1000", netns=ns)  # not the main table
    sh("ip", "route", "add", "10.8.0.0/16", "via", "203.0.113.2", netns=ns)  # not a default route
    got = json.loads(sh(sys.executable, "-c", READ, netns=ns).stdout)
    expected = json.loads(sh(sys.executable, "-c", WITH_PYROUTE2, netns=ns).stdout)
    assert {k: got[k] for k in expected} == expected
    assert got["default4"] == ["d0"] and got["default6"] == ["d0", "p0"]
    assert {a for a in got["p0"] if not a.startswith("fe80:")} == {"192.0.2.1", "2001:db8:1::1"}  # ours, not the peer's
    assert {a for a in got["d0"] if not a.startswith("fe80:")} == {"198.51.100.1", "2001:db8:2::1"}
    assert got["missing"] is None
    assert got["protected"] == {"lo": "loopback", "d0": "default route, IPv6", "p0": "default route, IPv6"}
