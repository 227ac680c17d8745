"""Raw frames and observers for the lockdown lab tests.

A "switch" namespace writes hand-made Ethernet frames (DHCP discover, ARP
request, IPv6 router solicitation and all-nodes echo, UDP to a host
address) onto a veth; the tests then look at what the "host" namespace's
stack did with them (sockets, an input-hook counter, replies on the wire)
and at what the guest behind the interface received.

Sockets are opened inside a namespace by switching only the calling
thread (``setns``); a socket keeps the namespace it was created in, so the
thread can switch back at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import json
import os
import select
import socket
import stat
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
BROADCAST = "ff:ff:ff:ff:ff:ff"
ALL_ROUTERS_MAC = "33:33:00:00:00:02"
ALL_NODES_MAC = "33:33:00:00:00:01"
LLDP_MAC = "01:80:c2:00:00:0e"
DHCP_SERVER_PORT = 67
UNICAST_PORT = 9999

_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def inside(netns: str) -> Iterator[None]:
    """Run the block with this thread in ``netns``; sockets made here stay there."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
        try:
            yield
        finally:
            if _libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(target)
        os.close(home)


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def link_mac(netns: str, dev: str) -> str:
    shown = subprocess.run(["ip", "-n", netns, "-j", "link", "show", "dev", dev], check=True, capture_output=True, text=True)
    return str(json.loads(shown.stdout)[0]["address"])


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ethernet(dst: str, src: str, ethertype: int, payload: bytes, vlan: int | None = None) -> bytes:
    tag = b"" if vlan is None else struct.pack("!HH", ETH_P_8021Q, vlan)
    return mac(dst) + mac(src) + tag + struct.pack("!H", ethertype) + payload


def ipv4_udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    )  # fmt: skip
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + udp


def ipv6_icmp(src: str, dst: str, icmp: bytes) -> bytes:
    s, d = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    pseudo = s + d + struct.pack("!I3xB", len(icmp), socket.IPPROTO_ICMPV6)
    icmp = icmp[:2] + struct.pack("!H", _checksum(pseudo + icmp)) + icmp[4:]
    return struct.pack("!IHBB", 0x60000000, len(icmp), socket.IPPROTO_ICMPV6, 255) + s + d + icmp


def dhcp_discover(src_mac: str, vlan: int | None = None) -> bytes:
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s4s", 1, 1, 6, 0, 0x6F6B6179, 0, 0x8000,
                        b"", b"", b"", b"", mac(src_mac), b"", b"", b"\x63\x82\x53\x63")  # fmt: skip
    options = b"\x35\x01\x01\xff"  # message type: discover; end
    packet = ipv4_udp("0.0.0.0", "255.255.255.255", 68, DHCP_SERVER_PORT, bootp + options)
    return ethernet(BROADCAST, src_mac, ETH_P_IP, packet, vlan)


def arp_request(src_mac: str, sender: str, target: str, vlan: int | None = None) -> bytes:
    arp = struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, 1, mac(src_mac), ipaddress.IPv4Address(sender).packed,
                      b"\0" * 6, ipaddress.IPv4Address(target).packed)  # fmt: skip
    return ethernet(BROADCAST, src_mac, ETH_P_ARP, arp, vlan)


def router_solicitation(src_mac: str, vlan: int | None = None) -> bytes:
    return ethernet(ALL_ROUTERS_MAC, src_mac, ETH_P_IPV6, ipv6_icmp("::", "ff02::2", b"\x85\0\0\0\0\0\0\0"), vlan)


def all_nodes_echo(src_mac: str, src: str, vlan: int | None = None) -> bytes:
    echo = b"\x80\0\0\0" + struct.pack("!HH", 0x6766, 1) + b"guestfence"
    return ethernet(ALL_NODES_MAC, src_mac, ETH_P_IPV6, ipv6_icmp(src, "ff02::1", echo), vlan)


def udp_to(dst_mac: str, src_mac: str, src: str, dst: str, payload: bytes, vlan: int | None = None) -> bytes:
    return ethernet(dst_mac, src_mac, ETH_P_IP, ipv4_udp(src, dst, 40000, UNICAST_PORT, payload), vlan)


