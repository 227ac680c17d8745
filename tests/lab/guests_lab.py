"""A host namespace with services, and guests attached to it by veth or TAP,
for the nft lab tests.

The "host" namespace runs one listener (``guestfence.demolab serve``, the
demo's own) answering on every address it owns: TCP ports ``SERVICE_TCP``
and UDP ports ``SERVICE_UDP``; guests try them with demolab's prober. A
"guest" namespace reaches it over:

- veth: ``vmtap-NAME`` (host) <-> ``eth0`` (guest);
- TAP: a real TAP device ``vmtap-NAME`` in the host, whose file descriptor
  is held by ``relay`` (this module run as a script): it copies frames
  between the TAP and a veth inside the guest namespace (``wire0``, the
  peer of the guest's ``eth0``), so the guest is a full Linux stack behind
  a TAP, as a VM is behind its virtio NIC.

``guestfence`` runs inside the host namespace with a private state dir.
Everything is removed by ``Lab.close()``.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import select
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.lab.netlab import GUESTFENCE, Lab, sh

# How long a helper process may take to say "ready": a bound on a hang, not
# an expectation (Python starts in tens of seconds in the 6.1 VM under load).
STARTUP_BOUND = 120
SERVICE_TCP = (22, 5432, 8080)
SERVICE_UDP = (53, 8080)

@dataclass
class GuestLink:
    name: str
    netns: str
    iface: str
    kind: str
    address4: str
    gateway4: str
    address6: str
    gateway6: str
    mac: str


class Scene:
    """One host namespace with listeners; guests are added with ``add_guest``."""

    HOST_EXTRA = ("198.51.100.7/32", "2001:db8:ff::7/128")

    def __init__(self, lab: Lab, state_dir: Path) -> None:
        self.lab = lab
        self.state_dir = state_dir
        self.host = lab.netns("gfh")
        self.guests: dict[str, GuestLink] = {}
        for cidr in self.HOST_EXTRA:
            lab.addr(self.host, "lo", cidr)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", netns=self.host)
        self.listen(self.host, SERVICE_TCP, SERVICE_UDP)

    def listen(self, netns: str, tcp: tuple[int, ...], udp: tuple[int, ...] = (9,)) -> None:
        ports = [",".join(map(str, tcp)), ",".join(map(str, udp))]
        proc = self.lab.spawn([sys.executable, "-m", "guestfence.demolab", "serve", *ports], netns=netns)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], STARTUP_BOUND)
        assert ready and proc.stdout.readline().strip() == b"ready", "listener did not start"

    def add_guest(self, name: str, index: int, *, kind: str = "veth") -> GuestLink:
        """Guest ``index`` (1..60) gets 192.0.2.(4i+2)/30 and 2001:db8:i::2/64."""
        netns = self.lab.netns("gfg")
        iface = f"vmtap-{name}"[:15]
        base = 4 * index
        link = GuestLink(
            name=name, netns=netns, iface=iface, kind=kind,
            address4=f"192.0.2.{base + 2}", gateway4=f"192.0.2.{base + 1}",
            address6=f"2001:db8:{index}::2", gateway6=f"2001:db8:{index}::1", mac="",
        )  # fmt: skip
        if kind == "veth":
            self.lab.veth(self.host, iface, netns, "eth0")
        else:
            sh("ip", "tuntap", "add", "dev", iface, "mode", "tap", netns=self.host)
            sh("ip", "link", "set", iface, "up", netns=self.host)
            self.lab.veth(netns, "eth0", netns, "wire0")
            sh("sysctl", "-qw", "net.ipv6.conf.wire0.disable_ipv6=1", netns=netns)
            # Frames copied by the relay must be complete: no checksum or
            # segmentation left for a NIC to do, as a VM's virtio NIC would.
            sh("ethtool", "-K", "eth0", "tx", "off", "sg", "off", "tso", "off", "gso", "off", netns=netns)
            relay = self.lab.spawn([sys.executable, "-m", "tests.lab.guests_lab", "relay", iface, netns, "wire0"], netns=self.host)
            assert relay.stdout is not None
            ready, _, _ = select.select([relay.stdout], [], [], STARTUP_BOUND)
            assert ready and relay.stdout.readline().strip() == b"ready", "relay did not start"
        self.lab.addr(self.host, iface, f"{link.gateway4}/30")
        self.lab.addr(self.host, iface, f"{link.gateway6}/64")
        self.lab.addr(netns, "eth0", f"{link.address4}/30")
        self.lab.addr(netns, "eth0", f"{link.address6}/64")
        sh("ip", "route", "add", "default", "via", link.gateway4, netns=netns)
        sh("ip", "-6", "route", "add", "default", "via", link.gateway6, netns=netns)
        link.mac = json.loads(sh("ip", "-j", "link", "show", "eth0", netns=netns).stdout)[0]["address"]
        self.guests[name] = link
        return link

    def gf(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``guestfence ARGV --state-dir DIR`` inside the host namespace."""
        done = sh(GUESTFENCE, *argv, "--state-dir", str(self.state_dir), netns=self.host, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"guestfence {' '.join(argv)} exited {done.returncode}: {done.stderr}")
        return done

    def register(self, link: GuestLink, *policy: str, extra: tuple[str, ...] = ()) -> None:
        self.gf(
            "guest", "add", link.name, "--iface", link.iface,
            "--address", f"{link.address4}/30", "--address", f"{link.address6}/64",
            "--gateway", link.gateway4, "--gateway", link.gateway6, *policy, *extra,
        )  # fmt: skip

    def probe(self, netns: str, targets: list[str], *, timeout: float = 1.0, source: str = "") -> dict[str, bool]:
        done = sh(sys.executable, "-m", "guestfence.demolab", "probe", json.dumps(targets), str(timeout), source,
                  netns=netns, timeout=30 + timeout * len(targets))  # fmt: skip
        return json.loads(done.stdout)

    def reachable(self, netns: str, targets: list[str], **kwargs: object) -> set[str]:
        return {t for t, ok in self.probe(netns, targets, **kwargs).items() if ok}  # type: ignore[arg-type]

    def host_targets(self, link: GuestLink) -> list[str]:
        """Every host service on every host address the guest could aim at."""
        addresses = [link.gateway4, f"[{link.gateway6}]", "198.51.100.7", "[2001:db8:ff::7]"]
        return [f"{proto}://{a}:{p}" for a in addresses for proto, ports in (("tcp", SERVICE_TCP), ("udp", SERVICE_UDP)) for p in ports]

    def ruleset(self) -> list[dict[str, object]]:
        """Our tables' objects, without handles and counter values (compared by
        content): ordered by object, each chain's rules in their order. The
        order objects were created in is not their meaning (the nat chain, say,
        is created with the first guest that masquerades)."""
        listed = json.loads(sh("nft", "-j", "list", "ruleset", netns=self.host).stdout)["nftables"]
        return sorted((_normalised(item) for item in listed if _table_of(item) == "guestfence"), key=_object_key)

    def other_tables(self) -> list[dict[str, object]]:
        listed = json.loads(sh("nft", "-j", "list", "ruleset", netns=self.host).stdout)["nftables"]
        return [_normalised(item) for item in listed if _table_of(item) not in (None, "guestfence")]


