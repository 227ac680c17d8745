"""QEMU's script=/downscript= pair on a real TAP, with real packets.

The TAP is made in the lab's host namespace and the "VM" is a namespace
behind a relay that copies frames between the TAP and a veth (as in
tests/lab/test_guests_reach.py); the scripts run as QEMU runs them, with the
TAP's name as their only argument.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.netlab import Lab, sh
from tests.lab.guests_lab import Scene

pytestmark = pytest.mark.lab

IFUP = str(Path(sys.executable).with_name("guestfence-qemu-ifup"))
IFDOWN = str(Path(sys.executable).with_name("guestfence-qemu-ifdown"))


@pytest.fixture
def scene(lab: Lab, tmp_path: Path) -> Iterator[Scene]:
    """name: scene; scope: function; depends on lab. A host namespace with listeners."""
    yield Scene(lab, tmp_path / "state")


def script(scene: Scene, guests: Path, program: str, tap: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GUESTFENCE_GUESTS": str(guests), "GUESTFENCE_STATE_DIR": str(scene.state_dir)}
    return subprocess.run(["ip", "netns", "exec", scene.host, program, tap], env=env, capture_output=True, text=True, timeout=60)


def guests_file(tmp_path: Path, name: str, iface: str, address: str, gateway: str, v6: tuple[str, str] | None = None) -> Path:
    path = tmp_path / "guests.toml"
    addresses = [f"{address}/30"] + ([f"{v6[0]}/64"] if v6 else [])
    gateways = [gateway] + ([v6[1]] if v6 else [])
    path.write_text(
        f'[[guest]]\nname = "{name}"\niface = "{iface}"\naddress = {json.dumps(addresses)}\ngateway = {json.dumps(gateways)}\n'
        'net_allow = ["tcp://@gateway:8080"]\n'
        '[[guest]]\nname = "elsewhere"\niface = "vmtap-zz"\naddress = "192.0.2.250/30"\n'
    )
    return path


def test_ifup_registers_the_tap_before_the_guest_runs_and_ifdown_removes_it(scene: Scene, tmp_path: Path) -> None:
    link = scene.add_guest("q1", 1, kind="tap")
    targets = scene.host_targets(link)
    assert scene.reachable(link.netns, targets) == set(targets), "control: unfiltered, the VM reaches everything"
    guests = guests_file(tmp_path, "q1", link.iface, link.address4, link.gateway4, (link.address6, link.gateway6))
    done = script(scene, guests, IFUP, link.iface)
    assert done.returncode == 0, done.stderr
    listed = json.loads(scene.gf("guest", "list", "--json").stdout)["guests"]
    assert [(g["name"], g["iface"]) for g in listed] == [("q1", link.iface)], "only the guest of this TAP"
    assert scene.reachable(link.netns, targets) == {f"tcp://{link.gateway4}:8080", f"tcp://[{link.gateway6}]:8080"}
    done = script(scene, guests, IFDOWN, link.iface)
    assert done.returncode == 0, done.stderr
    assert json.loads(scene.gf("guest", "list", "--json").stdout)["guests"] == []
    assert "q1" not in json.dumps(scene.ruleset()), "no rule, chain, counter or element of the guest is left"
    assert script(scene, guests, IFDOWN, link.iface).returncode == 0, "ifdown with nothing registered succeeds"


def test_ifup_addresses_and_raises_a_fresh_tap(scene: Scene, tmp_path: Path) -> None:
    tap = "vmtap-qfresh"
    sh("ip", "tuntap", "add", "dev", tap, "mode", "tap", netns=scene.host)
    guests = guests_file(tmp_path, tap, "unused0", "192.0.2.10", "192.0.2.9")  # keyed by name
    done = script(scene, guests, IFUP, tap)
    assert done.returncode == 0, done.stderr
    shown = json.loads(sh("ip", "-j", "addr", "show", "dev", tap, netns=scene.host).stdout)[0]
    assert "UP" in shown["flags"]
    assert [(a["local"], a["prefixlen"]) for a in shown["addr_info"] if a["family"] == "inet"] == [("192.0.2.9", 30)]
    listed = json.loads(scene.gf("guest", "list", "--json").stdout)["guests"]
    assert [(g["name"], g["iface"]) for g in listed] == [(tap, tap)]


@pytest.mark.parametrize("content", ["", "[[guest]]\nname = 'x'\n"])
def test_ifup_fails_closed_for_an_unknown_tap_or_a_bad_file(scene: Scene, tmp_path: Path, content: str) -> None:
    tap = "vmtap-qunknown"
    sh("ip", "tuntap", "add", "dev", tap, "mode", "tap", netns=scene.host)
    guests = tmp_path / "guests.toml"
    guests.write_text(content)
    done = script(scene, guests, IFUP, tap)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    shown = json.loads(sh("ip", "-j", "link", "show", "dev", tap, netns=scene.host).stdout)[0]
    assert "UP" not in shown["flags"], "a failed ifup leaves the TAP down"
    assert not (scene.state_dir / "state.json").exists()


def test_ifup_that_cannot_set_up_the_tap_takes_its_registration_back(scene: Scene, tmp_path: Path) -> None:
    tap = "vmtap-qnobr"
    sh("ip", "tuntap", "add", "dev", tap, "mode", "tap", netns=scene.host)
    guests = tmp_path / "guests.toml"
    guests.write_text(f'[[guest]]\nname = "b1"\niface = "{tap}"\naddress = "192.0.2.2/24"\nbridge = "nosuchbr0"\nmac = "02:00:00:00:00:01"\n')
    done = script(scene, guests, IFUP, tap)
    assert done.returncode == 3, done.stderr
    assert "nosuchbr0" in done.stderr
    assert json.loads(scene.gf("guest", "list", "--json").stdout)["guests"] == []
