"""What listens on the host, and which targets a guest could aim at.

``collect_listeners`` asks the kernel through sock_diag (pyroute2's
DiagSocket; never by parsing ``ss``) for listening TCP sockets and bound,
unconnected UDP sockets, IPv4 and IPv6, in the calling thread's network
namespace, and finds each socket's owners by its inode in /proc/PID/fd.

``plan_targets`` is pure: each listener times each host address it accepts
packets on. A wildcard listener expands to every host address of its family
(a ``::`` socket without IPV6_V6ONLY to the IPv4 ones too); a listener bound
to one address gives that address only, loopback included, so the report
can show it is out of a separate namespace's reach. Only host addresses
become targets: the audit sends nothing anywhere else.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterable

from pyroute2 import DiagSocket, IPRoute
from pyroute2.netlink.diag import SS_ALL, SS_LISTEN

from guestfence.audit.model import Listener, Process, Target
from guestfence.errors import HostError
from guestfence.policy.model import Address, Proto, unmap

_SOCK_DIAG_QUERIES = (
    (Proto.TCP, socket.IPPROTO_TCP, 1 << SS_LISTEN),
    (Proto.UDP, socket.IPPROTO_UDP, SS_ALL),
)


def collect_listeners(*, udp: bool = True) -> tuple[Listener, ...]:
    """Every TCP listener (and bound UDP socket with ``udp``) of this namespace."""
    found: list[tuple[Proto, Address, int, bool, int, int]] = []
    try:
        with DiagSocket() as diag:
            diag.bind()
            for proto, ipproto, states in _SOCK_DIAG_QUERIES:
                if proto is Proto.UDP and not udp:
                    continue
                for family in (socket.AF_INET, socket.AF_INET6):
                    for msg in diag.get_sock_stats(family=family, states=states, protocol=ipproto):
                        if msg["idiag_dport"] != 0 or msg["idiag_sport"] == 0:
                            continue  # a connected UDP socket takes nothing from strangers
                        found.append((
                            proto,
                            unmap(ipaddress.ip_address(msg["idiag_src"])),
                            msg["idiag_sport"],
                            bool(msg.get_attr("INET_DIAG_SKV6ONLY")),
                            msg["idiag_if"],
                            msg["idiag_inode"],
                        ))  # fmt: skip
        devices = _device_names({ifindex for *_, ifindex, _ in found if ifindex})
    except OSError as exc:
        raise HostError(f"cannot list sockets through sock_diag: {exc}") from exc
    owners = collect_socket_owners({inode for *_, inode in found})
    listeners = {
        Listener(
            proto=proto,
            address=address,
            port=port,
            v6only=v6only,
            device=devices.get(ifindex),
            inode=inode,
            owners=owners.get(inode, ()),
        )
        for proto, address, port, v6only, ifindex, inode in found
    }
    return tuple(sorted(listeners, key=_listener_key))


def collect_socket_owners(inodes: Iterable[int]) -> dict[int, tuple[Process, ...]]:
    """The processes holding each socket inode, from /proc/PID/fd; a socket
    whose owner cannot be seen (another PID namespace, a kernel socket)
    is simply absent."""
    wanted = {f"socket:[{inode}]": inode for inode in inodes if inode}
    owners: dict[int, set[Process]] = {}
    for pid_text in os.listdir("/proc"):
        if not pid_text.isdigit():
            continue
        fd_dir = f"/proc/{pid_text}/fd"
        try:
            links = [os.readlink(f"{fd_dir}/{fd}") for fd in os.listdir(fd_dir)]
            held = {wanted[link] for link in links if link in wanted}
            if held:
                with open(f"/proc/{pid_text}/comm", encoding="utf-8", errors="replace") as comm:
                    process = Process(pid=int(pid_text), name=comm.read().strip())
        except OSError:
            continue  # the process ended while we looked
        for inode in held:
            owners.setdefault(inode, set()).add(process)
    return {inode: tuple(sorted(procs, key=lambda p: p.pid)) for inode, procs in owners.items()}


def _device_names(indexes: set[int]) -> dict[int, str]:
    if not indexes:
        return {}
    with IPRoute() as ipr:
        return {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links() if link["index"] in indexes}


def plan_targets(listeners: Iterable[Listener], host_addresses: Iterable[Address]) -> tuple[Target, ...]:
    """Each listener on each host address it accepts packets on. Pure."""
    hosts = {unmap(a) for a in host_addresses}
    served: dict[tuple[Proto, Address, int], list[Listener]] = {}
    for listener in listeners:
        for address in _addresses_of(listener, hosts):
            served.setdefault((listener.proto, address, listener.port), []).append(listener)
    targets = (
        Target(proto=proto, address=address, port=port, listeners=tuple(sorted(found, key=_listener_key)))
        for (proto, address, port), found in served.items()
    )
    return tuple(sorted(targets, key=lambda t: (t.proto.value, t.address.version, t.address, t.port)))


def _addresses_of(listener: Listener, hosts: set[Address]) -> set[Address]:
    if not listener.wildcard:
        return {listener.address} & hosts
    versions = {listener.address.version}
    if listener.address.version == 6 and not listener.v6only:
        versions.add(4)
    return {a for a in hosts if a.version in versions}


def _listener_key(listener: Listener) -> tuple[str, int, Address, int, int]:
    return (listener.proto.value, listener.address.version, listener.address, listener.port, listener.inode)
