"""The lab harness itself: namespaces are reachable and always removed."""

from __future__ import annotations

import subprocess

import pytest

from tests.lab.netlab import Lab, sh

pytestmark = pytest.mark.lab


def test_namespaces_talk_over_veth_and_are_removed() -> None:
    lab = Lab()
    try:
        host, guest = lab.netns("gfh"), lab.netns("gfg")
        lab.veth(host, "h0", guest, "g0")
        lab.addr(host, "h0", "192.0.2.1/30")
        lab.addr(guest, "g0", "192.0.2.2/30")
        sh("ping", "-c1", "-W2", "192.0.2.1", netns=guest)
    finally:
        lab.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert host not in listed and guest not in listed
