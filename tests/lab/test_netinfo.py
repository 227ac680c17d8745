"""What netinfo reads from the kernel, in a namespace of the test's own."""

from __future__ import annotations

import ipaddress
import sys

import pytest

from tests.lab.netlab import Lab, sh

pytestmark = pytest.mark.lab

LIST = "from guestfence.netinfo import collect_host_addresses as c; print(' '.join(map(str, c())))"


def test_point_to_point_links_list_our_address_not_the_peers(lab: Lab) -> None:
    ns = lab.netns("gfni")
    sh("ip", "link", "add", "p0", "type", "veth", "peer", "name", "p1", netns=ns)
    sh("ip", "addr", "add", "192.0.2.1", "peer", "192.0.2.2/32", "dev", "p0", netns=ns)
    listed = {ipaddress.ip_address(a) for a in sh(sys.executable, "-c", LIST, netns=ns).stdout.split()}
    assert ipaddress.ip_address("192.0.2.1") in listed
    assert ipaddress.ip_address("192.0.2.2") not in listed
