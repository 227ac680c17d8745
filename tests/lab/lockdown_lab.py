"""Raw frames and observers for the lockdown lab tests.

A "switch" namespace writes hand-made Ethernet frames (DHCP discover, ARP
request, IPv6 router solicitation and all-nodes echo, UDP to a host
address) onto a veth; the tests then look at what the "host" namespace's
stack did with them (sockets, an input-hook counter, replies on the wire)
and at what the guest behind the interface received.

Deterministic at any speed (a 6.1 kernel under TCG runs 10-25x slower):
the switch namespace has IPv6 off before its link exists, so the only
frames it ever sends are the test's own; the input counter is read as a
difference around each exercise; and an exercise ends when its last
frame, a broadcast "mark", has been seen at the earliest hook on every
host device the frames reach (and by the guest), not after a fixed time.
Frames on one device are processed in order, and delivery to a host
socket happens while a frame is processed, so by then everything sent
before the mark has had its chance to leak.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

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
DHCP_CLIENT_PORT = 68
UNICAST_PORT = 9999
MARK_PORT = 9997
# How long an exercise may wait for its mark: generous for an emulated CPU;
# at host speed the mark arrives within milliseconds.
EXERCISE_TIMEOUT = 60.0
# How long one guestfence command may take: starting Python alone takes
# seconds on an emulated CPU shared with other VMs.
CLI_TIMEOUT = 300.0

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


def internet_checksum(data: bytes) -> int:
    """RFC 1071's checksum, for the headers of hand-made frames."""
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
    header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
    return header + udp


def ipv6_icmp(src: str, dst: str, icmp: bytes) -> bytes:
    s, d = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    pseudo = s + d + struct.pack("!I3xB", len(icmp), socket.IPPROTO_ICMPV6)
    icmp = icmp[:2] + struct.pack("!H", internet_checksum(pseudo + icmp)) + icmp[4:]
    return struct.pack("!IHBB", 0x60000000, len(icmp), socket.IPPROTO_ICMPV6, 255) + s + d + icmp


def dhcp_discover(src_mac: str, vlan: int | None = None) -> bytes:
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s4s", 1, 1, 6, 0, 0x6F6B6179, 0, 0x8000,
                        b"", b"", b"", b"", mac(src_mac), b"", b"", b"\x63\x82\x53\x63")  # fmt: skip
    options = b"\x35\x01\x01\xff"  # message type: discover; end
    packet = ipv4_udp("0.0.0.0", "255.255.255.255", 68, DHCP_SERVER_PORT, bootp + options)
    return ethernet(BROADCAST, src_mac, ETH_P_IP, packet, vlan)


def dhcp_offer(src_mac: str, client_mac: str, vlan: int | None = None) -> bytes:
    """A server's offer to a client that asked for broadcast replies: the guest's lease."""
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s4s", 2, 1, 6, 0, 0x6F6B6179, 0, 0x8000,
                        b"", ipaddress.IPv4Address(GUEST_ADDR).packed, ipaddress.IPv4Address(SWITCH_ADDR).packed,
                        b"", mac(client_mac), b"", b"", b"\x63\x82\x53\x63")  # fmt: skip
    options = b"\x35\x01\x02\xff"  # message type: offer; end
    packet = ipv4_udp(SWITCH_ADDR, "255.255.255.255", DHCP_SERVER_PORT, DHCP_CLIENT_PORT, bootp + options)
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


def mark_frame(src_mac: str, vlan: int | None = None) -> bytes:
    """The last frame of an exercise: broadcast, so it follows the others everywhere."""
    return ethernet(BROADCAST, src_mac, ETH_P_IP, ipv4_udp(SWITCH_ADDR, "255.255.255.255", 40000, MARK_PORT, b"mark"), vlan)


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
        return {DHCP_SERVER_PORT: "dhcp-discover", DHCP_CLIENT_PORT: "dhcp-offer", UNICAST_PORT: "udp:" + frame[42:].decode(errors="replace"),
                MARK_PORT: "mark"}.get(dport)  # fmt: skip
    if ethertype == ETH_P_IPV6 and frame[20] == socket.IPPROTO_ICMPV6:
        return {133: "router-solicitation", 128: "echo-request", 129: "echo-reply"}.get(frame[54])
    return None