def _table_of(item: dict[str, object]) -> str | None:
    kind, body = next(iter(item.items()))
    if kind == "metainfo" or not isinstance(body, dict):
        return None
    return str(body.get("name") if kind == "table" else body.get("table"))


def _object_key(item: dict[str, object]) -> tuple[str, str, str, int]:
    """Sorts a listing by object; a stable sort keeps each chain's rules in order after their chain."""
    kind, body = next(iter(item.items()))
    assert isinstance(body, dict)
    if kind == "rule":
        return (str(body["family"]), "chain", str(body["chain"]), 1)
    return (str(body["family"]), kind, str(body.get("name")), 0)


def _normalised(item: dict[str, object]) -> dict[str, object]:
    kind, body = next(iter(item.items()))
    assert isinstance(body, dict)
    kept = {k: v for k, v in body.items() if k not in ("handle", "packets", "bytes")}
    if kind == "set" and kept.get("name") == "generation":
        kept.pop("elem", None)  # every change bumps it; the tests compare what the rules do
    if "expr" in kept:
        kept["expr"] = [{"counter": None} if "counter" in e and isinstance(e["counter"], dict) else e for e in kept["expr"]]  # type: ignore[union-attr]
    if isinstance(kept.get("elem"), list):  # a counting set's elements count traffic: their values are not the ruleset
        kept["elem"] = sorted((_uncounted(e) for e in kept["elem"]), key=json.dumps)  # type: ignore[union-attr]
    return {kind: kept}


def _uncounted(element: object) -> object:
    if isinstance(element, dict) and isinstance(element.get("elem"), dict) and "counter" in element["elem"]:
        return {"elem": {k: v for k, v in element["elem"].items() if k != "counter"}}
    return element


# The TAP relay: `python -m tests.lab.guests_lab relay TAP NETNS IFACE`.

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
CLONE_NEWNET = 0x40000000
PACKET_OUTGOING = 4
ETH_P_ALL = 0x0003


def relay(tap: str, netns: str, iface: str) -> None:
    """Copy frames between TAP ``tap`` (this namespace) and ``iface`` in ``netns``."""
    tap_fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tap_fd, TUNSETIFF, struct.pack("16sH", tap.encode(), IFF_TAP | IFF_NO_PI))
    libc = ctypes.CDLL(None, use_errno=True)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    if libc.setns(target, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns failed")
    wire = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    wire.bind((iface, 0))
    print("ready", flush=True)
    while True:
        readable, _, _ = select.select([tap_fd, wire], [], [])
        if tap_fd in readable:
            wire.send(os.read(tap_fd, 65536))
        if wire in readable:
            frame, address = wire.recvfrom(65536)
            if address[2] != PACKET_OUTGOING:
                os.write(tap_fd, frame)


if __name__ == "__main__" and sys.argv[1:2] == ["relay"]:
    relay(*sys.argv[2:5])
