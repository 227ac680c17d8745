"""A guest registered by an integration does not outlive its interface.

The attack: QEMU starts with guestfence's ``script=``/``downscript=``, its
TAP ``vmtap-q1`` is registered as guest q1, and QEMU is killed with SIGKILL,
so no downscript runs and the TAP vanishes with QEMU. Anyone then creates a
TAP of the same name (here a persistent one with a relay behind it, a full
Linux stack as the "VM"). Before the fix it was dispatched to q1's chain and
got q1's allowed port; now the watcher (``guestfence lockdown watch``) removes q1 when
its TAP goes, or at its start when the TAP of that name is another one (a
different ifindex), and the new TAP is dropped as an unregistered ``vmtap*``.
Judged by the live map and by real packets.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab.netlab import GUESTFENCE, Lab, sh
from tests.lab.guests_lab import Scene
from tests.lab.test_lockdown_watch import wait_for_line
from tests.lab.test_qemu_scripts import IFDOWN, IFUP, guests_file, script

pytestmark = pytest.mark.lab

BOUND = 120.0
"""How long QEMU, the scripts or the watcher may take on this loaded machine: a bound on a hang."""


def wait_until(condition, what: str, seconds: float = BOUND) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds}s")
        time.sleep(0.05)


def link_exists(netns: str, name: str) -> bool:
    return sh("ip", "link", "show", "dev", name, netns=netns, check=False).returncode == 0


def map_keys(scene: Scene) -> set[str]:
    """The interface names the live ``guests`` map dispatches (``iifname vmap @guests``)."""
    done = sh("nft", "-j", "list", "map", "inet", "guestfence", "guests", netns=scene.host)
    body = next(item["map"] for item in json.loads(done.stdout)["nftables"] if "map" in item)
    # An element with a comment (every guest's) is listed as {"elem": {"val": ..., "comment": ...}}.
    return {str(entry[0]["elem"]["val"] if isinstance(entry[0], dict) else entry[0]) for entry in body.get("elem", [])}


def start_qemu(lab: Lab, scene: Scene, guests: Path, tap: str, name: str = "q1") -> subprocess.Popen[bytes]:
    """QEMU, paused (-S), with the TAP and guestfence's scripts: as an operator runs it."""
    env = {**os.environ, "GUESTFENCE_GUESTS": str(guests), "GUESTFENCE_STATE_DIR": str(scene.state_dir)}
    argv = ["qemu-system-x86_64", "-S", "-machine", "none", "-nodefaults", "-display", "none",
            "-netdev", f"tap,id=n0,ifname={tap},script={IFUP},downscript={IFDOWN}"]  # fmt: skip
    proc = subprocess.Popen(["ip", "netns", "exec", scene.host, *argv], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    lab.processes.append(proc)
    wait_until(lambda: bound_to_live(scene, name, tap) or proc.poll() is not None, "QEMU's ifup registers the TAP")
    assert proc.poll() is None, f"QEMU exited: {proc.stderr.read().decode() if proc.stderr else ''}"
    return proc


def bound_to_live(scene: Scene, name: str, tap: str) -> bool:
    """Guest ``name`` is recorded for the TAP that exists now (its ifindex), not a dead one's."""
    shown = sh("ip", "-j", "link", "show", "dev", tap, netns=scene.host, check=False)
    path = scene.state_dir / "state.json"
    if shown.returncode != 0 or not path.exists():
        return False
    live = json.loads(shown.stdout)[0]["ifindex"]
    members = json.loads(path.read_text()).get("guests", {}).get("members", [])
    return any(m.get("name") == name and m.get("link", {}).get("ifindex") == live for m in members)


def registered(scene: Scene) -> list[tuple[str, str]]:
    return [(g["name"], g["iface"]) for g in json.loads(scene.gf("guest", "list", "--json").stdout)["guests"]]


def kill_qemu(proc: subprocess.Popen[bytes], scene: Scene, tap: str) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_until(lambda: not link_exists(scene.host, tap), "the TAP goes with QEMU")


def start_watcher(lab: Lab, scene: Scene) -> subprocess.Popen[bytes]:
    watcher = lab.spawn([GUESTFENCE, "lockdown", "watch", "--state-dir", str(scene.state_dir)], netns=scene.host)
    wait_for_line(watcher, b"watching")
    return watcher


@pytest.fixture
def scene(lab: Lab, tmp_path: Path) -> Scene:
    """name: scene; scope: function; depends on lab. A host namespace with listeners."""
    return Scene(lab, tmp_path / "state")


def recreate_and_probe(scene: Scene, tap: str) -> set[str]:
    """The attacker's TAP of the same name, addressed as the guest's was; what it reaches."""
    link = scene.add_guest("q1", 1, kind="tap")
    assert link.iface == tap
    return scene.reachable(link.netns, scene.host_targets(link))


def test_a_tap_recreated_after_qemu_was_killed_does_not_inherit_its_guest(lab: Lab, scene: Scene, tmp_path: Path) -> None:
    tap = "vmtap-q1"
    guests = guests_file(tmp_path, "q1", tap, "192.0.2.6", "192.0.2.5")
    watcher = start_watcher(lab, scene)
    qemu = start_qemu(lab, scene, guests, tap)
    kill_qemu(qemu, scene, tap)
    wait_for_line(watcher, b"guest q1 removed")
    assert tap not in map_keys(scene), "the map no longer dispatches the dead TAP's name"
    assert recreate_and_probe(scene, tap) == set(), "the new TAP is an unregistered vmtap*: everything dropped"
    assert json.loads(scene.gf("guest", "list", "--json").stdout)["guests"] == []


def test_a_watcher_started_after_the_tap_was_recreated_removes_the_stale_guest(lab: Lab, scene: Scene, tmp_path: Path) -> None:
    tap = "vmtap-q1"
    guests = guests_file(tmp_path, "q1", tap, "192.0.2.6", "192.0.2.5")
    qemu = start_qemu(lab, scene, guests, tap)
    kill_qemu(qemu, scene, tap)
    link = scene.add_guest("q1", 1, kind="tap")  # the attacker's TAP, while no watcher runs
    status = scene.gf("status", check=False)
    assert status.returncode == 1, status.stdout
    assert "guest q1" in status.stdout and "ifindex" in status.stdout, "status names the stale registration"
    start_watcher(lab, scene)  # reaps at its start, before it says it is watching
    assert tap not in map_keys(scene), "the map no longer dispatches the re-created TAP to q1"
    assert scene.reachable(link.netns, scene.host_targets(link)) == set(), "an unregistered vmtap*: everything dropped"


def test_ifup_for_another_guest_on_a_dead_guests_tap_name_replaces_the_stale_registration(lab: Lab, scene: Scene, tmp_path: Path) -> None:
    tap = "vmtap-q1"
    kill_qemu(start_qemu(lab, scene, guests_file(tmp_path, "q1", tap, "192.0.2.6", "192.0.2.5"), tap), scene, tap)
    later = tmp_path / "later"
    later.mkdir()
    start_qemu(lab, scene, guests_file(later, "q2", tap, "192.0.2.6", "192.0.2.5"), tap, "q2")  # no watcher ran meanwhile
    assert registered(scene) == [("q2", tap)], "q1's stale record went, q2 holds the TAP"


def test_restore_does_not_bring_back_a_guest_whose_tap_is_gone(lab: Lab, scene: Scene, tmp_path: Path) -> None:
    tap = "vmtap-q1"
    kill_qemu(start_qemu(lab, scene, guests_file(tmp_path, "q1", tap, "192.0.2.6", "192.0.2.5"), tap), scene, tap)
    done = scene.gf("restore")
    assert "drop guest q1: its interface vmtap-q1 is gone" in done.stdout + done.stderr
    assert json.loads(scene.gf("guest", "list", "--json").stdout)["guests"] == []
    assert tap not in map_keys(scene)
    assert scene.gf("status").returncode == 0


def test_a_libvirt_guest_goes_with_its_tap_when_release_never_comes(lab: Lab, scene: Scene) -> None:
    from tests.lab.test_libvirt_hook import domain_xml, hook, names

    watcher = start_watcher(lab, scene)
    link = scene.add_guest("lv", 1, kind="tap")
    done = hook(scene, domain_xml(link), "start", "begin")
    assert done.returncode == 0, done.stderr
    assert names(scene) == ["lv-6a1f0c2e3b4d-0"]
    sh("ip", "link", "del", link.iface, netns=scene.host)  # QEMU and libvirtd gone: no release end
    wait_for_line(watcher, b"guest lv-6a1f0c2e3b4d-0 removed")
    assert names(scene) == [] and link.iface not in map_keys(scene)
    again = scene.add_guest("lv", 2, kind="tap")
    assert again.iface == link.iface
    assert scene.reachable(again.netns, scene.host_targets(again)) == set()


def test_a_cni_guest_goes_with_its_veth_when_del_never_comes(lab: Lab, scene: Scene, tmp_path: Path) -> None:
    from tests.lab.test_cni import make_chain

    watcher = start_watcher(lab, scene)
    chain = make_chain(scene, tmp_path, with_guestfence=True)
    chain.add()
    [guest] = json.loads(scene.gf("guest", "list", "--json").stdout)["guests"]
    sh("ip", "netns", "del", chain.container_netns)  # the container is gone, its veth with it; no DEL
    wait_for_line(watcher, f"guest {guest['name']} removed".encode())
    assert json.loads(scene.gf("guest", "list", "--json").stdout)["guests"] == []
    assert guest["iface"] not in map_keys(scene)
    assert chain.exec_plugin(chain.conflist["plugins"][1], "DEL", None) is None, "a late DEL still succeeds"


RESTARTS = 5
"""Kill-and-restart rounds racing the watcher: a bound, each round a few hundred ms."""


def test_the_watcher_never_removes_the_registration_of_a_restarted_guest(lab: Lab, scene: Scene, tmp_path: Path) -> None:
    tap = "vmtap-q1"
    guests = guests_file(tmp_path, "q1", tap, "192.0.2.6", "192.0.2.5")
    watcher = start_watcher(lab, scene)
    qemu = start_qemu(lab, scene, guests, tap)
    for _ in range(RESTARTS):
        os.killpg(qemu.pid, signal.SIGKILL)  # and restart at once: the watcher races the new ifup
        qemu.wait()
        wait_until(lambda: not link_exists(scene.host, tap), "the TAP goes with QEMU")
        qemu = start_qemu(lab, scene, guests, tap)
    # A marker through the same event queue: once the watcher removed it, it
    # has handled every event of the rounds before.
    sh("ip", "tuntap", "add", "dev", "vmtap-zz", "mode", "tap", netns=scene.host)
    assert script(scene, guests, IFUP, "vmtap-zz").returncode == 0
    sh("ip", "link", "del", "vmtap-zz", netns=scene.host)
    wait_for_line(watcher, b"guest elsewhere removed")
    live = json.loads(sh("ip", "-j", "link", "show", "dev", tap, netns=scene.host).stdout)[0]["ifindex"]
    record = json.loads((scene.state_dir / "state.json").read_text())["guests"]["members"]
    assert [(m["name"], m["link"]) for m in record] == [("q1", {"owner": "qemu", "ifindex": live})]
    assert tap in map_keys(scene), "the running guest keeps its rules"
