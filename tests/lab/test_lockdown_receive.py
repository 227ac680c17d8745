"""Lockdown against the real receive path: a switch namespace sends broadcast
DHCP, ARP, IPv6 router solicitations and all-nodes echoes, and UDP to a
host address, into a host namespace whose uplink carries a guest behind a
macvlan or macvtap in passthru mode (optionally on a VLAN), a bridge, or
nothing (a standalone veth).

Without lockdown the host's sockets, its input-hook counter and its replies
show the leak; with lockdown all three stay empty while the guest still
receives the broadcasts and its unicast. Each exercise ends on a mark frame
seen everywhere (tests/lab/lockdown_lab.py), so the checks hold at any speed.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.lab.lockdown_lab import EXERCISE_TIMEOUT, GUEST_GETS, MARK_PORT, Scene, Observed, build_scene, drain, exercise, prepare_host, vlan_support
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

    def make(kind: str, **options: bool) -> Scene:
        host, switch, guest = lab.netns("gfh"), lab.netns("gfs"), lab.netns("gfg")
        if (kind == "vlan" or options.get("vlan")) and (missing := vlan_support(host)):
            pytest.skip(f"kernel capability: {missing}; the VLAN variant runs where 8021q exists (the 6.1 VM)")
        prepare_host(host)
        scene = build_scene(kind, host, switch, guest, str(tmp_path), **options)
        made.append(scene)
        return scene

    yield make
    for scene in made:
        if scene.guest is not None:
            scene.guest.close()


@pytest.mark.parametrize("kind", KINDS)
def test_without_lockdown_the_host_stack_processes_guest_link_traffic(kind: str, make_scene) -> None:
    scene = make_scene(kind)
    leaks = {"dhcp-discover", "icmp6:133", "icmp6:128"} | EXTRA_LEAKS[kind]

    def leaked(seen: Observed) -> bool:
        return leaks <= set(seen.host_sockets) and "arp-reply" in seen.replies and (
            scene.guest is None or GUEST_GETS <= seen.guest)  # fmt: skip

    seen = exercise(scene, until=leaked)
    assert seen.complete, seen
    assert leaks <= set(seen.host_sockets)
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

    seen = exercise(scene, until=lambda seen: scene.guest is None or GUEST_GETS <= seen.guest)

    assert seen.complete, seen
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
        f"    type filter hook ingress device {scene.uplink} priority 0; policy drop;\n"
        f"    udp dport {MARK_PORT} counter\n  }}\n}}\n"
    ))  # fmt: skip
    seen = exercise(scene, timeout=0)  # the mark goes nowhere past this hook: wait for its counter instead
    deadline = time.monotonic() + EXERCISE_TIMEOUT
    while '"packets": 0' in sh("nft", "-j", "list", "table", "netdev", "gfingress", netns=scene.host).stdout:
        assert time.monotonic() < deadline, "the mark never reached the netdev ingress hook"
        time.sleep(0.02)
    # Dropped before the macvlan rx_handler: no copy of anything is in flight to the guest.
    assert scene.guest is not None
    late = drain([scene.guest], 0)[scene.guest]
    assert seen.guest == set() and late == []
