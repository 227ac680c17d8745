"""Real VMs on Debian's own kernel (Linux 6.1 on Debian 12), under QEMU.

The first test is the harness's own: the VM boots the kernel package's
kernel, runs a command with the host's / as its root, passes its status
out, and loads what the lab tests need (veth, 802.1Q, macvtap, nftables)
from the package's module tree on demand. The second is the guest the
namespace labs stand in for: a VM behind a TAP, registered with
``guest add``, reaching its allowed gateway ports and nothing else. The
sandbox's thread tests on this kernel (no PIDFD_THREAD) run in the 6.1
pass of ``make test`` (tests/vm/suite.py) with the rest of tests/sandbox.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.lab.netlab import Lab, sh, unique
from tests.lab.guests_lab import Scene
from tests.vm.debian_kernel import Kernel
from tests.vm.machine import VirtualMachine, run_in_vm

pytestmark = pytest.mark.vm

AUTOLOAD = """
uname -r
ip link add gfa type veth peer name gfb
ip link add link gfa name gfa.7 type vlan id 7
ip link add link gfb name gfmv type macvtap mode passthru
nft add table inet gfprobe
echo autoloaded
exit 3
"""


def test_debians_kernel_boots_on_the_host_root_and_autoloads_modules(kernel: Kernel) -> None:
    ran = run_in_vm(["sh", "-ec", AUTOLOAD], kernel=kernel, timeout=600)
    assert ran.status == 3, ran.console  # the command's own status, passed out
    lines = ran.console.splitlines()
    assert kernel.version in lines and "autoloaded" in lines, ran.console


GATEWAY, GUEST = "192.0.2.5", "192.0.2.6"
OTHER_HOST_ADDRESS = Scene.HOST_EXTRA[0].split("/")[0]
ALLOWED = [f"tcp://{GATEWAY}:8080", f"udp://{GATEWAY}:53", f"icmp://{GATEWAY}"]
DENIED = [
    f"tcp://{GATEWAY}:22", f"tcp://{GATEWAY}:5432", f"tcp://{OTHER_HOST_ADDRESS}:8080",
    f"udp://{GATEWAY}:8080", f"udp://{OTHER_HOST_ADDRESS}:53", f"icmp://{OTHER_HOST_ADDRESS}",
]  # fmt: skip

# Runs in the VM: configure the virtio NIC, wait (bounded) until the allowed
# TCP port answers, then try everything once with the demo's prober.
PROBE = """
ip link set eth0 up
ip addr add {guest}/30 dev eth0
ip route add default via {gateway}
probe() {{ {python} -m guestfence.demolab probe "$1" 2; }}
deadline=$(( $(date +%s) + 120 ))
until probe '["{first}"]' | grep -q true; do
    [ "$(date +%s)" -lt "$deadline" ] || exit 1
done
probe '{targets}' >/run/vm/probe.json
"""


@pytest.mark.lab
def test_a_vm_on_a_tap_reaches_its_allowed_gateway_ports_and_nothing_else(
        lab: Lab, kernel: Kernel, tmp_path: Path) -> None:  # fmt: skip
    scene = Scene(lab, tmp_path / "state")
    tap = unique("vmtap-")
    sh("ip", "tuntap", "add", "dev", tap, "mode", "tap", netns=scene.host)
    sh("ip", "link", "set", tap, "up", netns=scene.host)
    lab.addr(scene.host, tap, f"{GATEWAY}/30")
    scene.gf(
        "guest", "add", "vm1", "--iface", tap, "--address", f"{GUEST}/30", "--gateway", GATEWAY,
        *[arg for rule in ("tcp://@gateway:8080", "udp://@gateway:53", "icmp://@gateway") for arg in ("--net-allow", rule)],
    )  # fmt: skip
    script = PROBE.format(python=sys.executable, guest=GUEST, gateway=GATEWAY, first=ALLOWED[0], targets=json.dumps(ALLOWED + DENIED))
    nic = ["-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no", "-device", "virtio-net-pci,netdev=n0"]
    with VirtualMachine(script, kernel=kernel, netns=scene.host, qemu_args=nic) as vm:
        ran = vm.wait(600)
        assert ran.status == 0, ran.console
        reached = json.loads((vm.xchg / "probe.json").read_text())
    assert reached == {**dict.fromkeys(ALLOWED, True), **dict.fromkeys(DENIED, False)}
