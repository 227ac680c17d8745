"""Unix sockets in the sandbox: decided by unix:// rules, made for the guest, with the guest's identity.

Servers run in the test process (the "host"); guests are sandboxed Python
snippets (``tests.sandbox.guest``). The judge of a leak is the server: a
denied socket counts what it accepted or received. Races are bounded by
time (``GUESTFENCE_RACE_SECONDS``), and each has a bare control that shows
the attack reaching the denied socket without the sandbox.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import struct
import sys
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestfence import Policy, Sandbox
from guestfence.sandbox import Denial
from tests.lab.netlab import GUESTFENCE
from tests.sandbox.guest import _parse, guest_argv, run_bare, run_sandboxed

SECONDS = float(os.environ.get("GUESTFENCE_RACE_SECONDS", "1.5"))
NOBODY = 65534


class UnixServer:
    """A unix socket served on a thread: stream sockets echo and record SO_PEERCRED, datagram ones record."""

    def __init__(self, address: str | bytes, kind: int = socket.SOCK_STREAM, mode: int = 0o777) -> None:
        self.kind = kind
        self.accepted = 0
        self.received: list[bytes] = []
        self.peers: list[tuple[int, int, int]] = []
        self.sock = socket.socket(socket.AF_UNIX, kind)
        self.sock.bind(address)
        if isinstance(address, str):
            os.chmod(address, mode)
        if kind == socket.SOCK_STREAM:
            self.sock.listen(128)
        self.sock.settimeout(0.1)
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                if self.kind != socket.SOCK_STREAM:
                    self.received.append(self.sock.recv(4096))
                    continue
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                self.accepted += 1
                creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                self.peers.append(struct.unpack("3i", creds))
                conn.settimeout(2)
                try:
                    data = conn.recv(4096)
                    if data:
                        conn.sendall(data)
                except OSError:
                    pass

    def close(self) -> None:
        self.stopping = True
        self.thread.join()
        self.sock.close()


@pytest.fixture
def place() -> Iterator[Path]:
    """A fresh directory every user can enter (so a guest running as nobody can reach its sockets)."""
    path = Path(tempfile.mkdtemp(prefix="gf-unix-")).resolve()
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def servers() -> Iterator[list[UnixServer]]:
    started: list[UnixServer] = []
    yield started
    for server in started:
        server.close()


ECHO = '''
def echo(address, data=b"ping"):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    try:
        s.connect(address)
        s.sendall(data)
        return s.recv(100).decode()
    except OSError as e:
        return e.errno
    finally:
        s.close()
'''


def test_echo_allowed_by_path_denied_by_default_and_logged(place: Path, servers: list[UnixServer]) -> None:
    servers.append(UnixServer(str(place / "echo.sock")))
    code = ECHO + f'out["got"] = echo({str(place / "echo.sock")!r})'
    assert run_sandboxed(code, allow=[f"unix://{place}/echo.sock"]) == {"got": "ping"}
    denials: list[Denial] = []
    sandbox = Sandbox(Policy.parse(allow=["tcp://*:*"]), on_denied=denials.append)
    assert _parse(sandbox.run(guest_argv(code), capture_output=True, text=True, timeout=60)) == {
        "got": errno.ECONNREFUSED}
    assert [(d.syscall, d.protocol, d.destination, d.decided_by) for d in denials] == [
        ("connect", "unix", f"unix://{place}/echo.sock", "default deny")]
    assert servers[0].accepted == 1


def test_directory_rule_allows_below_it_and_a_deny_beats_it(place: Path, servers: list[UnixServer]) -> None:
    (place / "run").mkdir(mode=0o755)
    servers += [UnixServer(str(place / "run" / "a.sock")), UnixServer(str(place / "run" / "docker.sock"))]
    code = ECHO + f'out["a"] = echo({str(place / "run/a.sock")!r}); out["docker"] = echo({str(place / "run/docker.sock")!r})'
    got = run_sandboxed(code, allow=[f"unix://{place}/run/*"], deny=[f"unix://{place}/run/docker.sock"])
    assert got == {"a": "ping", "docker": errno.ECONNREFUSED}
    assert servers[1].accepted == 0


def test_net_deny_host_puts_every_unix_socket_out_of_reach(place: Path, servers: list[UnixServer]) -> None:
    servers.append(UnixServer(str(place / "docker.sock")))
    code = ECHO + f'out["got"] = echo({str(place / "docker.sock")!r})'
    assert run_sandboxed(code, default="allow", deny=["@host"]) == {"got": errno.ECONNREFUSED}
    assert run_sandboxed(code, default="allow", deny=["tcp://@host:*"]) == {"got": "ping"}


def test_relative_path_is_resolved_from_the_guests_directory(place: Path, servers: list[UnixServer]) -> None:
    servers.append(UnixServer(str(place / "echo.sock")))
    code = ECHO + 'out["got"] = echo("echo.sock")'
    sandbox = Sandbox(Policy.parse(allow=[f"unix://{place}/echo.sock"]))
    result = sandbox.run(guest_argv(code), capture_output=True, text=True, timeout=60, cwd=place)
    assert _parse(result) == {"got": "ping"}


def test_datagram_log_socket(place: Path, servers: list[UnixServer]) -> None:
    log = UnixServer(str(place / "log"), kind=socket.SOCK_DGRAM)
    servers.append(log)
    code = f'''
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
try:
    out["sent"] = s.sendto(b"<13>hello", {str(place / "log")!r})
except OSError as e:
    out["sent"] = -e.errno
try:
    s.connect({str(place / "log")!r})
    out["connected_send"] = s.send(b"<13>again")
except OSError as e:
    out["connected_send"] = -e.errno
'''
    assert run_sandboxed(code) == {"sent": -errno.ECONNREFUSED, "connected_send": -errno.ECONNREFUSED}
    assert run_sandboxed(code, allow=[f"unix://{place}/log"]) == {"sent": 9, "connected_send": 9}
    deadline = time.monotonic() + 10
    while len(log.received) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert log.received == [b"<13>hello", b"<13>again"]


def test_abstract_socket_by_name(servers: list[UnixServer]) -> None:
    name = f"guestfence-test-{os.getpid()}-{time.monotonic_ns()}"
    servers.append(UnixServer(b"\0" + name.encode()))
    code = ECHO + f'out["got"] = echo(b"\\0" + {name.encode()!r})'
    assert run_sandboxed(code, allow=[f"unix://@{name}"]) == {"got": "ping"}
    assert run_sandboxed(code, allow=["unix://@*"]) == {"got": "ping"}
    assert run_sandboxed(code, allow=[f"unix://@{name}x", "unix:///*"]) == {"got": errno.ECONNREFUSED}
    assert servers[0].accepted == 2


def test_scm_rights_passes_the_guests_descriptor(place: Path) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(place / "fdpass"))
    server.settimeout(30)
    code = f'''
r, w = os.pipe()
os.write(w, b"written by the guest")
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
out["sent"] = s.sendmsg([b"fd"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", r))], 0, {str(place / "fdpass")!r})
try:
    s.sendmsg([b"creds"], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack("3i", os.getpid(), os.getuid(), os.getgid()))], 0, {str(place / "fdpass")!r})
    out["creds"] = 0
except OSError as e:
    out["creds"] = e.errno
'''
    try:
        assert run_sandboxed(code, allow=[f"unix://{place}/fdpass"]) == {"sent": 2, "creds": errno.EPERM}
        data, fds, _, _ = socket.recv_fds(server, 10, 1)
        assert data == b"fd" and len(fds) == 1
        with os.fdopen(fds[0], "rb") as passed:
            assert passed.read(100) == b"written by the guest"
    finally:
        server.close()


def _as_nobody(argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *argv]


@pytest.mark.lab  # a root supervisor with an unprivileged guest: needs root
def test_root_supervisor_unprivileged_guest_the_server_sees_the_guest(place: Path, servers: list[UnixServer]) -> None:
    open_to_all = UnixServer(str(place / "open.sock"), mode=0o777)
    root_only = UnixServer(str(place / "root.sock"), mode=0o700)
    servers += [open_to_all, root_only]
    code = ECHO + f'out["open"] = echo({str(place / "open.sock")!r}); out["root"] = echo({str(place / "root.sock")!r})'
    bare = subprocess.run(_as_nobody(guest_argv(code)), capture_output=True, text=True, timeout=60)
    assert _parse(bare) == {"open": "ping", "root": errno.EACCES}
    sandbox = Sandbox(Policy.parse(allow=[f"unix://{place}/*"]))
    result = sandbox.run(_as_nobody(guest_argv(code)), capture_output=True, text=True, timeout=60)
    assert _parse(result) == {"open": "ping", "root": errno.EACCES}
    assert [peer[1:] for peer in open_to_all.peers] == [(NOBODY, NOBODY), (NOBODY, NOBODY)]
    assert root_only.accepted == 0


def test_server_sees_the_guests_uid(place: Path, servers: list[UnixServer]) -> None:
    server = UnixServer(str(place / "echo.sock"))
    servers.append(server)
    code = ECHO + f'out["got"] = echo({str(place / "echo.sock")!r})'
    assert run_sandboxed(code, allow=[f"unix://{place}/echo.sock"]) == {"got": "ping"}
    assert [peer[1:] for peer in server.peers] == [(os.geteuid(), os.getegid())]


RACE = '''
import ctypes
stop = False
def flip():
    i = 0
    while not stop:
        swap(i)
        i += 1
t = threading.Thread(target=flip)
t.start()
attempts = 0
end = time.monotonic() + SECONDS
while time.monotonic() < end:
    s = socket.socket(socket.AF_UNIX)
    s.connect_ex(TARGET)
    s.close()
    attempts += 1
stop = True
t.join()
out["attempts"] = attempts
'''


def _race(place: Path, swap: str, target: Path) -> str:
    return f"SECONDS = {SECONDS}\nTARGET = {str(target)!r}\n{swap}\n{RACE}"


SYMLINK_SWAP = '''
def swap(i):
    os.symlink(CHOICES[i % 2], LINK + ".new")
    os.replace(LINK + ".new", LINK)
'''

EXCHANGE_SWAP = '''
libc = ctypes.CDLL(None, use_errno=True)
def swap(i):
    libc.renameat2(-100, A.encode(), -100, B.encode(), 2)  # RENAME_EXCHANGE
'''


def _symlink_race(place: Path) -> tuple[str, UnixServer, UnixServer, list[str]]:
    (place / "pub").mkdir(mode=0o755)
    (place / "den").mkdir(mode=0o755)
    (place / "race").mkdir(mode=0o777)
    allowed, denied = UnixServer(str(place / "pub" / "s")), UnixServer(str(place / "den" / "s"))
    link = place / "race" / "link"
    os.symlink(place / "pub" / "s", link)
    swap = f"CHOICES = {[str(place / 'pub' / 's'), str(place / 'den' / 's')]!r}\nLINK = {str(link)!r}\n" + SYMLINK_SWAP
    return _race(place, swap, link), allowed, denied, [f"unix://{place}/pub/*"]


def _rename_race(place: Path) -> tuple[str, UnixServer, UnixServer, list[str]]:
    """race/pub is a directory holding the allowed socket, race/alias a symlink to the denied
    socket's directory; the guest exchanges the two names with renameat2(RENAME_EXCHANGE)."""
    (place / "race").mkdir(mode=0o777)
    (place / "race" / "pub").mkdir(mode=0o755)
    (place / "den").mkdir(mode=0o755)
    allowed, denied = UnixServer(str(place / "race" / "pub" / "s")), UnixServer(str(place / "den" / "s"))
    os.symlink(place / "den", place / "race" / "alias")
    swap = f"A = {str(place / 'race' / 'pub')!r}\nB = {str(place / 'race' / 'alias')!r}\n" + EXCHANGE_SWAP
    return _race(place, swap, place / "race" / "pub" / "s"), allowed, denied, [f"unix://{place}/race/pub/*"]


