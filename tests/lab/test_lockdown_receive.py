"""Lockdown against the real receive path: a switch namespace sends broadcast
DHCP, ARP, IPv6 router solicitations and all-nodes echoes, and UDP to a
host address, into a host namespace whose uplink carries a guest behind a
macvlan or macvtap in passthru mode (optionally on a VLAN), a bridge, or
nothing (a standalone veth).

Without lockdown the host's sockets, its input-hook counter and its replies
show the leak; with lockdown all three stay empty while the guest still
receives the broadcasts and its unicast.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.lab.lockdown_lab import GUEST_GETS, Scene, build_scene, exercise, prepare_host
from tests.lab.netlab import GUESTFENCE, Lab, sh

pytestmark = pytest.mark.lab

KINDS = ("macvlan", "macvtap", "bridge", "veth", "vlan")
# What leaks without lockdown beyond DHCP, ARP and IPv6, per kind: a macvlan
# passes up unicast IP only inside broadcast frames; a bridge port hands
# IP in a link-local (LLDP group) frame straight to the port's own stack.
EXTRA_LEAKS = {
    "macvlan": {"udp:bcast"},
    "macvtap": {"udp:bcast"},
    "vlan": {"udp:bcast"},
    "bridge": {"udp:bcast", "udp:hostmac", "udp:lldp"},
    "veth": {"udp:bcast", "udp:hostmac", "udp:lldp"},
}
PATTERNS = {"vlan": "up0.*"}


def guestfence(netns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return sh(GUESTFENCE, *argv, netns=netns, check=False)


@pytest.fixture
def make_scene(lab: Lab, tmp_path: Path) -> Iterator[Callable[[str], Scene]]:
    """name: make_scene; scope: function; uses lab, tmp_path. Builds one scene, closes its guest reader."""
    made: list[Scene] = []

    def make(kind: str) -> Scene:
        host, switch, guest = lab.netns("gfh"), lab.netns("gfs"), lab.netns("gfg")
        prepare_host(host)
        try:
            scene = build_scene(kind, host, switch, guest, str(tmp_path))
        except subprocess.CalledProcessError as err:
            if kind == "vlan" and "Unknown device type" in (err.stderr or ""):
                pytest.skip("kernel capability: no 802.1Q (vlan) support in this kernel; the VLAN variant cannot run")
            raise
        made.append(scene)
        return scene

    yield make
    for scene in made:
        if scene.guest is not None:
            scene.guest.close()


@pytest.mark.parametrize("kind", KINDS)
def test_without_lockdown_the_host_stack_processes_guest_link_traffic(kind: str, make_scene) -> None:
    scene = make_scene(kind)
    seen = exercise(scene)
    assert {"dhcp-discover", "icmp6:133", "icmp6:128"} | EXTRA_LEAKS[kind] <= set(seen.host_sockets)
    assert "arp-reply" in seen.replies
    assert seen.input_packets > 0
    if scene.guest is not None:
        assert GUEST_GETS <= seen.guest


@pytest.mark.parametrize("kind", KINDS)
def test_lockdown_leaves_the_host_nothing_and_the_guest_everything(kind: str, make_scene, tmp_path: Path) -> None:
    scene = make_scene(kind)
    state = str(tmp_path / "state")
    pattern = PATTERNS.get(kind, "up*")
    added = guestfence(scene.host, "lockdown", "add", pattern, "--state-dir", state)
    assert added.returncode == 0, added.stderr

    seen = exercise(scene)

    assert seen.host_sockets == []
    assert seen.input_packets == 0
    assert seen.replies == []
    if scene.guest is not None:
        assert GUEST_GETS <= seen.guest
    listed = guestfence(scene.host, "lockdown", "list", "--json", "--state-dir", state)
    (entry,) = json.loads(listed.stdout)["patterns"]
    drops = {rule["hook"]: rule["drops"]["packets"] for rule in entry["rules"]}
    assert entry["pattern"] == pattern and entry["in_force"] and scene.uplink in entry["interfaces"]
    if kind == "bridge":
        assert drops["bridge input"] > 0 and drops["inet prerouting"] > 0  # the LLDP-group frame
    else:
        assert drops["inet prerouting"] > 0 and drops["arp input"] > 0


def test_a_netdev_ingress_drop_on_the_lower_device_would_cut_the_guest_off(make_scene) -> None:
    """Why lockdown has no netdev ingress rule: that hook runs before the
    macvlan rx_handler, so the guest would lose its traffic too."""
    scene = make_scene("macvlan")
    sh("nft", "-f", "-", netns=scene.host, input=(
        "table netdev gfingress {\n  chain ingress {\n"
        f"    type filter hook ingress device {scene.uplink} priority 0; policy drop;\n  }}\n}}\n"
    ))  # fmt: skip
    seen = exercise(scene)
    assert seen.guest == set()
