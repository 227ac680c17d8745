"""A hostile, multithreaded guest: races on socket state, the supervisor's
memory, its resources. The judge of a leak is a denied listener.

The C guest (``hostile.c``) races each trapped call from other threads;
each test runs it bare first (the control: the race reaches the denied
port, or the test says loudly that this host did not show it) and then
sandboxed, where nothing may arrive. ``GUESTFENCE_STRESS_SECONDS`` makes
the races run longer (default: a few seconds, for CI).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from guestfence import Policy, Sandbox
from tests.sandbox.conftest import DeniedPorts, Listener

SECONDS = float(os.environ.get("GUESTFENCE_STRESS_SECONDS", "2"))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the hostile guest")
    binary = tmp_path_factory.mktemp("hostile") / "hostile"
    source = Path(__file__).with_name("hostile.c")
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(binary), str(source)], check=True)
    return binary


def allow(port: int) -> Sandbox:
    return Sandbox(Policy.parse(allow=[f"tcp://127.0.0.1:{port}", f"udp://127.0.0.1:{port}"]))


def attempts(output: str) -> int:
    return int(output.split()[1])


def run_race(hostile: Path, mode: str, allowed: int, denied: DeniedPorts, *, sandbox: Sandbox | None,
             seconds: float = SECONDS) -> tuple[int, int]:
    """(attempts, arrivals at the denied ports) of one timed run."""
    argv = [str(hostile), mode, str(allowed), str(denied.port), str(seconds)]
    before = denied.arrivals
    if sandbox is None:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    else:
        result = sandbox.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    assert result.returncode == 0, result.stderr
    return attempts(result.stdout), _settled(denied) - before


def _settled(denied: DeniedPorts) -> int:
    """The arrival count once the listeners have taken what is queued."""
    count, deadline = -1, time.monotonic() + 5
    while count != denied.arrivals and time.monotonic() < deadline:
        count = denied.arrivals
        time.sleep(0.3)
    return denied.arrivals


def bare_leaks(hostile: Path, mode: str, allowed: int, denied: DeniedPorts) -> None:
    """The control: bare, the race reaches the denied port (retried up to a time bound)."""
    deadline = time.monotonic() + max(20.0, 4 * SECONDS)
    while time.monotonic() < deadline:
        if run_race(hostile, mode, allowed, denied, sandbox=None, seconds=1)[1]:
            return
    pytest.skip(f"the bare control never reached the denied port with {mode!r} on this host: nothing to compare")


@pytest.mark.parametrize("mode", ["addrform", "fastopen", "stress"])
def test_racing_socket_state_reaches_no_denied_port(mode: str, hostile: Path, tcp_server: Listener,
                                                    denied_ports: DeniedPorts) -> None:
    """addrform: IPV6_ADDRFORM turns an INET6 socket's "connected peer"
    (AF_UNSPEC) into an IPv4 address mid-call; fastopen: connect(AF_UNSPEC)
    disconnects a TCP socket mid-call so a MSG_FASTOPEN name is used;
    stress: those and rewritten addresses, families, dup2'd fds and flags."""
    bare_leaks(hostile, mode, tcp_server.port, denied_ports)
    tried, arrived = run_race(hostile, mode, tcp_server.port, denied_ports, sandbox=allow(tcp_server.port))
    print(f"{mode}: {tried} attempts, {arrived} arrivals at the denied ports")
    assert tried > 0
    assert arrived == 0
