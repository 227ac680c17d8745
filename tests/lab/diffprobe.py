"""Send one packet per probe, all at once, and exit: the sender of the
differential test (``python -m tests.lab.diffprobe PROBES_JSON``); and
``python -m tests.lab.diffprobe join IFACE GROUP...``, a host holding
multicast groups as an mDNS or SSDP listener does.

The sender's view is never the verdict: this only sends, and the test reads
what arrived from the receiving side (nft sets in the host namespace). Each
probe is a dict:

- ``{"how": "socket", "proto": "tcp"|"udp"|"icmp", "address": A, "port": P,
  "scope": IFACE|None}``: an ordinary socket, as a program would use it: a
  non-blocking TCP connect (its SYN leaves inside connect), a UDP sendto
  (broadcast allowed), an ICMP echo on the kernel ping socket;
- ``{"how": "frame", "iface": I, "src_mac": M, "dst_mac": M, "src": A,
  "dst": A, "port": P, "proto": "udp"|"ns", "nonce": N}``: a whole Ethernet
  frame written on a packet socket, for what a VM can put on its wire but a
  socket cannot send (loopback, unspecified and IPv4-mapped destinations),
  and for the end-of-round marker (a neighbour solicitation whose reserved
  field carries ``nonce``; neighbour discovery is always allowed).

Errors of one probe (a refused connect, an unreachable network) are the
kernel's or the sandbox's answer and are ignored: what counts is what arrives.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import signal
import socket
import struct
import sys
from typing import Any

from tests.lab.lockdown_lab import internet_checksum

ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD

def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def frame(probe: dict[str, Any]) -> bytes:
    src, dst = ipaddress.ip_address(probe["src"]), ipaddress.ip_address(probe["dst"])
    if probe["proto"] == "ns":
        proto, body = 58, struct.pack("!BBHI", 135, 0, 0, probe["nonce"]) + dst.packed
    else:
        proto, body = 17, struct.pack("!HHHH", 40000, probe["port"], 8 + 4, 0) + b"gfdp"
    if src.version == 4:
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0x4000, 64, proto, 0, src.packed, dst.packed)
        header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, proto, len(body))
        ethertype = ETH_P_IP
    else:
        hop = 255 if probe["proto"] == "ns" else 64
        header = struct.pack("!IHBB", 6 << 28, len(body), proto, hop) + src.packed + dst.packed
        pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(body), proto)
        ethertype = ETH_P_IPV6
    at = 6 if proto == 17 else 2
    body = body[:at] + struct.pack("!H", internet_checksum(pseudo + body) or 0xFFFF) + body[at + 2:]
    return _mac(probe["dst_mac"]) + _mac(probe["src_mac"]) + struct.pack("!H", ethertype) + header + body


def send(probe: dict[str, Any], keep: list[socket.socket]) -> None:
    if probe["how"] == "frame":
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
            raw.bind((probe["iface"], 0))
            raw.send(frame(probe))
        return
    address = ipaddress.ip_address(probe["address"])
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    scope = socket.if_nametoindex(probe["scope"]) if probe.get("scope") else 0
    target: tuple[Any, ...] = (str(address), probe["port"] or 0) if family == socket.AF_INET else (str(address), probe["port"] or 0, 0, scope)
    if probe["proto"] == "tcp":
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        keep.append(sock)  # kept open until exit, so no RST overtakes the SYN
        sock.connect_ex(target)
    elif probe["proto"] == "udp":
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            if scope and family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, scope)
            sock.sendto(b"gfdp", target)
    else:
        icmp = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
        echo = 8 if family == socket.AF_INET else 128
        with socket.socket(family, socket.SOCK_DGRAM, icmp) as sock:
            sock.sendto(struct.pack("!BBHHH", echo, 0, 0, 0, 1) + b"gfdp", target)


def join(iface: str, groups: list[str]) -> None:
    """Hold ``groups`` joined on ``iface`` (a host's mDNS or SSDP listener)
    until killed: the host's kernel receives only groups it has joined."""
    index = socket.if_nametoindex(iface)
    held = []
    for group in map(ipaddress.ip_address, groups):
        if group.version == 4:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group.packed + struct.pack("=4xi", index))
        else:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group.packed + struct.pack("=I", index))
        held.append(sock)
    print("ready", flush=True)
    signal.pause()


def main(probes: list[dict[str, Any]]) -> None:
    keep: list[socket.socket] = []
    for probe in probes:
        with contextlib.suppress(OSError):
            send(probe, keep)
    print("sent", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "join":
        join(sys.argv[2], sys.argv[3:])
    else:
        main(json.loads(sys.argv[1]))
