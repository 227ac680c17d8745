"""Try each target from the guest's side and record what answered.

Contract:
- Probes go only to the targets given (host addresses, from
  ``plan_targets``); nothing else is sent. TCP probes connect and reset
  (SO_LINGER 0, no payload); UDP probes send one empty datagram.
- All probes of a batch run in parallel, non-blocking, under one deadline
  (``timeout``); batches hold at most ``parallel`` sockets, so the whole
  run takes at most ceil(targets / parallel) * timeout, plus, for UDP
  silences with table ``inet guestfence`` present, one short
  counter-checked resend each (``SETTLE`` seconds).
- With ``netns``, every probe socket is created by a short-lived thread
  that entered the guest's network namespace (setns affects that thread
  only, and it ends after), so the sockets live in the guest's namespace
  and the rest of the audit never leaves the host's.

Outcomes, as the guest sees them (see ``Status``):

    TCP connected / UDP reply          reachable
    TCP reset / ICMP port unreachable  refused
    ICMP host/net unreachable, no route unreachable
    TCP silence                        filtered
    UDP silence, drop counter rose     dropped
    UDP silence otherwise              no answer (open|filtered)
    the guest owns the address too     guest's own address (never left it)
"""

from __future__ import annotations

import errno
import ipaddress
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar, final

from pyroute2 import IPRoute, netns as pyroute2_netns

from guestfence.audit.counters import collect_drop_count
from guestfence.audit.model import Observation, Status, Target
from guestfence.errors import HostError
from guestfence.nftables.apply import NftHandle
from guestfence.policy.model import Address, AddressType, Proto
from guestfence.sandbox.route import address_type

DEFAULT_TIMEOUT = 1.5
DEFAULT_PARALLEL = 256
SETTLE = 0.05
"""Seconds between resending a silent UDP probe and reading the counters."""

_ERRNO_STATUS = {
    errno.ECONNREFUSED: Status.REFUSED,
    errno.ECONNRESET: Status.REFUSED,
    errno.ETIMEDOUT: Status.FILTERED,
}
_ERRNO_DETAIL = {
    errno.EACCES: "prohibited (ICMP administratively prohibited, or a rule in the guest)",
    errno.EHOSTUNREACH: "host unreachable (ICMP)",
    errno.ENETUNREACH: "network unreachable (no route in the guest)",
}
_LINGER_RESET = struct.pack("ii", 1, 0)
_SOCK_TYPES = {Proto.TCP: socket.SOCK_STREAM, Proto.UDP: socket.SOCK_DGRAM}
_MERGE_ORDER = (
    Status.REACHABLE,
    Status.NO_ANSWER,
    Status.REFUSED,
    Status.FILTERED,
    Status.DROPPED,
    Status.UNREACHABLE,
)
"""For a link-local target tried through several guest interfaces, the first
status in this order wins: any way in is a way in."""

SocketSpec = tuple[int, int]
SocketFactory = Callable[[Sequence[SocketSpec]], list[socket.socket]]
T = TypeVar("T")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class GuestView:
    """What the guest's own namespace says: its default gateways, which target
    addresses are its own too, and the interfaces a link-local target is
    tried through (name by index)."""

    gateways: frozenset[Address] = frozenset()
    own_addresses: frozenset[Address] = frozenset()
    interfaces: tuple[tuple[int, str], ...] = ()


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Probed:
    view: GuestView
    observations: tuple[Observation, ...]


def probe_netns(
    targets: Sequence[Target],
    netns: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    parallel: int = DEFAULT_PARALLEL,
    nft: NftHandle | None = None,
) -> Probed:
    """Probe ``targets`` from inside network namespace ``netns`` (a name under
    /run/netns or a path such as /proc/PID/ns/net). ``nft`` reads the drop
    counters of this (the host's) namespace for UDP silences."""
    fd = _open_netns(netns)
    try:
        view = _in_netns(fd, collect_guest_view, {t.address for t in targets})
        if _same_file(fd, "/proc/self/ns/net"):
            view = replace(view, own_addresses=frozenset())  # the guest's addresses are the host's

        def open_sockets(specs: Sequence[SocketSpec]) -> list[socket.socket]:
            return _in_netns(fd, _open_sockets, specs)

        observations = probe_targets(
            targets, open_sockets=open_sockets, interfaces=view.interfaces, timeout=timeout, parallel=parallel
        )
        if nft is not None:
            observations = _attribute_udp_drops(observations, open_sockets, nft)
    finally:
        os.close(fd)
    return Probed(view=view, observations=tuple(_mark_guest_local(o, view) for o in observations))


