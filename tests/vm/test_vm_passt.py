"""A VM behind passt, under ``guestfence rootless passt`` (issue 15).

QEMU's virtio NIC is a ``-netdev stream`` on passt's unix socket; passt
opens the VM's connections as host sockets, as user nobody, under the
supervisor (run as root with ``--as-user``: Debian 12's passt is
non-dumpable, docs/rootless.md). Scene, all in namespaces made here::

    VM 192.0.2.100 --unix socket-- passt (in host) --h0/l0 veth-- lan
                                   host: 198.51.100.1 (h0), 203.0.113.7 (lo), 127.0.0.1
                                   lan:  198.51.100.2 (the peer)

Every host address (both of its own, and loopback through passt's mapped
gateway 192.0.2.2) is refused in TCP and UDP, the peer is reached, judged
by the listeners: the host's saw nothing from the VM, the peer's saw it;
and the supervisor's log names each refused host destination, so the
refusals are guestfence's and not a missing listener's.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.lab.netlab import GUESTFENCE, Lab, sh
from tests.vm.busybox_vm import Receiver, probe_results, probe_script, probe_vm
from tests.vm.debian_kernel import Kernel

pytestmark = [pytest.mark.vm, pytest.mark.lab]

PORT = 2222
HOST, HOST_EXTRA, PEER = "198.51.100.1", "203.0.113.7", "198.51.100.2"
GUEST, MAPPED_GATEWAY = "192.0.2.100", "192.0.2.2"
REFUSED = [f"{proto}://{address}:{PORT}" for proto in ("tcp", "udp") for address in (HOST, HOST_EXTRA, MAPPED_GATEWAY)]
REACHED = [f"tcp://{PEER}:{PORT}", f"udp://{PEER}:{PORT}"]

SCRIPT = f"""
ip link set eth0 up
ip addr add {GUEST}/24 dev eth0
ip route add default via {MAPPED_GATEWAY}
""" + probe_script(REACHED, REFUSED, "/run/vm/probe.txt")


def test_a_vm_behind_passt_reaches_a_peer_and_none_of_the_hosts_addresses(lab: Lab, kernel: Kernel, tmp_path: Path) -> None:
    host, lan = lab.netns("gfph"), lab.netns("gfpl")
    lab.veth(host, "h0", lan, "l0")
    lab.addr(host, "h0", f"{HOST}/24")
    lab.addr(lan, "l0", f"{PEER}/24")
    lab.addr(host, "lo", f"{HOST_EXTRA}/32")
    sh("ip", "route", "add", "default", "via", PEER, netns=host)
    at_host = Receiver(lab, host, [PORT], [PORT])
    at_peer = Receiver(lab, lan, [PORT], [PORT])
    nobody = pwd.getpwnam("nobody")
    run_dir = Path(tempfile.mkdtemp(prefix="gfpasst", dir="/tmp"))
    try:
        os.chown(run_dir, nobody.pw_uid, nobody.pw_gid)
        run_dir.chmod(0o750)
        socket_path = run_dir / "passt.socket"
        log = tmp_path / "denied.jsonl"
        stack = lab.spawn([GUESTFENCE, "rootless", "passt", "--as-user", "nobody", "--log", str(log), "--json-log",
                           "--", "--socket", str(socket_path), "-a", GUEST, "-n", "24", "-g", MAPPED_GATEWAY], netns=host)  # fmt: skip
        deadline = time.monotonic() + 120
        while not socket_path.exists():
            if stack.poll() is not None:
                raise AssertionError(f"passt exited: {stack.stderr.read().decode() if stack.stderr else ''}")
            assert time.monotonic() < deadline, f"passt made no {socket_path}"
            time.sleep(0.05)
        nic = ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={socket_path}",
               "-device", "virtio-net-pci,netdev=n0"]  # fmt: skip
        with probe_vm(SCRIPT, kernel=kernel, netns=host, qemu_args=nic) as vm:
            ran = vm.wait(300)
            assert ran.status == 0, ran.console
            seen = probe_results((vm.xchg / "probe.txt").read_text())
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)

    assert {t: seen[t] for t in REACHED} == {t: "reply" if t.startswith("udp") else "open" for t in REACHED}, seen
    # passt (2023-03) leaves the SYN of a refused connect unanswered, as in
    # the nft mode's lab test; a reset or an ICMP error would do as well
    assert all(seen[t] in ("timeout", "silent", "refused") for t in REFUSED), seen
    assert at_host.arrivals() == set(), "the host's own listeners heard from the VM"
    assert {(a.proto, a.destination, a.port) for a in at_peer.arrivals()} == {("tcp", PEER, PORT), ("udp", PEER, PORT)}
    refused = {json.loads(line)["destination"] for line in log.read_text().splitlines()}
    for target in REFUSED:
        proto, _, rest = target.partition("://")
        address = "127.0.0.1" if rest.startswith(MAPPED_GATEWAY) else rest.split(":")[0]
        assert f"{proto}://{address}:{PORT}" in refused, (target, refused)
