"""The fd-swap race on unix and netlink sockets (issue 12), judged by a denied listener.

``race_local.c`` flips one fd number between a unix (or netlink) socket
and an INET one with dup2, and its address buffer between the local
address and 127.0.0.1:PORT, while the main thread connects or sends. A
supervisor that answers unix/netlink calls with "let the kernel run it"
lets the kernel pick up the INET state: arrivals at the denied listener.
Bare, the same program must reach the listener (the control: the attack
and the judge work). Sandboxed under ``--default deny``: 0 arrivals.

Runs ``GUESTFENCE_RACE_SECONDS`` seconds per case (default 1.5, CI);
set it higher for a long run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestfence import Policy, Sandbox
from tests.sandbox.conftest import Listener

SECONDS = float(os.environ.get("GUESTFENCE_RACE_SECONDS", "1.5"))
CALLS = ("connect", "sendto", "sendmsg", "sendmmsg")
LOCALS = ("unix", "netlink")


@pytest.fixture(scope="module")
def race_local(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the race program")
    binary = tmp_path_factory.mktemp("race") / "race_local"
    source = Path(__file__).with_name("race_local.c")
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(binary), str(source)], check=True)
    return binary


@pytest.fixture
def listener(request: pytest.FixtureRequest) -> Iterator[Listener]:
    """The denied listener: TCP for connect, UDP for the sends."""
    counting = Listener(socket.SOCK_STREAM if request.param == "connect" else socket.SOCK_DGRAM)
    yield counting
    counting.close()


def _argv(binary: Path, call: str, local: str, port: int, tmp_path: Path) -> list[str]:
    return [str(binary), call, local, str(port), str(SECONDS), str(tmp_path / "nobody-listens")]


def _attempts(result: subprocess.CompletedProcess[str]) -> int:
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[-1])


@pytest.mark.parametrize("local", LOCALS)
@pytest.mark.parametrize(("call", "listener"), [(c, c) for c in CALLS], indirect=["listener"])
def test_bare_the_race_reaches_the_listener(race_local: Path, call: str, local: str,
                                            listener: Listener, tmp_path: Path) -> None:
    """The control: without the sandbox the program does reach the port it aims at (run
    again until it does, within a time bound: on a starved machine one run may lose the race)."""
    deadline = time.monotonic() + 60
    while True:
        result = subprocess.run(_argv(race_local, call, local, listener.port, tmp_path),
                                capture_output=True, text=True, timeout=60 + SECONDS)
        assert _attempts(result) > 0
        if listener.settled() > 0 or time.monotonic() > deadline:
            break
    assert listener.settled() > 0


@pytest.mark.parametrize("local", LOCALS)
@pytest.mark.parametrize(("call", "listener"), [(c, c) for c in CALLS], indirect=["listener"])
def test_sandboxed_the_race_never_reaches_a_denied_listener(race_local: Path, call: str, local: str,
                                                           listener: Listener, tmp_path: Path) -> None:
    sandbox = Sandbox(Policy.parse(allow=[], default="deny"))
    result = sandbox.run(_argv(race_local, call, local, listener.port, tmp_path),
                         capture_output=True, text=True, timeout=120 + 4 * SECONDS)
    attempts = _attempts(result)
    arrivals = listener.settled()
    print(f"{call}/{local}: {attempts} attempts, {arrivals} arrivals")
    assert attempts > 0
    assert arrivals == 0
