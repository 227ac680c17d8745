"""Nothing the guest controls runs before the filter, and a root guest cannot take over its supervisor.

The judge is always a denied listener's accept queue: a planted module, a
preloaded library or a stolen listener that connects before (or around)
the filter leaves a connection there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestfence import Policy, Sandbox

GUESTFENCE = str(Path(sys.executable).with_name("guestfence"))
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the guest must start with capabilities")


class DeniedListener:
    """A TCP listener on loopback that the policy denies; counts connections that reached it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def arrivals(self) -> int:
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1


@pytest.fixture
def denied() -> Iterator[DeniedListener]:
    listener = DeniedListener()
    with listener.sock:
        yield listener


def planted_module(port: int, marker: Path) -> str:
    """Python that connects to ``port`` when imported and appends the outcome (0 or errno) to ``marker``."""
    return (
        "import socket\n"
        "s = socket.socket()\n"
        "s.settimeout(10)\n"
        f"r = s.connect_ex(('127.0.0.1', {port}))\n"
        f"open({str(marker)!r}, 'a').write(f'{{r}}\\n')\n"
    )


def outcomes(marker: Path) -> list[int]:
    return [int(line) for line in marker.read_text().split()] if marker.exists() else []


def test_a_module_planted_in_the_working_directory_runs_only_filtered(tmp_path: Path, denied: DeniedListener) -> None:
    marker = tmp_path / "outcomes"
    for name in ("json.py", "seccomp.py"):
        (tmp_path / name).write_text(planted_module(denied.port, marker))
    box = Sandbox(Policy.parse(default="deny"))
    # The command itself imports the planted json from its directory: it may, but only under the filter.
    result = box.run([sys.executable, "-c", "import json"], cwd=tmp_path, capture_output=True)
    assert result.returncode == 0, result.stderr
    assert denied.arrivals() == 0
    assert outcomes(marker) == [111]  # the command's own import ran, refused (ECONNREFUSED)


def test_pythonpath_reaches_only_the_filtered_command(tmp_path: Path, denied: DeniedListener) -> None:
    marker = tmp_path / "outcomes"
    planted = tmp_path / "planted"
    planted.mkdir()
    for name in ("json.py", "seccomp.py"):
        (planted / name).write_text(planted_module(denied.port, marker))
    env = {**os.environ, "PYTHONPATH": str(planted)}
    box = Sandbox(Policy.parse(default="deny"))
    result = box.run([sys.executable, "-c", "import seccomp"], env=env, capture_output=True)
    assert result.returncode == 0, result.stderr
    assert denied.arrivals() == 0
    assert outcomes(marker) == [111]


PRELOAD_C = r"""
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

__attribute__((constructor)) static void planted(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(PORT), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int r = connect(s, (struct sockaddr *)&to, sizeof to) == 0 ? 0 : errno;
    FILE *f = fopen(MARKER, "a");
    if (f) { fprintf(f, "%d\n", r); fclose(f); }
    close(s);
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the preloaded library")
def test_ld_preload_reaches_only_the_filtered_command(tmp_path: Path, denied: DeniedListener) -> None:
    marker = tmp_path / "outcomes"
    source = tmp_path / "planted.c"
    source.write_text(PRELOAD_C)
    library = tmp_path / "planted.so"
    subprocess.run(["gcc", "-shared", "-fPIC", f"-DPORT={denied.port}", f'-DMARKER="{marker}"',
                    "-o", str(library), str(source)], check=True)
    env = {**os.environ, "LD_PRELOAD": str(library), "LD_LIBRARY_PATH": str(tmp_path)}
    box = Sandbox(Policy.parse(default="deny"))
    result = box.run(["true"], env=env, cwd=tmp_path, capture_output=True)
    assert result.returncode == 0, result.stderr
    assert denied.arrivals() == 0
    assert outcomes(marker) == [111]  # preloaded into the command (its environment is its own), filtered


def test_the_command_gets_its_environment_and_directory(tmp_path: Path) -> None:
    box = Sandbox(Policy.parse(default="deny"))
    result = box.run(["sh", "-c", 'printf "%s|%s|%s" "$GF_PROBE" "$PWD" "$(command -v gf-probe-tool)"'],
                     env={"GF_PROBE": "a b=c", "PATH": f"{tmp_path}:/usr/bin:/bin"}, cwd=tmp_path,
                     capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"a b=c|{tmp_path}|"
    (tmp_path / "gf-probe-tool").write_text("#!/bin/sh\necho found-on-the-commands-path\n")
    (tmp_path / "gf-probe-tool").chmod(0o755)
    result = box.run(["gf-probe-tool"], env={"PATH": str(tmp_path)}, capture_output=True, text=True)
    assert result.stdout == "found-on-the-commands-path\n"


STEAL_THE_LISTENER = r"""
import ctypes, json, os, socket, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
PORT = int(sys.argv[1])
supervisor = os.getppid()
out = {}

def errno_of(action):
    try:
        action()
        return 0
    except OSError as e:
        return e.errno