@dataclass
class HostSockets:
    """Sockets in the host namespace that a leaked packet would reach."""

    dhcp: socket.socket
    dhcp_client: socket.socket
    unicast: socket.socket
    icmp6: socket.socket

    def all(self) -> list[socket.socket]:
        return [self.dhcp, self.dhcp_client, self.unicast, self.icmp6]

    def close(self) -> None:
        for sock in self.all():
            sock.close()


def host_sockets(netns: str) -> HostSockets:
    with inside(netns):
        dhcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dhcp.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        dhcp.bind(("0.0.0.0", DHCP_SERVER_PORT))
        dhcp_client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dhcp_client.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        dhcp_client.bind(("0.0.0.0", DHCP_CLIENT_PORT))
        unicast = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        unicast.bind(("0.0.0.0", UNICAST_PORT))
        icmp6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    for sock in (dhcp, dhcp_client, unicast, icmp6):
        sock.setblocking(False)
    return HostSockets(dhcp=dhcp, dhcp_client=dhcp_client, unicast=unicast, icmp6=icmp6)


SWITCH_MAC = "02:00:00:00:00:aa"
SWITCH_ADDR = "192.0.2.100"
HOST_ADDR = "192.0.2.1"
GUEST_ADDR = "198.51.100.2"
VLAN_ID = 10
TUNSETIFF = 0x400454CA
IFF_TAP_NO_PI = 0x0002 | 0x1000

# A separate table at the host's input hooks counting what came from the
# switch, and the mark's record: every interface it reached the earliest
# hook on (inet prerouting; a bridge port's frames for the host: bridge input).
COUNTING_TABLES = f"""\
table inet gfmark {{
  set seen {{ type ifname; flags dynamic; }}
  chain prerouting {{
    type filter hook prerouting priority -500; policy accept;
    udp dport {MARK_PORT} add @seen {{ iifname }}
  }}
}}
table bridge gfmark {{
  set seen {{ type ifname; flags dynamic; }}
  chain input {{
    type filter hook input priority -500; policy accept;
    udp dport {MARK_PORT} add @seen {{ iifname }}
  }}
}}
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
GUEST_GETS = frozenset({"dhcp-discover", "dhcp-offer", "arp-request", "echo-request", "udp:bcast", "udp:guest"})


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
    """switch --veth--> host ("up0", or the VLAN "up0.10" on it) -> guest.
    ``stacked`` are devices in the host namespace on top of the uplink (a
    macvtap, a macvlan the host kept); ``tap`` the macvtap's device node."""

    host: str
    switch: str
    uplink: str
    host_mac: str
    guest_mac: str | None
    guest: socket.socket | TapReader | None
    vlan: int | None = None
    stacked: list[str] = field(default_factory=list)
    tap: str | None = None
    bridge: bool = False

    def marked(self) -> set[tuple[str, str]]:
        """Where the mark must have been seen: (family, interface)."""
        if self.bridge:
            return {("bridge", self.uplink)}
        seen = {("inet", self.uplink)}
        for dev in self.stacked:
            if not (dev == "gt0" and self.guest is not None):  # a held macvtap gives its frames to the reader
                seen.add(("inet", dev))
        return seen


@dataclass
class Observed:
    host_sockets: list[str]
    input_packets: int
    replies: list[str]
    guest: set[str]
    complete: bool


def _sh(*argv: str, netns: str, input: str | None = None) -> str:
    cmd = ["ip", "netns", "exec", netns, *argv]
    # A set-up command's bound is the CLI's: it only stops a hang (an `nft -f`
    # in a loaded TCG VM has taken tens of seconds).
    return subprocess.run(cmd, check=True, capture_output=True, text=True, input=input, timeout=CLI_TIMEOUT).stdout


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


def quiet_switch(switch: str) -> None:
    """No IPv6 in the switch namespace before its link exists: no DAD, router
    solicitation or MLD report of its own reaches the host at a moment the
    test does not choose (under emulation, while `lockdown add` still runs)."""
    _sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1", netns=switch)


