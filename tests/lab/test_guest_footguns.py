"""``guest add`` on an interface the host needs itself is refused without
--force: loopback, the default-route interface, an interface carrying host
addresses other than the guest link's own. A missing interface is a warning."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab.netlab import GUESTFENCE, Lab, sh

pytestmark = pytest.mark.lab


def test_guest_add_refuses_the_hosts_own_interfaces_without_force(lab: Lab, tmp_path: Path) -> None:
    host, lan, guest = lab.netns("gfh"), lab.netns("gfl"), lab.netns("gfg")
    lab.veth(host, "lan0", lan, "eth0")
    lab.addr(host, "lan0", "198.51.100.2/24")
    sh("ip", "route", "add", "default", "via", "198.51.100.1", netns=host)
    lab.veth(host, "vmtap-a", guest, "eth0")
    lab.addr(host, "vmtap-a", "192.0.2.1/30")
    lab.veth(host, "vmtap-b", guest, "eth1")
    lab.addr(host, "vmtap-b", "192.0.2.5/30")
    lab.addr(host, "vmtap-b", "203.0.113.5/24")

    def add(iface: str, address: str, gateway: str, *extra: str) -> tuple[int, str]:
        done = sh(GUESTFENCE, "guest", "add", "x", "--iface", iface, "--address", address, "--gateway", gateway,
                  "--state-dir", str(tmp_path), *extra, netns=host, check=False)  # fmt: skip
        assert "Traceback" not in done.stderr
        return done.returncode, done.stderr

    for iface, why in (("lo", "loopback"), ("lan0", "default route, IPv4"), ("vmtap-b", "203.0.113.5")):
        code, err = add(iface, "192.0.2.6/30", "192.0.2.5")
        assert code == 2 and f"refusing --iface {iface}" in err and why in err, err
        assert not (tmp_path / "state.json").exists(), "nothing recorded"
    assert sh("nft", "list", "ruleset", netns=host).stdout == "", "nothing applied"
    code, err = add("vmtap-a", "192.0.2.2/30", "192.0.2.1")
    assert code == 0 and "warning" not in err, "the gateway on the guest's own link is fine"
    code, err = add("vmtap-later", "192.0.2.2/30", "192.0.2.1")
    assert code == 0 and "interface vmtap-later does not exist yet" in err
    code, err = add("vmtap-b", "192.0.2.6/30", "192.0.2.5", "--force")
    assert code == 0 and "--force: vmtap-b carries host addresses" in err