@pytest.mark.parametrize("setup", [_symlink_race, _rename_race], ids=["symlink", "rename"])
def test_a_swapped_name_never_reaches_the_denied_socket(setup, place: Path, servers: list[UnixServer]) -> None:
    # Each run has sockets of its own: connections the bare run left in a
    # listener's backlog must not be counted against the sandboxed run.
    (place / "bare").mkdir(mode=0o755)
    (place / "sandboxed").mkdir(mode=0o755)
    code, allowed, denied, _ = setup(place / "bare")
    servers += [allowed, denied]
    assert run_bare(code, timeout=60 + SECONDS)["attempts"] > 0
    assert denied.accepted > 0  # the control: bare, the swap does reach the denied socket
    code, allowed, denied, allow = setup(place / "sandboxed")
    servers += [allowed, denied]
    got = run_sandboxed(code, allow=allow, timeout=120 + 4 * SECONDS)
    print(f"{setup.__name__}: {got['attempts']} attempts, {allowed.accepted} allowed, {denied.accepted} denied")
    assert got["attempts"] > 0 and allowed.accepted > 0
    assert denied.accepted == 0


def test_a_hard_link_of_a_denied_socket_is_denied(place: Path, servers: list[UnixServer]) -> None:
    (place / "pub").mkdir(mode=0o755)
    denied = UnixServer(str(place / "docker.sock"))
    servers.append(denied)
    os.link(place / "docker.sock", place / "pub" / "innocent.sock")
    code = ECHO + f'out["got"] = echo({str(place / "pub" / "innocent.sock")!r})'
    assert run_sandboxed(code, allow=[f"unix://{place}/pub/*"], deny=[f"unix://{place}/docker.sock"]) == {
        "got": errno.ECONNREFUSED}
    assert denied.accepted == 0