def vlan_support(netns: str) -> str | None:
    """None when this kernel can make 802.1Q devices (loading 8021q if it is a
    module), else why not: probed by making one on a veth, not assumed."""
    _sh("ip", "link", "add", "gfprobe0", "type", "veth", "peer", "name", "gfprobe1", netns=netns)
    probe = ["ip", "netns", "exec", netns, "ip", "link", "add", "link", "gfprobe0", "name", "gfprobe0.2", "type", "vlan",
             "id", "2"]  # fmt: skip
    try:
        made = subprocess.run(probe, capture_output=True, text=True)
        if made.returncode != 0 and "Unknown device type" in made.stderr:
            with contextlib.suppress(OSError):  # no modprobe (a kernel without modules): the retry says why
                subprocess.run(["modprobe", "8021q"], capture_output=True)
            made = subprocess.run(probe, capture_output=True, text=True)
    finally:
        _sh("ip", "link", "del", "gfprobe0", netns=netns)  # its VLAN goes with it
    return None if made.returncode == 0 else f"no 802.1Q (vlan) support in this kernel: {made.stderr.strip()}"


def add_macvtap(scene: Scene, tap_dir: str, *, reader: bool = True) -> None:
    """A macvtap passthru "gt0" on the scene's uplink, up, with its device node
    in ``tap_dir``; ``reader``: held open as QEMU would (see ``open_tap``)."""
    _sh("ip", "link", "add", "link", scene.uplink, "name", "gt0", "type", "macvtap", "mode", "passthru", netns=scene.host)
    _sh("ip", "link", "set", "gt0", "up", netns=scene.host)
    index = _sh("cat", "/sys/class/net/gt0/ifindex", netns=scene.host).strip()
    major, minor = _sh("cat", f"/sys/class/net/gt0/macvtap/tap{index}/dev", netns=scene.host).strip().split(":")
    scene.tap = os.path.join(tap_dir, f"tap{index}")
    os.mknod(scene.tap, 0o600 | stat.S_IFCHR, os.makedev(int(major), int(minor)))
    scene.stacked.append("gt0")
    scene.guest_mac = link_mac(scene.host, "gt0")
    if reader:
        open_tap(scene)


def open_tap(scene: Scene) -> None:
    """Hold the macvtap open and read it, as QEMU does."""
    assert scene.tap is not None
    scene.guest = TapReader(scene.tap)


def add_host_macvlan(scene: Scene, mode: str = "passthru") -> None:
    """A macvlan "hv0" on the uplink that stays in the host namespace, up."""
    _sh("ip", "link", "add", "link", scene.uplink, "name", "hv0", "type", "macvlan", "mode", mode, netns=scene.host)
    _sh("ip", "link", "set", "hv0", "up", netns=scene.host)
    scene.stacked.append("hv0")


def build_scene(kind: str, host: str, switch: str, guest: str, tap_dir: str, *, vlan: bool = False,
                reader: bool = True) -> Scene:  # fmt: skip
    """The switch-facing link is ``up0`` in ``host`` (``vlan``: the VLAN
    ``up0.10`` on it); ``kind`` says what is behind it: "macvlan" (in the
    guest namespace), "macvtap" (``reader``: held open), "hostmacvlan" (a
    macvlan the host keeps), "bridge", "veth" (nothing), "vlan" (a macvlan
    on the VLAN). Raises CalledProcessError when the kernel lacks the device type."""
    quiet_switch(switch)
    _sh("ip", "link", "add", "sw0", "address", SWITCH_MAC, "type", "veth", "peer", "name", "up0", "netns", host,
        netns=switch)  # fmt: skip
    _sh("ip", "link", "set", "sw0", "up", netns=switch)
    _sh("ip", "link", "set", "up0", "up", netns=host)
    uplink, vlan_id = "up0", None
    if kind == "vlan" or vlan:
        _sh("ip", "link", "add", "link", "up0", "name", f"up0.{VLAN_ID}", "type", "vlan", "id", str(VLAN_ID), netns=host)
        _sh("ip", "link", "set", f"up0.{VLAN_ID}", "up", netns=host)
        uplink, vlan_id = f"up0.{VLAN_ID}", VLAN_ID
    scene = Scene(host=host, switch=switch, uplink=uplink, host_mac="", guest_mac=None, guest=None, vlan=vlan_id,
                  bridge=kind == "bridge")  # fmt: skip
    if kind in ("macvlan", "vlan"):
        quiet_guest(guest)
        _sh("ip", "link", "add", "link", uplink, "name", "gv0", "type", "macvlan", "mode", "passthru", netns=host)
        _sh("ip", "link", "set", "gv0", "netns", guest, netns=host)
        _sh("ip", "link", "set", "gv0", "up", netns=guest)
        _sh("ip", "addr", "add", f"{GUEST_ADDR}/24", "dev", "gv0", netns=guest)
        scene.guest, scene.guest_mac = packet_socket(guest, "gv0"), link_mac(guest, "gv0")
    elif kind == "macvtap":
        add_macvtap(scene, tap_dir, reader=reader)
    elif kind == "hostmacvlan":
        add_host_macvlan(scene)
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
        scene.guest, scene.guest_mac = packet_socket(guest, "gv0"), link_mac(guest, "gv0")
    scene.host_mac = link_mac(host, "br0" if kind == "bridge" else uplink)
    return scene


