"""Building blocks for lab tests: network namespaces and links that are
always removed, and commands run inside a namespace.

Every name carries a per-run prefix, so a crashed run never collides with
the next, and ``Lab.close()`` deletes everything it made even when a test
fails half-way. Addresses come from the documentation ranges only.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

_counter = itertools.count()

GUESTFENCE = str(Path(sys.executable).with_name("guestfence"))
"""The console script of the guestfence the tests run under."""


def unique(prefix: str) -> str:
    """A short name unique to this process (interface names max 15 chars)."""
    return f"{prefix}{os.getpid() % 10000}{next(_counter)}"[:15]


def sh(*argv: str, netns: str | None = None, check: bool = True, input: str | None = None,
       timeout: float = 180) -> subprocess.CompletedProcess[str]:
    # The timeout bounds a hang; it is no expectation of speed: in the 6.1
    # pass (TCG on a loaded machine) one CLI run can take over 30 s.
    cmd: list[str] = list(argv)
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.run(cmd, check=check, capture_output=True, text=True, input=input, timeout=timeout)


class Lab:
    """Namespaces and host-side links made for one test; ``close()`` removes them."""

    def __init__(self) -> None:
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    def netns(self, prefix: str = "gf") -> str:
        name = unique(prefix)
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "link", "set", "lo", "up", netns=name)
        return name

    def veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        """A veth pair with one end in each namespace, both up."""
        sh("ip", "link", "add", name_a, "netns", ns_a, "type", "veth", "peer", "name", name_b, "netns", ns_b)
        sh("ip", "link", "set", name_a, "up", netns=ns_a)
        sh("ip", "link", "set", name_b, "up", netns=ns_b)

    def addr(self, netns: str, dev: str, cidr: str) -> None:
        extra = ["nodad"] if ":" in cidr else []
        sh("ip", "addr", "add", cidr, "dev", dev, *extra, netns=netns)

    def spawn(self, argv: Sequence[str], netns: str | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a session of its own, so that ``close`` also ends
        what it starts (a supervisor's stack, a shell's children)."""
        cmd = list(argv) if netns is None else ["ip", "netns", "exec", netns, *argv]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self.processes.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.namespaces.clear()
        self.processes.clear()
