"""Devices stacked on a locked interface (issue 10's lockdown item).

A macvtap re-receives its lower device's frames under its own name, and
while no process holds it open (before QEMU starts, after it exits or
crashes) it hands them to the host stack; so does a macvlan the host keeps.
The control installs what lockdown used to be -- drops by the lower
device's name only -- and the host still receives through the stacked
device. With `lockdown add` on the lower device the host receives nothing
there, from a macvtap's first frame (by kind, no watcher needed) and from
a host macvlan's registration by the watcher, while a reader holding the
macvtap, as QEMU does, still gets every frame including its DHCP offer.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.lab.lockdown_lab import (
    GUEST_GETS,
    Observed,
    Scene,
    add_host_macvlan,
    add_macvtap,
    exercise,
    open_tap,
)
from tests.lab.netlab import GUESTFENCE, Lab, sh
from tests.lab.test_lockdown_receive import guestfence, make_scene  # noqa: F401 (fixture)
from tests.lab.test_lockdown_watch import hardened, sysctl, wait_for_line

pytestmark = pytest.mark.lab

MakeScene = Callable[..., Scene]

# What lockdown did before stacked devices were covered: drops by name on the lower device.
NAME_ONLY_LOCKDOWN = """\
table inet gfold {{
  chain prerouting {{ type filter hook prerouting priority -450; iifname "{dev}" drop; }}
}}
table arp gfold {{
  chain input {{ type filter hook input priority -450; iifname "{dev}" drop; }}
}}
"""


def leaked_through_the_stacked_device(seen: Observed) -> bool:
    return {"dhcp-discover", "udp:bcast"} <= set(seen.host_sockets) and "arp-reply" in seen.replies


def nothing_reached_the_host(seen: Observed) -> None:
    assert seen.complete, seen
    assert seen.host_sockets == [] and seen.input_packets == 0 and seen.replies == [], seen


def stacked_drops(scene: Scene, state: str) -> dict[str, int]:
    listed = json.loads(guestfence(scene.host, "lockdown", "list", "--json", "--state-dir", state).stdout)
    return {rule["hook"]: rule["drops"]["packets"] for rule in listed["stacked"]["rules"]}


def lock(scene: Scene, state: str, *extra: str) -> str:
    pattern = "up0.*" if scene.vlan else "up0"
    added = guestfence(scene.host, "lockdown", "add", pattern, *extra, "--state-dir", state)
    assert added.returncode == 0, added.stderr
    return added.stdout


@pytest.mark.parametrize("kind", ["macvtap", "hostmacvlan"])
def test_control_a_name_only_drop_on_the_lower_device_leaves_the_stacked_device_open(
    kind: str, make_scene: MakeScene
) -> None:
    scene = make_scene(kind, reader=False) if kind == "macvtap" else make_scene(kind)
    sh("nft", "-f", "-", netns=scene.host, input=NAME_ONLY_LOCKDOWN.format(dev=scene.uplink))

    seen = exercise(scene, until=leaked_through_the_stacked_device)

    assert seen.complete, seen
    assert {"dhcp-discover", "udp:bcast"} <= set(seen.host_sockets) and seen.input_packets > 0


@pytest.mark.parametrize("vlan", [False, True], ids=["plain", "vlan"])
def test_an_unheld_macvtap_on_a_locked_device_gives_the_host_nothing_and_its_reader_everything(
    vlan: bool, make_scene: MakeScene, tmp_path: Path
) -> None:
    scene = make_scene("macvtap", reader=False, vlan=vlan)
    state = str(tmp_path / "state")
    lock(scene, state)

    nothing_reached_the_host(exercise(scene))  # before QEMU starts

    open_tap(scene)  # QEMU holds it
    held = exercise(scene, until=lambda seen: GUEST_GETS <= seen.guest)
    nothing_reached_the_host(held)
    assert GUEST_GETS <= held.guest

    assert scene.guest is not None
    scene.guest.close()  # QEMU exits or crashes
    scene.guest = None
    nothing_reached_the_host(exercise(scene))

    listed = json.loads(guestfence(scene.host, "lockdown", "list", "--json", "--state-dir", state).stdout)
    assert listed["stacked"]["interfaces"] == ["gt0"]
    assert stacked_drops(scene, state)["inet prerouting stacked"] > 0  # the set's rule comes first
    assert hardened(scene.host, "gt0")


def test_a_macvtap_created_after_add_is_held_from_its_first_frame_without_the_watcher(
    make_scene: MakeScene, tmp_path: Path
) -> None:
    scene = make_scene("veth")
    lock(scene, str(tmp_path / "state"))

    add_macvtap(scene, str(tmp_path), reader=False)

    nothing_reached_the_host(exercise(scene))
    drops = stacked_drops(scene, str(tmp_path / "state"))
    assert drops["inet prerouting macvtap"] > 0 and drops["arp input macvtap"] > 0  # by kind: nobody added it
    open_tap(scene)
    held = exercise(scene, until=lambda seen: GUEST_GETS <= seen.guest)
    nothing_reached_the_host(held)
    assert GUEST_GETS <= held.guest


def test_a_host_macvlan_on_a_locked_device_is_locked_down_with_it_and_released_by_remove(
    make_scene: MakeScene, tmp_path: Path
) -> None:
    scene = make_scene("hostmacvlan")
    state = str(tmp_path / "state")

    added = lock(scene, state)

    assert "hv0 (a macvlan on a locked interface): sysctls set" in added
    assert hardened(scene.host, "hv0")
    nothing_reached_the_host(exercise(scene))
    assert guestfence(scene.host, "lockdown", "remove", "up0", "--state-dir", state).returncode == 0
    assert sysctl(scene.host, "ipv4", "hv0", "arp_ignore") == "0"
    assert sysctl(scene.host, "ipv6", "hv0", "disable_ipv6") == "0"
    assert leaked_through_the_stacked_device(exercise(scene, until=leaked_through_the_stacked_device))


def test_the_watcher_locks_down_a_host_macvlan_created_after_add(make_scene: MakeScene, lab: Lab, tmp_path: Path) -> None:
    scene = make_scene("veth")
    state = str(tmp_path / "state")
    lock(scene, state)
    watcher = lab.spawn([GUESTFENCE, "lockdown", "watch", "--state-dir", state], netns=scene.host)
    wait_for_line(watcher, b"watching")

    add_host_macvlan(scene)

    wait_for_line(watcher, b"stacked devices locked down: hv0")
    nothing_reached_the_host(exercise(scene))
    assert hardened(scene.host, "hv0")
    watcher.send_signal(signal.SIGTERM)
    assert watcher.wait(timeout=60) == 0