def scene_frames(scene: Scene) -> list[bytes]:
    """Broadcast DHCP, ARP for a host address, a router solicitation, an
    all-nodes echo, and UDP to a host address in a broadcast frame, in a
    link-local (LLDP group) frame and in a frame to the host's MAC; plus
    a DHCP offer and unicast UDP meant for the guest; then the mark."""
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
        frames.append(dhcp_offer(src, scene.guest_mac, v))
        frames.append(udp_to(scene.guest_mac, src, SWITCH_ADDR, GUEST_ADDR, b"guest", v))
    return [*frames, mark_frame(src, v)]


def input_packets(host: str) -> int:
    total = 0
    for family in ("inet", "arp"):
        listing = json.loads(_sh("nft", "-j", "list", "table", family, "gfcount", netns=host))
        for item in listing["nftables"]:
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    total += int(expr["counter"]["packets"])
    return total


def marks_seen(host: str) -> set[tuple[str, str]]:
    seen = set()
    for family in ("inet", "bridge"):
        listing = json.loads(_sh("nft", "-j", "list", "set", family, "gfmark", "seen", netns=host))
        for item in listing["nftables"]:
            seen |= {(family, str(e)) for e in item.get("set", {}).get("elem", [])}
    return seen


def forget_marks(host: str) -> None:
    for family in ("inet", "bridge"):
        _sh("nft", "flush", "set", family, "gfmark", "seen", netns=host)


Expectation = Callable[["Observed"], bool]


def exercise(scene: Scene, until: Expectation = lambda seen: True, timeout: float = EXERCISE_TIMEOUT) -> Observed:
    """Send the frames from the switch and collect what everyone got, until
    the mark has been seen everywhere it goes and ``until`` holds (what a
    positive check waits for: a reply, the guest's copies), or ``timeout``
    (then ``complete`` is False and the test must fail, not pass vacuously)."""
    host = host_sockets(scene.host)
    switch = packet_socket(scene.switch, "sw0")
    readers: list = [*host.all(), switch] + ([scene.guest] if scene.guest is not None else [])
    got: dict = {r: [] for r in readers}
    forget_marks(scene.host)
    before = input_packets(scene.host)
    try:
        send_frames(scene.switch, "sw0", scene_frames(scene))
        deadline = time.monotonic() + timeout
        while True:
            for sock, frames in drain(readers, 0.02).items():
                got[sock] += frames
            observed = _observed(scene, host, switch, got, input_packets(scene.host) - before)
            observed.complete = scene.marked() <= marks_seen(scene.host) and (
                scene.guest is None or "mark" in observed.guest) and until(observed)  # fmt: skip
            if observed.complete or time.monotonic() > deadline:
                return observed
    finally:
        host.close()
        switch.close()


def _observed(scene: Scene, host: HostSockets, switch: socket.socket, got: dict, input_count: int) -> Observed:
    seen = ["dhcp-discover"] * len(got[host.dhcp]) + ["dhcp-offer"] * len(got[host.dhcp_client])
    seen += ["udp:" + d.decode(errors="replace") for d in got[host.unicast]]
    seen += [f"icmp6:{d[0]}" for d in got[host.icmp6] if d[0] in (128, 133)]
    replies = [k for f in got[switch] if f[6:12] != mac(SWITCH_MAC) and (k := classify(f)) in ("arp-reply", "echo-reply")]
    guest = set()
    if scene.guest is not None:
        guest = {k for f in got[scene.guest] if f[6:12] == mac(SWITCH_MAC) and (k := classify(f)) is not None}
    return Observed(host_sockets=seen, input_packets=input_count, replies=replies, guest=guest, complete=False)
