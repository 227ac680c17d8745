"""Lockdown over time: interfaces created after ``lockdown add`` (the rules
are already in force, the watcher sets the sysctls), ``remove`` writing back
exactly what ``add`` changed, and the refusal to take the host's uplink."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from guestfence.lockdown.plan import SYSCTLS
from tests.lab.lockdown_lab import CLI_TIMEOUT, EXERCISE_TIMEOUT, GUEST_GETS, build_scene, exercise, prepare_host
from tests.lab.netlab import Lab, sh
from tests.lab.test_lockdown_receive import GUESTFENCE, guestfence

pytestmark = pytest.mark.lab


def sysctl(netns: str, family: str, interface: str, key: str) -> str:
    return sh("cat", f"/proc/sys/net/{family}/conf/{interface}/{key}", netns=netns).stdout.strip()


def hardened(netns: str, interface: str) -> bool:
    return all(sysctl(netns, family, interface, key) == value for family, key, value, _ in SYSCTLS)


def wait_for_line(proc: subprocess.Popen[bytes], text: bytes, seconds: float = CLI_TIMEOUT) -> None:
    """Wait for a line containing ``text``, up to a bound generous enough for
    an emulated CPU. Reads the pipe unbuffered: select() on a buffered reader
    misses lines already in its buffer."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    pending = _unread.setdefault(fd, b"")
    deadline = time.monotonic() + seconds
    while True:
        *lines, pending = pending.split(b"\n")
        for number, line in enumerate(lines):
            if text in line:
                _unread[fd] = b"\n".join(lines[number + 1:] + [pending])
                return
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(left, 0))
        chunk = os.read(fd, 65536) if ready else b""
        if not chunk:
            _unread[fd] = pending
            pytest.fail(f"the watcher did not print {text!r} within {seconds}s")
        pending += chunk


_unread: dict[int, bytes] = {}


def test_an_interface_created_after_add_is_locked_down_from_its_first_packet(lab: Lab, tmp_path: Path) -> None:
    host, switch, guest = lab.netns("gfh"), lab.netns("gfs"), lab.netns("gfg")
    prepare_host(host)
    state = str(tmp_path / "state")
    assert guestfence(host, "lockdown", "add", "up*", "--state-dir", state).returncode == 0
    watcher = lab.spawn([GUESTFENCE, "lockdown", "watch", "--state-dir", state], netns=host)
    wait_for_line(watcher, b"watching")

    scene = build_scene("macvlan", host, switch, guest, str(tmp_path))
    try:
        deadline = time.monotonic() + EXERCISE_TIMEOUT
        while not hardened(host, "up0") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hardened(host, "up0")
        seen = exercise(scene, until=lambda seen: GUEST_GETS <= seen.guest)
        assert seen.complete, seen
        assert seen.host_sockets == [] and seen.input_packets == 0 and seen.replies == []
        assert GUEST_GETS <= seen.guest

        assert guestfence(host, "lockdown", "remove", "up*", "--state-dir", state).returncode == 0
        assert sysctl(host, "ipv6", "up0", "disable_ipv6") == "0"
        assert sysctl(host, "ipv4", "up0", "arp_ignore") == "0"
        assert "dhcp-discover" in exercise(scene, until=lambda seen: "dhcp-discover" in seen.host_sockets).host_sockets
    finally:
        assert scene.guest is not None
        scene.guest.close()
    watcher.send_signal(signal.SIGTERM)
    assert watcher.wait(timeout=CLI_TIMEOUT) == 0


def test_remove_writes_back_only_what_add_changed(lab: Lab, tmp_path: Path) -> None:
    host, switch = lab.netns("gfh"), lab.netns("gfs")
    lab.veth(switch, "sw0", host, "up0")
    state = str(tmp_path / "state")
    sh("sysctl", "-qw", "net.ipv4.conf.up0.rp_filter=1", netns=host)  # already what lockdown wants
    assert guestfence(host, "lockdown", "add", "up0", "--state-dir", state).returncode == 0
    assert hardened(host, "up0")
    sh("sysctl", "-qw", "net.ipv4.conf.up0.arp_announce=1", netns=host)  # the operator changes one since

    removed = guestfence(host, "lockdown", "remove", "up0", "--state-dir", state)

    assert removed.returncode == 0, removed.stderr
    assert sysctl(host, "ipv4", "up0", "arp_announce") == "1"
    assert sysctl(host, "ipv4", "up0", "rp_filter") == "1"
    assert sysctl(host, "ipv4", "up0", "arp_ignore") == "0"
    assert sysctl(host, "ipv6", "up0", "disable_ipv6") == "0"
    assert "guestfence_lockdown" not in sh("nft", "list", "tables", netns=host).stdout
    listed = json.loads(guestfence(host, "lockdown", "list", "--json", "--state-dir", state).stdout)
    assert listed == {"patterns": [], "interfaces": [], "stacked": {"interfaces": [], "rules": []}, "interrupted": []}


def test_a_pattern_matching_the_uplink_is_refused_without_force(lab: Lab, tmp_path: Path) -> None:
    host, switch = lab.netns("gfh"), lab.netns("gfs")
    lab.veth(switch, "sw0", host, "up0")
    lab.addr(host, "up0", "192.0.2.2/24")
    sh("ip", "route", "add", "default", "via", "192.0.2.254", netns=host)
    state = str(tmp_path / "state")

    refused = guestfence(host, "lockdown", "add", "vm*", "u*", "--state-dir", state)

    assert refused.returncode == 2
    assert "'u*' matches up0 (default route, IPv4)" in refused.stderr and "--force" in refused.stderr
    assert sh("nft", "list", "tables", netns=host).stdout == ""
    assert sysctl(host, "ipv6", "up0", "disable_ipv6") == "0"
    assert guestfence(host, "lockdown", "add", "u*", "--force", "--state-dir", state).returncode == 0
    assert hardened(host, "up0")