out["readlink_fd"] = errno_of(lambda: os.readlink(f"/proc/{supervisor}/fd/0"))
out["open_mem"] = errno_of(lambda: os.close(os.open(f"/proc/{supervisor}/mem", os.O_RDONLY)))
pidfd = os.pidfd_open(supervisor)
listener, out["getfd"] = None, 0
for fd in range(0, 64):
    new = libc.syscall(438, pidfd, fd, 0)  # pidfd_getfd
    if new < 0:
        out["getfd"] = out["getfd"] or ctypes.get_errno()
        continue
    if os.readlink(f"/proc/self/fd/{new}") == "anon_inode:seccomp notify":
        listener = new
        break
    os.close(new)
out["stolen"] = listener is not None

def answer_own_calls():
    # SECCOMP_IOCTL_NOTIF_RECV, then SEND with SECCOMP_USER_NOTIF_FLAG_CONTINUE: the kernel runs the call.
    notif = ctypes.create_string_buffer(80)
    if libc.ioctl(listener, 0xC0502100, notif) != 0:
        return
    resp = ctypes.create_string_buffer(notif.raw[:8] + bytes(12) + (1).to_bytes(4, sys.byteorder), 24)
    libc.ioctl(listener, 0xC0182101, resp)

if listener is not None:
    os.kill(supervisor, 19)  # SIGSTOP: its handler threads stop taking notifications
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(
        open(f"/proc/{supervisor}/task/{t}/stat").read().rsplit(")", 1)[1].split()[0] == "T"
        for t in os.listdir(f"/proc/{supervisor}/task")
    ):
        time.sleep(0.01)
    threading.Thread(target=answer_own_calls, daemon=True).start()
s = socket.socket()
s.settimeout(20)
out["connect"] = s.connect_ex(("127.0.0.1", PORT))
if listener is not None:
    os.kill(supervisor, 18)  # SIGCONT
print(json.dumps(out))
"""


def run_steal(port: int, *options: str) -> dict:
    result = subprocess.run([GUESTFENCE, "run", *options, "--", sys.executable, "-c", STEAL_THE_LISTENER, str(port)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@ROOT_ONLY
def test_a_root_guest_cannot_take_the_listener_from_its_supervisor(denied: DeniedListener) -> None:
    kept = run_steal(denied.port, "--keep-caps")
    assert kept["stolen"] and kept["connect"] == 0  # --keep-caps: the guest answers its own calls
    assert denied.arrivals() == 1
    got = run_steal(denied.port)
    assert got == {"readlink_fd": 13, "open_mem": 13, "getfd": 1, "stolen": False, "connect": 111}
    assert denied.arrivals() == 0


DROPPED = {
    "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_SETPCAP": 8, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13,
    "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21, "CAP_PERFMON": 38,
    "CAP_BPF": 39, "CAP_CHECKPOINT_RESTORE": 40,
}
KEPT = {"CAP_CHOWN": 0, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_NET_BIND_SERVICE": 10}


def capability_sets(*options: str) -> dict[str, int]:
    result = subprocess.run([GUESTFENCE, "run", *options, "--", "grep", "^Cap", "/proc/self/status"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return {name.strip(): int(value, 16) for name, value in (line.split(":") for line in result.stdout.splitlines())}


@ROOT_ONLY
def test_a_root_guest_runs_without_the_capabilities_that_reach_the_supervisor_or_the_network() -> None:
    sets = capability_sets()
    assert set(sets) == {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}
    for cap, bit in DROPPED.items():
        assert not any(value >> bit & 1 for value in sets.values()), cap
    for cap, bit in KEPT.items():
        assert sets["CapEff"] >> bit & 1 and sets["CapBnd"] >> bit & 1, cap
    kept = capability_sets("--keep-caps")
    assert all(kept["CapEff"] >> bit & 1 for bit in DROPPED.values())


@ROOT_ONLY
def test_a_root_guest_without_capabilities_still_changes_user() -> None:
    result = subprocess.run([GUESTFENCE, "run", "--", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             "id", "-u"], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, "65534\n"), result.stderr


def test_a_missing_launcher_is_a_host_error_not_a_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from guestfence.cli import main
    from guestfence.errors import HostError
    from guestfence.sandbox import spawn

    monkeypatch.setattr(spawn, "LAUNCHER", tmp_path / "guestfence-launch")
    with pytest.raises(HostError, match="make install"):
        Sandbox(Policy.parse(default="deny")).run(["true"])
    assert main(["run", "--", "true"]) == 3
    assert "launcher" in capsys.readouterr().err


def test_a_missing_compiled_supervisor_is_a_host_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from guestfence.cli import main
    from guestfence.errors import HostError
    from guestfence.sandbox import fastpath

    monkeypatch.setattr(fastpath, "LIBRARY", tmp_path / "guestfence-fastpath.so")
    with pytest.raises(HostError, match="make install"):
        Sandbox(Policy.parse(default="deny")).run(["true"])
    assert main(["run", "--", "true"]) == 3
    assert "guestfence-fastpath.so" in capsys.readouterr().err
