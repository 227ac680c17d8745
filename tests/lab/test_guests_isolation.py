"""Guests cannot pretend to be someone else, reach each other, or hide behind
an unregistered interface; bridge ports are held to the same rules."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.netlab import Lab, sh
from tests.lab.guests_lab import Scene

pytestmark = pytest.mark.lab


@pytest.fixture
def scene(lab: Lab, tmp_path: Path) -> Iterator[Scene]:
    """name: scene; scope: function; depends on lab. A host namespace with listeners."""
    yield Scene(lab, tmp_path / "state")


def _dropped(scene: Scene, name: str) -> int:
    status = json.loads(scene.gf("status", "--json").stdout)
    return next(g["dropped"] for g in status["guests"] if g["name"] == name)


def test_spoofed_source_address_gets_nowhere_and_is_counted(scene: Scene) -> None:
    link = scene.add_guest("g1", 1)
    scene.register(link, "--net-allow", "tcp://@gateway:8080")
    for spoofed in ("192.0.2.99/32", "2001:db8:1::99/64"):
        scene.lab.addr(link.netns, "eth0", spoofed)
    allowed = [f"tcp://{link.gateway4}:8080", f"tcp://[{link.gateway6}]:8080"]
    before = _dropped(scene, "g1")
    assert scene.reachable(link.netns, allowed[:1], source="192.0.2.99") == set()
    assert scene.reachable(link.netns, allowed[1:], source="2001:db8:1::99") == set()
    for spoofed in ("192.0.2.99/32", "2001:db8:1::99/64"):
        sh("ip", "addr", "del", spoofed, "dev", "eth0", netns=link.netns)
    sh("ip", "neigh", "flush", "dev", "eth0", netns=link.netns)  # resolutions the spoofed packets started
    assert scene.reachable(link.netns, allowed) == set(allowed), "its own addresses still work"
    assert _dropped(scene, "g1") > before


def test_spoofed_mac_gets_nowhere(scene: Scene) -> None:
    link = scene.add_guest("g1", 1)
    scene.register(link, "--net-allow", "tcp://@gateway:8080", extra=("--mac", link.mac))
    target = [f"tcp://{link.gateway4}:8080"]
    assert scene.reachable(link.netns, target) == set(target)
    sh("ip", "link", "set", "eth0", "address", "02:00:00:00:00:99", netns=link.netns)
    sh("ip", "neigh", "flush", "dev", link.iface, netns=scene.host)
    assert scene.reachable(link.netns, target) == set()


def test_second_guest_is_unreachable_from_the_first_even_through_a_wildcard(scene: Scene) -> None:
    first, second = scene.add_guest("g1", 1), scene.add_guest("g2", 2, kind="tap")
    scene.listen(second.netns, (7000,))
    other = [f"tcp://{second.address4}:7000", f"tcp://[{second.address6}]:7000"]
    assert scene.reachable(first.netns, other, timeout=3) == set(other), "without guestfence the host routes between guests"
    scene.register(first, "--net-allow", "tcp://*:7000")
    scene.register(second, "--net-allow", "tcp://@gateway:8080")
    assert scene.reachable(first.netns, other) == set()
    scene.register(first, "--net-allow", f"tcp://{second.address4}:7000")
    assert scene.reachable(first.netns, other) == set(other[:1]), "a rule naming the guest's address allows it"


def test_interface_of_an_unregistered_guest_is_dropped(scene: Scene) -> None:
    registered, stranger = scene.add_guest("g1", 1), scene.add_guest("g9", 9)
    target = [f"tcp://{stranger.gateway4}:8080", f"icmp://{stranger.gateway4}"]
    assert scene.reachable(stranger.netns, target) == set(target)
    scene.register(registered, "--net-allow", "tcp://@gateway:8080")
    assert scene.reachable(stranger.netns, target) == set()


def test_guest_behind_a_bridge_is_filtered_by_its_port(scene: Scene) -> None:
    host, lab = scene.host, scene.lab
    sh("ip", "link", "add", "br0", "type", "bridge", netns=host)
    sh("ip", "link", "set", "br0", "up", netns=host)
    lab.addr(host, "br0", "203.0.113.1/24")
    guests = []
    for index in (1, 2):
        netns = lab.netns("gfb")
        lab.veth(host, f"vmtap-b{index}", netns, "eth0")
        sh("ip", "link", "set", f"vmtap-b{index}", "master", "br0", netns=host)
        lab.addr(netns, "eth0", f"203.0.113.{10 + index}/24")
        guests.append(netns)
    scene.listen(guests[1], (7000,))
    mac = json.loads(sh("ip", "-j", "link", "show", "eth0", netns=guests[0]).stdout)[0]["address"]
    targets = ["tcp://203.0.113.1:8080", "tcp://203.0.113.1:22", "tcp://203.0.113.12:7000"]
    assert scene.reachable(guests[0], targets) == {"tcp://203.0.113.1:8080", "tcp://203.0.113.1:22", "tcp://203.0.113.12:7000"}
    scene.gf("guest", "add", "b1", "--iface", "vmtap-b1", "--bridge", "br0", "--mac", mac,
             "--address", "203.0.113.11/24", "--gateway", "203.0.113.1", "--net-allow", "tcp://@gateway:8080")  # fmt: skip
    assert scene.reachable(guests[0], targets) == {"tcp://203.0.113.1:8080"}
    assert scene.reachable(guests[1], ["tcp://203.0.113.1:22"]) == set(), "an unregistered vmtap port is dropped"
    sh("ip", "addr", "add", "203.0.113.99/24", "dev", "eth0", netns=guests[0])
    assert scene.reachable(guests[0], ["tcp://203.0.113.1:8080"], source="203.0.113.99") == set()