def collect_guest_view(addresses: Iterable[Address]) -> GuestView:
    """The current namespace's gateways, own addresses among ``addresses``, and interfaces."""
    try:
        with IPRoute() as ipr:
            gateways = {
                ipaddress.ip_address(route.get_attr("RTA_GATEWAY"))
                for family in (socket.AF_INET, socket.AF_INET6)
                for route in ipr.get_default_routes(family=family)
                if route.get_attr("RTA_GATEWAY")
            }
            interfaces = tuple(
                (link["index"], link.get_attr("IFLA_IFNAME"))
                for link in ipr.get_links()
                if link.get_attr("IFLA_IFNAME") != "lo"
            )
    except OSError as exc:
        raise HostError(f"cannot read the guest's routes: {exc}") from exc
    own = {a for a in addresses if not a.is_link_local and address_type(a) is AddressType.LOCAL}
    return GuestView(gateways=frozenset(gateways), own_addresses=frozenset(own), interfaces=interfaces)


def probe_targets(
    targets: Sequence[Target],
    *,
    open_sockets: SocketFactory,
    interfaces: Sequence[tuple[int, str]] = (),
    timeout: float = DEFAULT_TIMEOUT,
    parallel: int = DEFAULT_PARALLEL,
) -> list[Observation]:
    """Every target probed, in batches of ``parallel`` sockets made by ``open_sockets``."""
    attempts = [(t, scope) for t in targets for scope in _scopes(t, interfaces)]
    outcomes: dict[Target, list[tuple[Status, str]]] = {t: [] for t in targets}
    for start in range(0, len(attempts), parallel):
        batch = attempts[start : start + parallel]
        sockets = open_sockets([_spec(t) for t, _ in batch])
        for (target, scope), outcome in zip(batch, _run_batch(batch, sockets, timeout)):
            outcomes[target].append((outcome[0], _via(outcome[1], scope)))
    return [_merge(t, outcomes[t]) for t in targets]


def _run_batch(
    batch: Sequence[tuple[Target, tuple[int, str] | None]], sockets: list[socket.socket], timeout: float
) -> list[tuple[Status, str]]:
    results: list[tuple[Status, str] | None] = [None] * len(batch)
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        try:
            for i, ((target, scope), sock) in enumerate(zip(batch, sockets)):
                results[i] = _start(target, sock, _sockaddr(target, scope))
                if results[i] is None:
                    events = selectors.EVENT_WRITE if target.proto is Proto.TCP else selectors.EVENT_READ
                    selector.register(sock, events, i)
            while selector.get_map() and (left := deadline - time.monotonic()) > 0:
                for key, _ in selector.select(left):
                    i = key.data
                    results[i] = _finish(batch[i][0], sockets[i])
                    if results[i] is not None:
                        selector.unregister(sockets[i])
        finally:
            for sock in sockets:
                sock.close()
    return [r if r is not None else _silence(target) for r, (target, _) in zip(results, batch)]


def _start(target: Target, sock: socket.socket, sockaddr: tuple) -> tuple[Status, str] | None:
    """Begin one probe; an outcome now, or None to wait for the kernel."""
    sock.setblocking(False)
    if target.proto is Proto.TCP:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        code = sock.connect_ex(sockaddr)
        return None if code in (0, errno.EINPROGRESS) else _from_errno(code, target)
    try:
        sock.connect(sockaddr)
        sock.send(b"")
    except OSError as exc:
        return _from_errno(exc.errno, target)
    return None


def _finish(target: Target, sock: socket.socket) -> tuple[Status, str] | None:
    if target.proto is Proto.TCP:
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return (Status.REACHABLE, "connected") if code == 0 else _from_errno(code, target)
    try:
        data = sock.recv(65535)
    except BlockingIOError:
        return None
    except OSError as exc:
        return _from_errno(exc.errno, target)
    return Status.REACHABLE, f"answered with {len(data)} bytes"