def packet_socket(netns: str, dev: str) -> socket.socket:
    """An AF_PACKET socket on ``dev`` that sees every frame it carries."""
    with inside(netns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.bind((dev, 0))
    sock.setblocking(False)
    return sock


def send_frames(netns: str, dev: str, frames: list[bytes]) -> None:
    sock = packet_socket(netns, dev)
    with sock:
        for frame in frames:
            sock.send(frame)


def drain(sockets: list[socket.socket], seconds: float) -> dict[socket.socket, list[bytes]]:
    """Everything each socket (or fd-like) receives within ``seconds``."""
    got: dict[socket.socket, list[bytes]] = {s: [] for s in sockets}
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select(sockets, [], [], left)
        for sock in ready:
            got[sock].append(sock.recv(65536))
    return got


def classify(frame: bytes) -> str | None:
    """Which test frame this is, from its headers (None: not one of ours)."""
    if frame[12:14] == struct.pack("!H", ETH_P_8021Q):
        frame = frame[:12] + frame[16:]
    ethertype = struct.unpack("!H", frame[12:14])[0]
    if ethertype == ETH_P_ARP:
        return "arp-request" if frame[20:22] == b"\0\1" else "arp-reply"
    if ethertype == ETH_P_IP and frame[23] == socket.IPPROTO_UDP:
        dport = struct.unpack("!H", frame[36:38])[0]
        return {DHCP_SERVER_PORT: "dhcp-discover", UNICAST_PORT: "udp:" + frame[42:].decode(errors="replace")}.get(dport)
    if ethertype == ETH_P_IPV6 and frame[20] == socket.IPPROTO_ICMPV6:
        return {133: "router-solicitation", 128: "echo-request", 129: "echo-reply"}.get(frame[54])
    return None


@dataclass
class HostSockets:
    """Sockets in the host namespace that a leaked packet would reach."""

    dhcp: socket.socket
    unicast: socket.socket
    icmp6: socket.socket

    def all(self) -> list[socket.socket]:
        return [self.dhcp, self.unicast, self.icmp6]

    def close(self) -> None:
        for sock in self.all():
            sock.close()


def host_sockets(netns: str) -> HostSockets:
    with inside(netns):
        dhcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dhcp.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        dhcp.bind(("0.0.0.0", DHCP_SERVER_PORT))
        unicast = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        unicast.bind(("0.0.0.0", UNICAST_PORT))
        icmp6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    for sock in (dhcp, unicast, icmp6):
        sock.setblocking(False)
    return HostSockets(dhcp=dhcp, unicast=unicast, icmp6=icmp6)


SWITCH_MAC = "02:00:00:00:00:aa"
SWITCH_ADDR = "192.0.2.100"
HOST_ADDR = "192.0.2.1"
GUEST_ADDR = "198.51.100.2"
VLAN_ID = 10
TUNSETIFF = 0x400454CA
IFF_TAP_NO_PI = 0x0002 | 0x1000

# A separate table at the host's input hooks counting what came from the switch.
COUNTING_TABLES = f"""\
table inet gfcount {{
  chain input {{
    type filter hook input priority 0; policy accept;
    ether saddr {SWITCH_MAC} counter
  }}
}}
table arp gfcount {{
  chain input {{
    type filter hook input priority 0; policy accept;
    arp saddr ether {SWITCH_MAC} counter
  }}
}}
"""

# What the guest must still get; the router solicitation is left out, since a
# macvlan delivers multicast only to groups its guest joined.
GUEST_GETS = frozenset({"dhcp-discover", "arp-request", "echo-request", "udp:bcast", "udp:guest"})


class TapReader:
    """A macvtap's character device, read like a socket (no vnet header)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH", b"", IFF_TAP_NO_PI))

    def fileno(self) -> int:
        return self.fd

    def recv(self, size: int) -> bytes:
        return os.read(self.fd, size)

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class Scene:
    """switch --veth--> host ("up0", or the VLAN "up0.10" on it) -> guest."""

    host: str
    switch: str
    uplink: str
    host_mac: str
    guest_mac: str | None
    guest: socket.socket | TapReader | None
    vlan: int | None = None


@dataclass
class Observed:
    host_sockets: list[str]
    input_packets: int
    replies: list[str]
    guest: set[str]


def _sh(*argv: str, netns: str, input: str | None = None) -> str:
    cmd = ["ip", "netns", "exec", netns, *argv]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, input=input, timeout=30).stdout


def prepare_host(host: str) -> None:
    """Host addresses on lo (the weak host model answers for them on any
    interface), IPv6 forwarding as on a VM host (so it listens to router
    solicitations), no DAD delays, and the counting tables."""
    _sh("ip", "addr", "add", f"{HOST_ADDR}/32", "dev", "lo", netns=host)
    _sh("ip", "addr", "add", "2001:db8::1/128", "dev", "lo", netns=host)
    _sh("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.default.accept_dad=0", netns=host)
    _sh("nft", "-f", "-", netns=host, input=COUNTING_TABLES)


def quiet_guest(guest: str) -> None:
    """No IPv6 in the guest: its own replies would look like the host's."""
    _sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1", netns=guest)


def build_scene(kind: str, host: str, switch: str, guest: str, tap_dir: str) -> Scene:
    """The switch-facing link is ``up0`` in ``host``; ``kind`` says what is behind it.
    Raises CalledProcessError when the kernel lacks the device type."""
    _sh("ip", "link", "add", "sw0", "address", SWITCH_MAC, "type", "veth", "peer", "name", "up0", "netns", host,
        netns=switch)  # fmt: skip
    _sh("ip", "link", "set", "sw0", "up", netns=switch)
    _sh("ip", "link", "set", "up0", "up", netns=host)
    uplink, vlan = "up0", None
    if kind == "vlan":
        _sh("ip", "link", "add", "link", "up0", "name", f"up0.{VLAN_ID}", "type", "vlan", "id", str(VLAN_ID), netns=host)
        _sh("ip", "link", "set", f"up0.{VLAN_ID}", "up", netns=host)
        uplink, vlan = f"up0.{VLAN_ID}", VLAN_ID
    reader: socket.socket | TapReader | None = None
    guest_mac: str | None = None
    if kind in ("macvlan", "vlan"):
        quiet_guest(guest)
        _sh("ip", "link", "add", "link", uplink, "name", "gv0", "type", "macvlan", "mode", "passthru", netns=host)
        _sh("ip", "link", "set", "gv0", "netns", guest, netns=host)
        _sh("ip", "link", "set", "gv0", "up", netns=guest)
        _sh("ip", "addr", "add", f"{GUEST_ADDR}/24", "dev", "gv0", netns=guest)
        reader, guest_mac = packet_socket(guest, "gv0"), link_mac(guest, "gv0")
    elif kind == "macvtap":
        _sh("ip", "link", "add", "link", uplink, "name", "gt0", "type", "macvtap", "mode", "passthru", netns=host)
        _sh("ip", "link", "set", "gt0", "up", netns=host)
        index = _sh("cat", "/sys/class/net/gt0/ifindex", netns=host).strip()
        major, minor = _sh("cat", f"/sys/class/net/gt0/macvtap/tap{index}/dev", netns=host).strip().split(":")
        path = os.path.join(tap_dir, f"tap{index}")
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(int(major), int(minor)))
        reader, guest_mac = TapReader(path), link_mac(host, "gt0")
    elif kind == "bridge":
        quiet_guest(guest)
        _sh("ip", "link", "add", "br0", "type", "bridge", netns=host)
        _sh("ip", "link", "set", "up0", "master", "br0", netns=host)
        _sh("ip", "link", "add", "gp0", "type", "veth", "peer", "name", "gv0", "netns", guest, netns=host)
        _sh("ip", "link", "set", "gp0", "master", "br0", netns=host)
        for dev in ("gp0", "br0"):
            _sh("ip", "link", "set", dev, "up", netns=host)
        _sh("ip", "link", "set", "gv0", "up", netns=guest)
        _sh("ip", "addr", "add", f"{GUEST_ADDR}/24", "dev", "gv0", netns=guest)
        reader, guest_mac = packet_socket(guest, "gv0"), link_mac(guest, "gv0")
    host_mac = link_mac(host, "br0" if kind == "bridge" else uplink)
    return Scene(host=host, switch=switch, uplink=uplink, host_mac=host_mac, guest_mac=guest_mac, guest=reader,
                 vlan=vlan)  # fmt: skip


