"""Host unix listeners a sandboxed process could reach: list them, probe them from the sandbox, compare.

Only ``audit --sandbox`` looks at unix sockets: a sandboxed process shares
the host's files and network namespace (so its abstract names), while a
guest in a network namespace of its own reaches neither.

    parse_proc_net_unix(text)  -> listeners          pure
    collect_unix_listeners()   -> listeners          /proc/net/unix and /proc/PID/fd
    probe_unix_sandboxed(...)  -> observations       this module run as a sandboxed child
    compare_unix(policy, obs)  -> findings           pure, decide_unix

A listener is a listening stream or seqpacket socket, or a datagram socket
bound to a name and not connected (a receiver such as /dev/log), with an
absolute path or an abstract name (sockets bound to a relative path are
skipped: where they are depends on the binder's directory). The probe is a
connect, which sends nothing (not even for a datagram socket): reachable
when it succeeds. Decisions use the path with symlinks resolved, as the
sandbox does.
"""

from __future__ import annotations

import errno
import json
import math
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import final

from guestfence.audit.collect import collect_socket_owners
from guestfence.audit.model import Process, Status, Verdict
from guestfence.errors import HostError
from guestfence.policy.decide import decide_unix
from guestfence.policy.model import Decision, Policy, UnixFlow

_ACCEPTING = 0x10000  # __SO_ACCEPTCON in /proc/net/unix's Flags
_UNCONNECTED = 1  # SS_UNCONNECTED
TYPES = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "dgram", socket.SOCK_SEQPACKET: "seqpacket"}
START_MARGIN = 30.0


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class UnixListener:
    """``address``: an absolute path, or ``@NAME`` for an abstract socket."""

    address: str
    type: int
    inode: int = 0
    owners: tuple[Process, ...] = ()

    @property
    def flow(self) -> UnixFlow:
        if self.address.startswith("@"):
            return UnixFlow(abstract=self.address[1:])
        return UnixFlow(path=os.path.realpath(self.address))

    @property
    def owned_by(self) -> str:
        return ", ".join(str(p) for p in self.owners) or "?"

    def __str__(self) -> str:
        return f"unix://{self.address} ({TYPES.get(self.type, self.type)})"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class UnixFinding:
    listener: UnixListener
    status: Status
    detail: str
    decision: Decision
    verdict: Verdict


def parse_proc_net_unix(text: str) -> tuple[UnixListener, ...]:
    """The listeners in /proc/net/unix: ``Num RefCount Protocol Flags Type St Inode [Path]``."""
    found: dict[tuple[str, int], UnixListener] = {}
    for line in text.splitlines()[1:]:
        fields = line.split(maxsplit=7)
        if len(fields) < 8:
            continue
        flags, kind, state, inode, path = int(fields[3], 16), int(fields[4], 16), int(fields[5], 16), fields[6], fields[7]
        if kind not in TYPES or not (path.startswith("/") or path.startswith("@")):
            continue
        listening = kind != socket.SOCK_DGRAM and flags & _ACCEPTING
        receiving = kind == socket.SOCK_DGRAM and state == _UNCONNECTED
        if listening or receiving:
            found.setdefault((path, kind), UnixListener(address=path, type=kind, inode=int(inode)))
    return tuple(sorted(found.values(), key=lambda lst: (lst.address, lst.type)))


def collect_unix_listeners() -> tuple[UnixListener, ...]:
    with open("/proc/net/unix", encoding="utf-8", errors="surrogateescape") as table:
        listeners = parse_proc_net_unix(table.read())
    owners = collect_socket_owners({lst.inode for lst in listeners})
    return tuple(UnixListener(address=lst.address, type=lst.type, inode=lst.inode, owners=owners.get(lst.inode, ()))
                 for lst in listeners)


def compare_unix(policy: Policy, observed: Iterable[tuple[UnixListener, Status, str]]) -> tuple[UnixFinding, ...]:
    findings = []
    for listener, status, detail in observed:
        decision = decide_unix(policy, listener.flow)
        if status.reachable:
            verdict = Verdict.ALLOWED if decision.allowed else Verdict.VIOLATION
        else:
            verdict = Verdict.MISSING if decision.allowed else Verdict.BLOCKED
        findings.append(UnixFinding(listener=listener, status=status, detail=detail, decision=decision,
                                    verdict=verdict))
    return tuple(findings)


def probe_unix_sandboxed(listeners: Sequence[UnixListener], policy: Policy, *,
                         timeout: float) -> tuple[tuple[UnixListener, Status, str], ...]:
    """Connect to each listener from a child sandboxed under ``policy``."""
    from guestfence.sandbox import Denial, Sandbox

    if not listeners:
        return ()
    denials: dict[str, str] = {}
    lock = threading.Lock()

    def on_denied(denial: Denial) -> None:
        with lock:
            denials[denial.destination] = denial.decided_by

    request = json.dumps({"timeout": timeout, "targets": [[lst.address, lst.type] for lst in listeners]})
    bound = math.ceil(len(listeners) * timeout) + START_MARGIN
    try:
        done = Sandbox(policy, on_denied=on_denied).run(
            [sys.executable, "-m", "guestfence.audit.unixsock"], input=request, capture_output=True, text=True,
            timeout=bound)
    except subprocess.TimeoutExpired as exc:
        raise HostError(f"the sandboxed unix probe did not finish within {bound:.0f} s") from exc
    if done.returncode != 0:
        raise HostError(f"the sandboxed unix probe failed (exit status {done.returncode}): {done.stderr.strip()}")
    try:
        results = json.loads(done.stdout)
        if len(results) != len(listeners):
            raise ValueError(f"{len(results)} results for {len(listeners)} sockets")
        observed = [(lst, Status[status], str(detail)) for lst, (status, detail) in zip(listeners, results)]
    except (ValueError, KeyError, TypeError) as exc:
        raise HostError(f"the unix probe answered nonsense: {exc}") from exc
    with lock:
        refused = dict(denials)
    marked = []
    for listener, status, detail in observed:
        decided_by = refused.get(str(listener.flow))
        if decided_by is not None and not status.reachable:
            status, detail = Status.REFUSED, f"refused by the sandbox ({decided_by})"
        marked.append((listener, status, detail))
    return tuple(marked)


def _probe(address: str, kind: int, timeout: float) -> tuple[str, str]:
    name: str | bytes = b"\0" + address[1:].encode("utf-8", "surrogateescape") if address.startswith("@") else address
    sock = socket.socket(socket.AF_UNIX, kind)
    sock.settimeout(timeout)
    try:
        sock.connect(name)
    except TimeoutError:
        return Status.FILTERED.name, "no answer (accept queue full?)"
    except OSError as exc:
        status = Status.REFUSED if exc.errno == errno.ECONNREFUSED else Status.UNREACHABLE
        return status.name, os.strerror(exc.errno or 0).lower()
    finally:
        sock.close()
    return Status.REACHABLE.name, "connected"


def main() -> int:
    """The sandboxed side: stdin {"timeout": S, "targets": [[address, type], ...]}, stdout [[status, detail], ...]."""
    request = json.load(sys.stdin)
    timeout = float(request["timeout"])
    json.dump([_probe(str(address), int(kind), timeout) for address, kind in request["targets"]], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