def _from_errno(code: int, target: Target) -> tuple[Status, str]:
    status = _ERRNO_STATUS.get(code, Status.UNREACHABLE)
    if status is Status.REFUSED and target.proto is Proto.UDP:
        return status, "ICMP port unreachable"
    return status, _ERRNO_DETAIL.get(code) or os.strerror(code).lower()


def _silence(target: Target) -> tuple[Status, str]:
    if target.proto is Proto.TCP:
        return Status.FILTERED, "no answer within the time bound"
    return Status.NO_ANSWER, "no reply and no ICMP error"


def _attribute_udp_drops(
    observations: list[Observation], open_sockets: SocketFactory, nft: NftHandle
) -> list[Observation]:
    """Resend each silent UDP probe alone and call it dropped if the drop
    counters of ``inet guestfence`` rose meanwhile. Link-local targets are
    left as they are: which interface's silence would the counter explain?"""
    silent = [o.target for o in observations if o.status is Status.NO_ANSWER and not o.target.address.is_link_local]
    if not silent or collect_drop_count(nft) is None:
        return observations
    sockets = open_sockets([_spec(t) for t in silent])
    dropped: dict[Target, int] = {}
    try:
        for target, sock in zip(silent, sockets):
            before = collect_drop_count(nft) or 0
            try:
                sock.sendto(b"", _sockaddr(target, None))
            except OSError:
                continue
            time.sleep(SETTLE)
            rise = (collect_drop_count(nft) or 0) - before
            if rise > 0:
                dropped[target] = rise
    finally:
        for sock in sockets:
            sock.close()
    return [
        Observation(
            target=o.target,
            status=Status.DROPPED,
            detail=f"no reply; a drop rule of inet guestfence counted {dropped[o.target]} packet(s)",
        )
        if o.target in dropped
        else o
        for o in observations
    ]


def _mark_guest_local(observation: Observation, view: GuestView) -> Observation:
    if observation.target.address not in view.own_addresses:
        return observation
    return Observation(
        target=observation.target,
        status=Status.GUEST_LOCAL,
        detail=f"the guest owns {observation.target.address} too; the probe ({observation.status.value}) "
        "never left its namespace",
    )


def _merge(target: Target, outcomes: list[tuple[Status, str]]) -> Observation:
    if not outcomes:
        return Observation(target=target, status=Status.UNREACHABLE, detail="link-local, and the guest has no link")
    status, detail = min(outcomes, key=lambda o: _MERGE_ORDER.index(o[0]))
    return Observation(target=target, status=status, detail=detail)


def _scopes(target: Target, interfaces: Sequence[tuple[int, str]]) -> list[tuple[int, str] | None]:
    """A link-local address means nothing without an interface: try each of the guest's."""
    return list(interfaces) if target.address.is_link_local else [None]


def _via(detail: str, scope: tuple[int, str] | None) -> str:
    return detail if scope is None else f"{detail} (via {scope[1]})"


def _spec(target: Target) -> SocketSpec:
    family = socket.AF_INET if target.address.version == 4 else socket.AF_INET6
    return family, _SOCK_TYPES[target.proto]


def _sockaddr(target: Target, scope: tuple[int, str] | None) -> tuple:
    if target.address.version == 4:
        return str(target.address), target.port
    return str(target.address), target.port, 0, scope[0] if scope else 0


def _open_sockets(specs: Sequence[SocketSpec]) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    try:
        for family, kind in specs:
            sockets.append(socket.socket(family, kind))
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise HostError(f"cannot open probe sockets: {exc}") from exc
    return sockets


def _open_netns(netns: str) -> int:
    path = netns if "/" in netns else f"/run/netns/{netns}"
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise HostError(f"network namespace {netns!r} not found ({path}: {exc.strerror})") from exc


def _in_netns(fd: int, work: Callable[..., T], *args: object) -> T:
    """``work(*args)`` in a new thread that entered the namespace ``fd``; the
    thread ends with the call, so no other code ever runs in that namespace."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            pyroute2_netns.setns(fd)
            box["value"] = work(*args)
        except Exception as exc:  # carried to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="guestfence-probe-netns")
    thread.start()
    thread.join()
    if "error" in box:
        error = box["error"]
        if isinstance(error, HostError):
            raise error
        raise HostError(f"cannot work inside the guest's namespace: {error}") from error  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def _same_file(fd: int, path: str) -> bool:
    mine, theirs = os.fstat(fd), os.stat(path)
    return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)
