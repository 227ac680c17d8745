"""VMs with nothing but busybox, and the prober they run.

A VM whose root is the host's (``machine.py``'s default) runs Python, but
booting it and starting Python under TCG takes tens of seconds. The VMs of
the network tests need only a shell, ``ip``, ``ping``, ``udhcpc`` and a way
to try TCP and UDP: busybox (the initramfs's own) and ``probe.c``, compiled
static once and cached under build/vm-probe/ by the hash of its source,
then shared read-only into the VM over 9p (tag ``probe``, mounted at
/probe by ``MOUNT_PROBE``). ``probe_vm`` is ``VirtualMachine`` made so;
``probe_script`` the guest's lines trying a list of flows at once, and
``probe_results`` reads what they found.

``Receiver`` is the other end, run in a namespace the test made: TCP and
UDP listeners on every address (dual-stack ``::``) and a raw ICMP socket,
recording each connection, datagram and echo request that reaches the
host's sockets, with its source and destination: leaks are judged where
they would land, not by what the guest was told.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.lab.netlab import Lab
from tests.vm.machine import VirtualMachine

SOURCE = Path(__file__).with_name("probe.c")
CACHE = Path(__file__).resolve().parents[2] / "build" / "vm-probe"
MOUNT_PROBE = "mkdir -p /probe && mount -t 9p -o trans=virtio,version=9p2000.L,ro probe /probe\n"


def probe_binary() -> Path:
    """The static prober, compiled on first use (gcc and libc6-dev: BUILD_APT)."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    built = CACHE / digest / "probe"
    if not built.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".building-", dir=CACHE))
        try:
            subprocess.run(["gcc", "-std=gnu11", "-O2", "-Wall", "-Wextra", "-static", "-o", str(staging / "probe"), str(SOURCE)],
                           check=True, capture_output=True, timeout=300)  # fmt: skip
            try:
                staging.rename(built.parent)
            except OSError:  # another run built it first
                if not built.exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return built


def probe_share() -> list[str]:
    """QEMU arguments sharing the prober's directory read-only (tag ``probe``)."""
    return ["-virtfs", f"local,path={probe_binary().parent},mount_tag=probe,security_model=none,readonly=on"]


def probe_vm(script: str, *, qemu_args: Sequence[str] = (), **machine: object) -> VirtualMachine:
    """A busybox-only VM (one CPU, 256 MiB) with /probe/probe, running ``script``."""
    return VirtualMachine(MOUNT_PROBE + script, host_root=False, memory_mib=256, cpus=1,  # type: ignore[arg-type]
                          qemu_args=[*probe_share(), *qemu_args], **machine)  # fmt: skip


# How long a flow that should pass may take (a bound: it ends as soon as it
# passes), and how long one that should not is watched before it counts as
# refused: the VM's probes run in parallel, so a run costs REFUSAL once.
PATIENCE, REFUSAL = 60, 3


def probe_script(reached: Sequence[str], refused: Sequence[str], out: str) -> str:
    """Shell lines trying every target at once (a refusal costs a timeout,
    so in parallel), the results gathered in ``out``."""
    timed = [(PATIENCE, t) for t in reached] + [(REFUSAL, t) for t in refused]
    lines = [f"/probe/probe {seconds} {target} >/tmp/probe.{n} &" for n, (seconds, target) in enumerate(timed)]
    return "\n".join([*lines, "wait", f"cat /tmp/probe.* >{out}", "rm /tmp/probe.*", ""])


def probe_results(text: str) -> dict[str, str]:
    """``probe``'s output as {target: result}."""
    return dict(line.split(" ", 1) for line in text.splitlines() if line.strip())


@dataclass(frozen=True)
class Arrival:
    proto: str
    source: str
    destination: str
    port: int


class Receiver:
    """Listeners in ``netns`` on every address; ``arrivals()`` is what reached them."""

    def __init__(self, lab: Lab, netns: str, tcp: Sequence[int], udp: Sequence[int]) -> None:
        ports = [",".join(map(str, tcp)) or "-", ",".join(map(str, udp)) or "-"]
        self.process = lab.spawn([sys.executable, "-u", "-m", "tests.vm.busybox_vm", *ports], netns=netns)
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 120)
        assert ready and self.process.stdout.readline().strip() == b"ready", "receiver did not start"

    def arrivals(self) -> set[Arrival]:
        """Stops the receiver; everything it recorded."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        assert self.process.stdout is not None
        lines = self.process.stdout.read().decode().splitlines()
        self.process.wait()
        return {Arrival(**json.loads(line)) for line in lines}


def _plain(address: str) -> str:
    return address.removeprefix("::ffff:")


def _serve(tcp: Sequence[int], udp: Sequence[int]) -> None:
    chooser = selectors.DefaultSelector()
    for kind, ports in ((socket.SOCK_STREAM, tcp), (socket.SOCK_DGRAM, udp)):
        for port in ports:
            sock = socket.socket(socket.AF_INET6, kind)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if kind == socket.SOCK_DGRAM:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            sock.bind(("::", port))
            if kind == socket.SOCK_STREAM:
                sock.listen(64)
            chooser.register(sock, selectors.EVENT_READ, ("tcp" if kind == socket.SOCK_STREAM else "udp", port))
    icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    chooser.register(icmp, selectors.EVENT_READ, ("icmp", 0))
    print("ready", flush=True)

    def record(proto: str, source: str, destination: str, port: int) -> None:
        print(json.dumps({"proto": proto, "source": _plain(source), "destination": _plain(destination), "port": port}), flush=True)

    while True:
        for key, _ in chooser.select():
            sock, (proto, port) = key.fileobj, key.data
            assert isinstance(sock, socket.socket)
            try:
                if proto == "tcp":
                    conn, peer = sock.accept()
                    record(proto, peer[0], conn.getsockname()[0], port)
                    conn.sendall(b"ok")
                    conn.close()
                elif proto == "udp":
                    _, ancillary, _, peer = sock.recvmsg(2048, 256)
                    info = [data for level, kind, data in ancillary if (level, kind) == (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO)]
                    record(proto, peer[0], socket.inet_ntop(socket.AF_INET6, info[0][:16]), port)
                    # from the address the datagram was sent to, as a connected UDP client expects
                    sock.sendmsg([b"ok"], [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, info[0])], 0, peer)
                else:
                    packet = sock.recv(65536)
                    header = (packet[0] & 0x0F) * 4
                    if packet[header] == 8:  # echo request
                        record(proto, socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20]), 0)
            except OSError:
                continue


if __name__ == "__main__":
    # python -m tests.vm.busybox_vm TCP,PORTS UDP,PORTS ("-" for none): the Receiver's process.
    _serve(*[[int(p) for p in arg.split(",") if p != "-"] for arg in sys.argv[1:3]])
