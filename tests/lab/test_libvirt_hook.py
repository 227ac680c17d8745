"""The libvirt hook against a real ruleset and real packets, called as
libvirtd calls it (argv, domain XML on stdin), on a TAP in a lab namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.netlab import Lab
from tests.lab.guests_lab import GuestLink, Scene

pytestmark = pytest.mark.lab

HOOK = str(Path(sys.executable).with_name("guestfence-libvirt-hook"))
UUID = "6a1f0c2e-3b4d-4e5f-9a8b-7c6d5e4f3a2b"


@pytest.fixture
def scene(lab: Lab, tmp_path: Path) -> Iterator[Scene]:
    """name: scene; scope: function; depends on lab. A host namespace with listeners."""
    yield Scene(lab, tmp_path / "state")


def domain_xml(link: GuestLink, *extra_devs: str) -> str:
    # The TAP carries the guest's IPv4 and IPv6 gateways: both are described
    # (guestfence refuses an interface with host addresses its guest does not name).
    interfaces = [(link.iface, "52:54:00:aa:00:01", [f"{link.address4}/30", f"{link.address6}/64"], [link.gateway4, link.gateway6])]
    interfaces += [(dev, f"52:54:00:aa:00:0{n + 2}", [f"192.0.2.{200 + 4 * n}/30"], [f"192.0.2.{201 + 4 * n}"]) for n, dev in enumerate(extra_devs)]
    described = "".join(
        f"<gf:interface mac='{mac}'>"
        + "".join(f"<gf:address>{a}</gf:address>" for a in addrs)
        + "".join(f"<gf:gateway>{g}</gf:gateway>" for g in gws)
        + "</gf:interface>"
        for _, mac, addrs, gws in interfaces
    )
    devices = "".join(f"<interface type='ethernet'><mac address='{mac}'/><target dev='{dev}'/></interface>" for dev, mac, _, _ in interfaces)
    return (
        f"<domain type='qemu'><name>hooked</name><uuid>{UUID}</uuid><metadata>"
        f"<gf:guest xmlns:gf='https://guestfence.example/xmlns/1'>"
        f"<gf:policy default='deny'><gf:allow>tcp://@gateway:8080</gf:allow></gf:policy>{described}</gf:guest>"
        f"</metadata><devices>{devices}</devices></domain>"
    )


def hook(scene: Scene, xml: str, operation: str, sub: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GUESTFENCE_STATE_DIR": str(scene.state_dir)}
    return subprocess.run(["ip", "netns", "exec", scene.host, HOOK, "hooked", operation, sub, "-"], input=xml,
                          env=env, capture_output=True, text=True, timeout=60)  # fmt: skip


def names(scene: Scene) -> list[str]:
    return [g["name"] for g in json.loads(scene.gf("guest", "list", "--json").stdout)["guests"]]


def test_start_fences_the_tap_and_release_removes_it(scene: Scene) -> None:
    link = scene.add_guest("lv", 1, kind="tap")
    targets = scene.host_targets(link)
    xml = domain_xml(link)
    assert hook(scene, xml, "prepare", "begin").returncode == 0
    assert scene.reachable(link.netns, targets) == set(targets), "control: before start begin, nothing is fenced"
    done = hook(scene, xml, "start", "begin")
    assert done.returncode == 0, done.stderr
    assert names(scene) == ["lv-6a1f0c2e3b4d-0"]
    assert scene.reachable(link.netns, targets) == {f"tcp://{link.gateway4}:8080", f"tcp://[{link.gateway6}]:8080"}
    for operation in ("stopped", "release"):
        done = hook(scene, xml, operation, "end")
        assert done.returncode == 0, done.stderr
        assert names(scene) == []
    assert "lv-6a1f0c2e3b4d" not in json.dumps(scene.ruleset())


def test_a_start_that_fails_half_way_registers_nothing_and_aborts(scene: Scene) -> None:
    link = scene.add_guest("lv", 1, kind="tap")
    taken = scene.add_guest("other", 2)
    scene.register(taken)
    done = hook(scene, domain_xml(link, taken.iface), "start", "begin")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and taken.iface in done.stderr
    assert names(scene) == ["other"], "the first interface's registration was taken back"


def test_unix_rules_in_a_domains_policy_are_named_as_ignored(scene: Scene) -> None:
    link = scene.add_guest("lu", 1, kind="tap")
    xml = domain_xml(link).replace("<gf:allow>tcp://@gateway:8080</gf:allow>",
                                   "<gf:allow>tcp://@gateway:8080</gf:allow><gf:allow>unix:///run/x.sock</gf:allow>")
    done = hook(scene, xml, "start", "begin")
    assert done.returncode == 0, done.stderr
    assert "unix:// rules do not apply to a VM or container guest" in done.stderr
    assert "allow unix:///run/x.sock" in done.stderr and "--force" not in done.stderr
    assert hook(scene, xml, "release", "end").returncode == 0
