"""A domain that boots an OS under a real libvirtd, fenced by the hook
(issue 15).

tests/lab/test_libvirt_daemon.py's private libvirtd (libvirt_lab.py keeps
it off the host) starts a transient domain that boots Debian's kernel and
the busybox initramfs under TCG (``<os><kernel>/<initrd>``, ``<acpi/>``),
on a libvirt-made TAP (``type='ethernet'``), with the exchange directory
and the prober shared over 9p (``<filesystem>``). The hook registers the
TAP at ``start begin``; the booted guest then tries its allowed gateway
ports and everything else on the host in TCP, UDP and ping. Judged on the
receiving side: listeners on every address of libvirtd's namespace heard
exactly the allowed flows. The guest powers itself off (ACPI), libvirt
destroys the domain, and ``release end`` leaves no registration behind.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.lab.libvirt_lab import Libvirtd
from tests.lab.netlab import Lab, sh, unique
from tests.lab.test_libvirt_daemon import libvirtd, registered  # noqa: F401 (fixture)
from tests.vm.busybox_vm import MOUNT_PROBE, PATIENCE, REFUSAL, Arrival, Receiver, probe_binary, probe_results, probe_script
from tests.vm.debian_kernel import Kernel
from tests.vm.machine import POWER_OFF

pytestmark = [pytest.mark.vm, pytest.mark.lab]

MAC = "52:54:00:9a:01:01"
GATEWAY, GUEST, OTHER = "192.0.2.1", "192.0.2.2", "198.51.100.7"
ALLOWED = [f"tcp://{GATEWAY}:8080", f"udp://{GATEWAY}:53"]
DENIED = [f"tcp://{GATEWAY}:22", f"tcp://{OTHER}:8080", f"udp://{GATEWAY}:8080", f"udp://{OTHER}:53"]
PINGED = {GATEWAY: "reply", OTHER: "silent"}

SCRIPT = (
    MOUNT_PROBE
    + f"""ip link set eth0 up
ip addr add {GUEST}/30 dev eth0
ip route add default via {GATEWAY}
"""
    + "".join(f"(ping -c 1 -W {PATIENCE if r == 'reply' else REFUSAL} {a} >/dev/null && echo icmp://{a} reply "
              f"|| echo icmp://{a} silent) >/tmp/probe.icmp{n} &\n" for n, (a, r) in enumerate(PINGED.items()))
    + probe_script(ALLOWED, DENIED, "/run/vm/probe.txt")
)

DOMAIN = """<domain type='qemu'>
  <name>{name}</name><uuid>{uuid}</uuid>
  <memory unit='MiB'>256</memory><vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel.vmlinux}</kernel><initrd>{kernel.initramfs}</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet loglevel=4 mitigations=off tsc=reliable</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='maximum'/>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <metadata>
    <gf:guest xmlns:gf='https://guestfence.example/xmlns/1'>
      <gf:policy default='deny'>
        <gf:allow>tcp://@gateway:8080</gf:allow><gf:allow>udp://@gateway:53</gf:allow><gf:allow>icmp://@gateway</gf:allow>
      </gf:policy>
      <gf:interface mac='{mac}'><gf:address>{guest}/30</gf:address><gf:gateway>{gateway}</gf:gateway></gf:interface>
    </gf:guest>
  </metadata>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='ethernet'><mac address='{mac}'/><target dev='{tap}' managed='yes'/><model type='virtio'/><rom enabled='no'/></interface>
    <filesystem type='mount' accessmode='passthrough'><source dir='{xchg}'/><target dir='xchg'/></filesystem>
    <filesystem type='mount' accessmode='passthrough'><source dir='{probe}'/><target dir='probe'/><readonly/></filesystem>
    <serial type='file'><source path='{xchg}/console.log'/><target port='0'/></serial>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
</domain>"""

BOUND = 300.0


def test_a_booted_libvirt_guest_reaches_only_what_its_policy_allows(
        libvirtd: Libvirtd, lab: Lab, kernel: Kernel, tmp_path: Path) -> None:  # fmt: skip
    sh("ip", "addr", "add", f"{OTHER}/32", "dev", "lo", netns=libvirtd.netns)
    at_host = Receiver(lab, libvirtd.netns, [22, 8080], [53, 8080])
    xchg = Path(tempfile.mkdtemp(prefix="gf-lvvm-", dir="/tmp"))
    try:
        (xchg / "run.sh").write_text(
            f"#!/bin/sh\n( {SCRIPT.rstrip()}\n)\necho $? >/run/vm/status.tmp && mv /run/vm/status.tmp /run/vm/status\n{POWER_OFF}"
        )
        name, ident, tap = unique("gfvmdom"), str(uuid.uuid4()), unique("vmtap-lv")
        xml = tmp_path / "domain.xml"
        xml.write_text(DOMAIN.format(name=name, uuid=ident, kernel=kernel, mac=MAC, guest=GUEST, gateway=GATEWAY,
                                     tap=tap, xchg=xchg, probe=probe_binary().parent))  # fmt: skip
        libvirtd.virsh("create", str(xml))
        guest = f"lv-{ident.replace('-', '')[:12]}-0"
        deadline = time.monotonic() + BOUND
        while name in libvirtd.virsh("list", "--name").stdout.split():
            assert time.monotonic() < deadline, "the domain did not power off"
            time.sleep(0.1)
        console = (xchg / "console.log").read_text(errors="replace") if (xchg / "console.log").exists() else ""
        assert (xchg / "status").exists() and (xchg / "status").read_text().strip() == "0", console
        seen = probe_results((xchg / "probe.txt").read_text())
    finally:
        shutil.rmtree(xchg, ignore_errors=True)

    expected = {t: "open" if t.startswith("tcp") else "reply" for t in ALLOWED}
    expected |= {t: "timeout" if t.startswith("tcp") else "silent" for t in DENIED}
    expected |= {f"icmp://{a}": r for a, r in PINGED.items()}
    assert seen == expected
    assert at_host.arrivals() == {Arrival(proto="tcp", source=GUEST, destination=GATEWAY, port=8080),
                                  Arrival(proto="udp", source=GUEST, destination=GATEWAY, port=53),
                                  Arrival(proto="icmp", source=GUEST, destination=GATEWAY, port=0)}  # fmt: skip
    deadline = time.monotonic() + BOUND
    while registered(tmp_path) != []:  # release end runs as libvirt tears the domain down
        assert time.monotonic() < deadline, f"{guest} is still registered after the domain stopped"
        time.sleep(0.1)
    assert f'"{tap}"' not in sh("nft", "list", "ruleset", netns=libvirtd.netns).stdout, "release left the TAP's elements"