def scene_frames(scene: Scene) -> list[bytes]:
    """Broadcast DHCP, ARP for a host address, a router solicitation, an
    all-nodes echo, and UDP to a host address in a broadcast frame, in a
    link-local (LLDP group) frame and in a frame to the host's MAC; plus
    unicast UDP meant for the guest."""
    v, src = scene.vlan, SWITCH_MAC
    frames = [
        dhcp_discover(src, v),
        arp_request(src, SWITCH_ADDR, HOST_ADDR, v),
        router_solicitation(src, v),
        all_nodes_echo(src, "fe80::aa", v),
        udp_to(BROADCAST, src, SWITCH_ADDR, HOST_ADDR, b"bcast", v),
        udp_to(LLDP_MAC, src, SWITCH_ADDR, HOST_ADDR, b"lldp", v),
        udp_to(scene.host_mac, src, SWITCH_ADDR, HOST_ADDR, b"hostmac", v),
    ]
    if scene.guest_mac is not None:
        frames.append(udp_to(scene.guest_mac, src, SWITCH_ADDR, GUEST_ADDR, b"guest", v))
    return frames


def input_packets(host: str) -> int:
    total = 0
    for family in ("inet", "arp"):
        listing = json.loads(_sh("nft", "-j", "list", "table", family, "gfcount", netns=host))
        for item in listing["nftables"]:
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    total += int(expr["counter"]["packets"])
    return total


def exercise(scene: Scene, seconds: float = 1.0) -> Observed:
    """Send the frames from the switch and collect what everyone got."""
    host = host_sockets(scene.host)
    switch = packet_socket(scene.switch, "sw0")
    readers: list = [*host.all(), switch] + ([scene.guest] if scene.guest is not None else [])
    try:
        send_frames(scene.switch, "sw0", scene_frames(scene))
        got = drain(readers, seconds)
    finally:
        host.close()
        switch.close()
    seen = ["dhcp-discover"] * len(got[host.dhcp])
    seen += ["udp:" + d.decode(errors="replace") for d in got[host.unicast]]
    seen += [f"icmp6:{d[0]}" for d in got[host.icmp6] if d[0] in (128, 133)]
    replies = [k for f in got[switch] if f[6:12] != mac(SWITCH_MAC) and (k := classify(f)) in ("arp-reply", "echo-reply")]
    guest = set()
    if scene.guest is not None:
        guest = {k for f in got[scene.guest] if f[6:12] == mac(SWITCH_MAC) and (k := classify(f)) is not None}
    return Observed(host_sockets=seen, input_packets=input_packets(scene.host), replies=replies, guest=guest)
