"""What a guest reaches, with real packets from a guest namespace over veth and TAP."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.netlab import Lab, sh
from tests.lab.guests_lab import Scene

pytestmark = pytest.mark.lab

GATEWAY_ONLY = ("--net-allow", "tcp://@gateway:8080")


@pytest.fixture
def scene(lab: Lab, tmp_path: Path) -> Iterator[Scene]:
    """name: scene; scope: function; depends on lab. A host namespace with listeners."""
    yield Scene(lab, tmp_path / "state")


@pytest.mark.parametrize("kind", ["veth", "tap"])
def test_without_guestfence_the_guest_reaches_every_host_service(scene: Scene, kind: str) -> None:
    link = scene.add_guest("g1", 1, kind=kind)
    targets = scene.host_targets(link)
    assert scene.reachable(link.netns, targets) == set(targets)


@pytest.mark.parametrize("kind", ["veth", "tap"])
def test_guest_reaches_the_gateway_port_and_nothing_else(scene: Scene, kind: str) -> None:
    link = scene.add_guest("g1", 1, kind=kind)
    scene.register(link, *GATEWAY_ONLY)
    targets = scene.host_targets(link)
    allowed = {f"tcp://{link.gateway4}:8080", f"tcp://[{link.gateway6}]:8080"}
    assert scene.reachable(link.netns, targets) == allowed


def test_host_address_added_later_and_link_local_are_not_reachable(scene: Scene) -> None:
    link = scene.add_guest("g1", 1)
    sh("ip", "addr", "add", "fe80::1/64", "dev", link.iface, "nodad", netns=scene.host)
    scene.register(link, *GATEWAY_ONLY)
    scene.lab.addr(scene.host, "lo", "203.0.113.9/32")
    scene.lab.addr(scene.host, "lo", "2001:db8:fe::9/128")
    late = ["tcp://203.0.113.9:8080", "tcp://203.0.113.9:22", "udp://203.0.113.9:53", "tcp://[2001:db8:fe::9]:22"]
    assert scene.reachable(link.netns, late) == set()
    assert scene.reachable(link.netns, [f"tcp://[fe80::1%eth0]:{p}" for p in (22, 8080)]) == set()


def test_port_forwarded_on_the_host_is_judged_by_what_the_guest_aimed_at(scene: Scene) -> None:
    link = scene.add_guest("g1", 1)
    forward = f"table ip hostnat {{\n chain pre {{\n type nat hook prerouting priority dstnat\n tcp dport 9999 dnat to {link.gateway4}:8080\n }}\n}}\n"
    sh("nft", "-f", "-", netns=scene.host, input=forward)
    forwarded = f"tcp://{link.gateway4}:9999"
    assert scene.reachable(link.netns, [forwarded]) == {forwarded}, "the port forward works without guestfence"
    scene.register(link, *GATEWAY_ONLY)
    assert scene.reachable(link.netns, [forwarded, f"tcp://{link.gateway4}:8080"]) == {f"tcp://{link.gateway4}:8080"}


@pytest.mark.parametrize("kind", ["veth", "tap"])
def test_return_traffic_neighbour_discovery_and_allowed_ping_work(scene: Scene, kind: str) -> None:
    link = scene.add_guest("g1", 1, kind=kind)
    scene.listen(link.netns, (7000,))
    scene.register(link, *GATEWAY_ONLY)
    sh("ip", "neigh", "flush", "dev", "eth0", netns=link.netns)
    sh("ip", "neigh", "flush", "dev", link.iface, netns=scene.host)
    pings = [f"icmp://{link.gateway4}", f"icmp://{link.gateway6}"]
    assert scene.reachable(link.netns, pings) == set(), "ping is the policy's: this one does not allow it"
    scene.register(link, *GATEWAY_ONLY, "--net-allow", "icmp://@gateway")
    assert scene.reachable(link.netns, pings) == set(pings)
    guest_service = [f"tcp://{link.address4}:7000", f"tcp://[{link.address6}]:7000"]
    assert scene.reachable(scene.host, guest_service) == set(guest_service)
    neighbours = sh("ip", "-6", "neigh", "show", "dev", "eth0", netns=link.netns).stdout
    assert link.gateway6 in neighbours and "FAILED" not in neighbours


@pytest.mark.parametrize("version", [4, 6])
def test_path_mtu_signals_from_the_guest_reach_the_host(scene: Scene, version: int) -> None:
    """The guest answers a host-initiated UDP flow with "fragmentation needed"
    (IPv4) or "packet too big" (IPv6); the host's socket learns the smaller MTU."""
    link = scene.add_guest("g1", 1)
    scene.register(link, *GATEWAY_ONLY)
    guest_address = link.address4 if version == 4 else link.address6
    host_side = scene.lab.spawn([sys.executable, "-c", _PMTU_HOST, guest_address], netns=scene.host)
    assert host_side.stdout is not None
    source, port = host_side.stdout.readline().decode().split()
    sh(sys.executable, "-c", _PMTU_GUEST, source, port, guest_address, netns=link.netns)
    assert host_side.stdout.readline().decode().strip() == "1280"


_PMTU_HOST = r"""
import socket, sys, time
dest = sys.argv[1]
family = socket.AF_INET6 if ":" in dest else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
if family == socket.AF_INET:
    s.setsockopt(socket.IPPROTO_IP, 10, 2)       # IP_MTU_DISCOVER = IP_PMTUDISC_DO
else:
    s.setsockopt(socket.IPPROTO_IPV6, 23, 2)     # IPV6_MTU_DISCOVER = IPV6_PMTUDISC_DO
s.connect((dest, 7001)); s.send(b"x" * 32)
print(s.getsockname()[0], s.getsockname()[1], flush=True)
mtu_opt = (socket.IPPROTO_IP, 14) if family == socket.AF_INET else (socket.IPPROTO_IPV6, 24)  # IP_MTU / IPV6_MTU
for _ in range(100):
    if s.getsockopt(*mtu_opt) < 1500:
        break
    time.sleep(0.05)
print(s.getsockopt(*mtu_opt), flush=True)
"""

_PMTU_GUEST = r"""
import socket, struct, sys
source, port, me = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def checksum(data):
    if len(data) % 2: data += b"\0"
    total = sum(struct.unpack(f"!{len(data)//2}H", data))
    while total >> 16: total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
udp = struct.pack("!HHHH", port, 7001, 8 + 32, 0)
if ":" not in me:
    inner = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + 32, 0, 0x4000, 64, 17, 0, socket.inet_aton(source), socket.inet_aton(me))
    inner = inner[:10] + struct.pack("!H", checksum(inner)) + inner[12:]
    body = struct.pack("!BBHHH", 3, 4, 0, 0, 1280) + inner + udp
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.bind((me, 0)); s.sendto(body, (source, 0))
else:
    inner = struct.pack("!IHBB16s16s", 6 << 28, 8 + 32, 17, 64, socket.inet_pton(socket.AF_INET6, source), socket.inet_pton(socket.AF_INET6, me))
    body = struct.pack("!BBHI", 2, 0, 0, 1280) + inner + udp
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    s.bind((me, 0)); s.sendto(body, (source, 0))
"""