def test_netlink_to_the_kernel_works() -> None:
    ip = shutil.which("ip")
    if ip is None:
        pytest.skip("iproute2 is needed")
    sandbox = Sandbox(Policy.parse())
    shown = sandbox.run([ip, "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "127.0.0.1" in shown.stdout
    code = 'out["n"] = len(socket.getaddrinfo("localhost", 80, flags=socket.AI_ADDRCONFIG))'
    assert run_sandboxed(code)["n"] > 0


@pytest.mark.lab  # root, in a network namespace of its own
def test_netlink_sends_gain_nothing_of_the_supervisors_privileges() -> None:
    """Root, in a network namespace of its own, adds a link bare; sandboxed it cannot (EPERM)."""
    add = ["ip", "link", "add", "gfv0", "type", "veth", "peer", "name", "gfv1"]
    bare = subprocess.run(["unshare", "-n", *add], capture_output=True, text=True, timeout=60)
    assert bare.returncode == 0, bare.stderr
    run = [GUESTFENCE, "run", "--", *add]
    sandboxed = subprocess.run(["unshare", "-n", *run], capture_output=True, text=True, timeout=60)
    assert sandboxed.returncode != 0 and "Operation not permitted" in sandboxed.stderr


def test_audit_sandbox_lists_host_unix_listeners(place: Path, servers: list[UnixServer]) -> None:
    servers += [UnixServer(str(place / "open.sock")), UnixServer(str(place / "shut.sock"))]
    audit = subprocess.run(
        [GUESTFENCE, "audit", "--sandbox", "--json", "--timeout", "2", "--default", "allow",
         "--net-deny", f"unix://{place}/shut.sock"], capture_output=True, text=True, timeout=300)
    assert audit.returncode == 0, audit.stderr
    found = {f["service"]: (f["verdict"], f["probe"]) for f in json.loads(audit.stdout)["unix_findings"]}
    assert found[f"unix://{place}/open.sock"] == ("allowed", "reachable")
    assert found[f"unix://{place}/shut.sock"] == ("blocked", "refused")


UNPRIVILEGED_SUPERVISOR = '''
import json, os, socket, sys, threading
from guestfence import Policy, Sandbox
place = sys.argv[1]
srv = socket.socket(socket.AF_UNIX)
srv.bind(place + "/echo.sock")
srv.listen()
peers = []
def serve():
    conn, _ = srv.accept()
    peers.append(list(memoryview(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)).cast("i"))[1:])
    conn.sendall(conn.recv(10))
    conn.close()
server = threading.Thread(target=serve)
server.start()
guest = 'import socket; s = socket.socket(socket.AF_UNIX); s.connect("echo.sock"); s.send(b"hi"); print(s.recv(9).decode())'
done = Sandbox(Policy.parse(allow=[f"unix://{place}/echo.sock"])).run(
    [sys.executable, "-c", guest], capture_output=True, text=True, cwd=place, timeout=60)
server.join(30)
print(json.dumps({"uid": os.getuid(), "echo": done.stdout.strip(), "peers": peers, "err": done.stderr}))
'''


@pytest.mark.lab  # runs the supervisor as nobody with setpriv: needs root
def test_an_unprivileged_supervisor_serves_its_own_uid(place: Path) -> None:
    (place / "run").mkdir()
    (place / "run").chmod(0o777)
    argv = _as_nobody([sys.executable, "-c", UNPRIVILEGED_SUPERVISOR, str(place / "run")])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"uid": NOBODY, "echo": "hi", "peers": [[NOBODY, NOBODY]], "err": ""}


def test_magic_links_in_a_guests_path_are_refused(place: Path, servers: list[UnixServer]) -> None:
    """/proc/self/... would be resolved as the supervisor's; the guest gets ELOOP instead."""
    servers.append(UnixServer(str(place / "echo.sock")))
    code = ECHO + f'''
fd = os.open({str(place / "echo.sock")!r}, os.O_PATH)
out["via_fd"] = echo(f"/proc/self/fd/{{fd}}")
out["direct"] = echo({str(place / "echo.sock")!r})
'''
    assert run_bare(code) == {"via_fd": "ping", "direct": "ping"}
    assert run_sandboxed(code, allow=["unix:///*"]) == {"via_fd": errno.ELOOP, "direct": "ping"}


def test_sendmmsg_on_unix_stops_at_the_denied_entry_across_batches(place: Path, servers: list[UnixServer]) -> None:
    """150 allowed entries (more than one batch), then a denied one: 150 sent, as the kernel counts."""
    allowed = UnixServer(str(place / "log"), kind=socket.SOCK_DGRAM)
    denied = UnixServer(str(place / "other"), kind=socket.SOCK_DGRAM)
    servers += [allowed, denied]
    good = b"\x01\x00" + str(place / "log").encode()
    bad = b"\x01\x00" + str(place / "other").encode()
    code = f'''
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
entries = [({good!r}, b"m%d" % i) for i in range(150)] + [({bad!r}, b"x")] + [({good!r}, b"late")] * 10
out["result"], lens = sendmmsg(s.fileno(), entries)
out["lens"] = lens[:151]
'''
    got = run_sandboxed(code, allow=[f"unix://{place}/log"])
    assert got == {"result": 150, "lens": [len(b"m%d" % i) for i in range(150)] + [0]}
    deadline = time.monotonic() + 10
    while len(allowed.received) < 150 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert allowed.received == [b"m%d" % i for i in range(150)]
    assert denied.received == []
