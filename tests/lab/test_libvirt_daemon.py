"""The hook under a real libvirtd (tests/lab/libvirt_lab.py keeps it off the
host): ``start begin`` fences the TAP libvirtd made before QEMU runs, a
domain the metadata does not fully describe never starts, and stopping the
domain takes its rules away. The guest has no OS: what it could reach is
proved with real packets in tests/lab/test_libvirt_hook.py; here libvirt's
side of the contract is what is tested."""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.libvirt_lab import Libvirtd, available
from tests.lab.netlab import Lab, sh, unique

pytestmark = pytest.mark.lab

HOOK = str(Path(sys.executable).with_name("guestfence-libvirt-hook"))
MAC = "52:54:00:9a:00:01"


@pytest.fixture
def libvirtd(lab: Lab, tmp_path: Path) -> Iterator[Libvirtd]:
    """name: libvirtd; scope: function; depends on lab. A private libvirtd in a lab namespace, always stopped."""
    reason = available()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    daemon = Libvirtd(lab, lab.netns("gflv"), HOOK, tmp_path / "state")
    try:
        yield daemon
    finally:
        daemon.close()


def domain(tmp_path: Path, tap: str, described_mac: str = MAC) -> tuple[str, Path, str]:
    name, ident = unique("gfdom"), str(uuid.uuid4())
    xml = f"""<domain type='qemu'>
  <name>{name}</name><uuid>{ident}</uuid>
  <memory unit='MiB'>64</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
  <metadata>
    <gf:guest xmlns:gf='https://guestfence.example/xmlns/1'>
      <gf:policy default='deny'><gf:allow>tcp://@gateway:8080</gf:allow></gf:policy>
      <gf:interface mac='{described_mac}'><gf:address>192.0.2.2/30</gf:address><gf:gateway>192.0.2.1</gf:gateway></gf:interface>
    </gf:guest>
  </metadata>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='ethernet'><mac address='{MAC}'/><target dev='{tap}' managed='yes'/><model type='virtio'/><rom enabled='no'/></interface>
  </devices>
</domain>"""
    path = tmp_path / f"{name}.xml"
    path.write_text(xml)
    return name, path, f"lv-{ident.replace('-', '')[:12]}-0"


def registered(tmp_path: Path) -> list[tuple[str, str]]:
    state = tmp_path / "state" / "state.json"
    members = json.loads(state.read_text())["guests"]["members"] if state.exists() else []
    return [(m["name"], m["iface"]) for m in members]


def test_start_registers_the_tap_before_qemu_and_destroy_removes_it(libvirtd: Libvirtd, tmp_path: Path) -> None:
    tap = unique("vmtap-lv")
    name, xml, guest = domain(tmp_path, tap)
    libvirtd.virsh("create", str(xml))
    assert libvirtd.virsh("domstate", name).stdout.strip() == "running"
    assert registered(tmp_path) == [(guest, tap)]
    ruleset = sh("nft", "list", "table", "inet", "guestfence", netns=libvirtd.netns).stdout
    assert f'"{tap}" . 192.0.2.2 : goto policy.' in ruleset, "the TAP's dispatch is in libvirtd's namespace"
    shown = json.loads(sh("ip", "-j", "addr", "show", "dev", tap, netns=libvirtd.netns).stdout)[0]
    assert ("192.0.2.1", 30) in [(a["local"], a["prefixlen"]) for a in shown["addr_info"]], "the hook gave the bare TAP its gateway"
    assert sh("ip", "link", "show", tap, check=False).returncode != 0, "nothing in the real root namespace"
    libvirtd.virsh("destroy", name)
    assert registered(tmp_path) == []
    assert f'"{tap}"' not in sh("nft", "list", "table", "inet", "guestfence", netns=libvirtd.netns).stdout


def test_a_domain_with_an_undescribed_interface_never_starts(libvirtd: Libvirtd, tmp_path: Path) -> None:
    tap = unique("vmtap-lv")
    name, xml, _ = domain(tmp_path, tap, described_mac="52:54:00:9a:00:99")
    done = libvirtd.virsh("create", str(xml), check=False)
    assert done.returncode != 0
    assert "refusing to start it unfiltered" in done.stderr
    assert libvirtd.virsh("list", "--name").stdout.split() == []
    assert registered(tmp_path) == []
    assert sh("ip", "link", "show", tap, netns=libvirtd.netns, check=False).returncode != 0, "libvirt took its TAP back"
