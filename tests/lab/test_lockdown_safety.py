"""Lockdown's foot-guns and privileges (issue 13): a registered guest's
interface is refused without --force; `remove` gives back the IPv6
configuration `add` found (disabling IPv6 would have deleted it); every
command without CAP_NET_ADMIN exits 3 with "run as root"."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab.netlab import GUESTFENCE, Lab, sh
from tests.lab.test_lockdown_receive import guestfence
from tests.lab.test_lockdown_state import lockdown_tables
from tests.lab.test_lockdown_watch import sysctl

pytestmark = pytest.mark.lab


def ipv6_config(netns: str, dev: str) -> tuple[str, str]:
    addresses = sh("ip", "-6", "-o", "addr", "show", "dev", dev, "scope", "global", netns=netns).stdout
    routes = sh("ip", "-6", "route", "show", "dev", dev, "proto", "boot", netns=netns).stdout
    return addresses, routes


def configure_ipv6(netns: str, dev: str) -> None:
    sh("ip", "addr", "add", "2001:db8:5::1/64", "dev", dev, "nodad", netns=netns)
    sh("ip", "-6", "route", "add", "2001:db8:6::/64", "dev", dev, netns=netns)


def test_control_disabling_ipv6_deletes_static_addresses_and_routes_for_good(lab: Lab) -> None:
    host, switch = lab.netns("gfh"), lab.netns("gfs")
    lab.veth(switch, "sw0", host, "up1")
    configure_ipv6(host, "up1")
    before = ipv6_config(host, "up1")
    assert "2001:db8:5::1/64" in before[0] and "2001:db8:6::/64" in before[1]

    sh("sysctl", "-qw", "net.ipv6.conf.up1.disable_ipv6=1", netns=host)
    sh("sysctl", "-qw", "net.ipv6.conf.up1.disable_ipv6=0", netns=host)

    assert ipv6_config(host, "up1") == ("", "")


def test_add_keeps_static_ipv6_configuration_and_remove_leaves_it_as_it_was(lab: Lab, tmp_path: Path) -> None:
    host, switch = lab.netns("gfh"), lab.netns("gfs")
    lab.veth(switch, "sw0", host, "up0")
    configure_ipv6(host, "up0")
    before = ipv6_config(host, "up0")
    state = str(tmp_path / "state")

    added = guestfence(host, "lockdown", "add", "up0", "--state-dir", state)

    assert added.returncode == 0, added.stderr
    assert "disable_ipv6 left as it is: it would delete address 2001:db8:5::1/64, route 2001:db8:6::/64" in added.stdout
    assert sysctl(host, "ipv6", "up0", "disable_ipv6") == "0"
    assert sysctl(host, "ipv6", "up0", "accept_ra") == "0" and sysctl(host, "ipv4", "up0", "arp_ignore") == "8"
    assert ipv6_config(host, "up0") == before
    removed = guestfence(host, "lockdown", "remove", "up0", "--state-dir", state)
    assert removed.returncode == 0, removed.stderr
    assert ipv6_config(host, "up0") == before
    assert sysctl(host, "ipv6", "up0", "accept_ra") == "1" and sysctl(host, "ipv4", "up0", "arp_ignore") == "0"


def test_a_registered_guests_interface_is_refused_without_force(lab: Lab, tmp_path: Path) -> None:
    host, switch = lab.netns("gfh"), lab.netns("gfs")
    lab.veth(switch, "sw0", host, "vmtap-a")
    lab.addr(host, "vmtap-a", "192.0.2.1/30")
    state = str(tmp_path / "state")
    registered = guestfence(host, "guest", "add", "vm1", "--iface", "vmtap-a", "--address", "192.0.2.2/30",
                            "--gateway", "192.0.2.1", "--state-dir", state)  # fmt: skip
    assert registered.returncode == 0, registered.stderr

    refused = guestfence(host, "lockdown", "add", "vmtap*", "--state-dir", state)

    assert refused.returncode == 2
    assert "'vmtap*' matches vmtap-a (interface of registered guest vm1)" in refused.stderr and "--force" in refused.stderr
    assert lockdown_tables(host) == [] and sysctl(host, "ipv4", "vmtap-a", "arp_ignore") == "0"
    forced = guestfence(host, "lockdown", "add", "vmtap*", "--force", "--state-dir", state)
    assert forced.returncode == 0, forced.stderr
    assert len(lockdown_tables(host)) == 3


@pytest.mark.parametrize("argv", [
    ("lockdown", "list"), ("lockdown", "list", "--json"), ("lockdown", "add", "up0"),
    ("lockdown", "remove", "up0"), ("lockdown", "watch"),
])  # fmt: skip
def test_without_privilege_lockdown_exits_3_saying_run_as_root(argv: tuple[str, ...], lab: Lab, tmp_path: Path) -> None:
    host = lab.netns("gfh")
    state = tmp_path / "state"
    state.mkdir(mode=0o777)
    tmp_path.chmod(0o755)  # nobody may reach the state directory: the refusal is about privilege

    ran = sh("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all",
             GUESTFENCE, *argv, "--state-dir", str(state), netns=host, check=False, timeout=120)  # fmt: skip

    assert ran.returncode == 3, (ran.stdout, ran.stderr)
    assert "run as root" in ran.stderr and "Traceback" not in ran.stderr
    assert list(state.iterdir()) == []
