"""What the supervisor does to a caller after a call that may wait -- its writes, its signal -- reaches the caller only.

sendmmsg is the one trapped call whose results the supervisor writes back
(each entry's msg_len), after a send that may wait for minutes. If the
caller dies meanwhile and its number goes to another process, outside the
sandbox, a write addressed by number lands in that process's memory.
``late_lengths.c`` sets it up: a guest whose 128 KiB sendmmsg waits on a
reader that does not read, a caller (a child process, or a thread) ended
while the supervisor's send waits, a victim started by the test on the
caller's number with the same two pages at the same address; then the
reader reads, the send completes, and the victim says whether its pages
changed. Two entries are sent by fastpath.c, 65 by supervisor.py (C hands
more than 64 to Python).

The other thing done to a caller after its call is the SIGPIPE of a send
that failed with EPIPE, which the supervisor raises itself (its own sends
use MSG_NOSIGNAL). A send that waits on a full buffer fails so when the
guest shuts its socket down meanwhile; the same victim, started on the
number of a caller killed before that, must not get the signal.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestfence import Policy, Sandbox
from guestfence.sandbox import kernel
from tests.sandbox.conftest import Listener
from tests.sandbox.guest import guest_argv

_NR = {"x86_64": {"sendmmsg": 307, "sendmsg": 46, "futex": 202, "ioctl": 16},
       "aarch64": {"sendmmsg": 269, "sendmsg": 211, "futex": 98, "ioctl": 29}}[os.uname().machine]
UNTOUCHED = 0xA5A5A5A5
TOTAL = 128 * 1024


@pytest.fixture(scope="module")
def late_lengths(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build late_lengths")
    binary = tmp_path_factory.mktemp("late") / "late_lengths"
    source = Path(__file__).with_name("late_lengths.c")
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(binary), str(source)], check=True)
    return binary


@pytest.fixture
def slow_reader() -> Iterator[socket.socket]:
    """A TCP listener on 127.0.0.1 whose connections have a small receive buffer."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(30)
    yield listener
    listener.close()


def _syscall_of(tid: int) -> str | None:
    """The number of the system call thread ``tid`` of this process waits in
    ("running" if it runs; None once it is gone)."""
    try:
        with open(f"/proc/self/task/{tid}/syscall") as state:
            return state.read().split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _wait_for(condition, what: str, timeout: float = 30):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _sending_thread(call: str = "sendmmsg") -> int | None:
    """A thread of ours (a supervisor's) waiting in ``call``."""
    for name in os.listdir("/proc/self/task"):
        if _syscall_of(int(name)) == str(_NR[call]):
            return int(name)
    return None


def _back_in_the_pool(tid: int) -> bool:
    """Thread ``tid`` is done with its call: waiting for the next one, or gone."""
    return _syscall_of(tid) in (None, str(_NR["futex"]), str(_NR["ioctl"]))


def _victim_with_pid(binary: Path, pid: int) -> subprocess.Popen[str] | None:
    """``late_lengths victim`` numbered ``pid``, started here (outside the sandbox), or None."""
    with open("/proc/sys/kernel/ns_last_pid", "w") as last:
        last.write(str(pid - 1))
    victim = subprocess.Popen([str(binary), "victim"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert victim.stdout is not None
    if victim.pid == pid and victim.stdout.readline() == f"ready {pid}\n":
        return victim
    victim.kill()
    victim.wait()
    return None


def _say(proc: subprocess.Popen[str], line: str) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


@pytest.mark.parametrize(("path", "entries"), [("fastpath.c", 2), ("supervisor.py", 65)])
@pytest.mark.parametrize("caller", ["process", "thread"])
def test_the_lengths_of_a_send_that_outlived_its_caller_reach_no_other_process(
        caller: str, path: str, entries: int, late_lengths: Path, slow_reader: socket.socket) -> None:  # fmt: skip
    """The victim's pages stay as they were. A thread caller's process lives
    on: the lengths are then written into its memory, which the caller had."""
    if os.geteuid() != 0:
        pytest.skip("setting ns_last_pid needs root")
    port = slow_reader.getsockname()[1]
    sandbox = Sandbox(Policy.parse(allow=[f"tcp://127.0.0.1:{port}"]))
    guest = sandbox.popen([str(late_lengths), "guest", str(port), str(entries), caller],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    victim = None
    try:
        assert guest.stdout is not None
        connection, _ = slow_reader.accept()
        line = guest.stdout.readline()
        assert line.startswith("caller "), line
        tid = int(line.split()[1])
        sender = _wait_for(_sending_thread, "the supervisor's send to wait")
        assert _say(guest, "kill") == "dead"
        for _ in range(200):
            victim = _victim_with_pid(late_lengths, tid)
            if victim:
                break
        assert victim, f"no process got the number {tid}"
        connection.settimeout(0.05)
        received = 0

        def sent() -> bool:  # read, until the sending thread is back waiting for calls (or gone)
            nonlocal received
            try:
                received += len(connection.recv(1 << 20))
            except TimeoutError:
                pass
            return _back_in_the_pool(sender)

        _wait_for(sent, "the send to complete")
        connection.close()
        checked = _say(victim, "check")
        lengths = [int(n) for n in _say(guest, "report").split()[1:]]
        assert guest.wait(timeout=30) == 0
    finally:
        for proc in (guest, victim):
            if proc:
                proc.kill()
                proc.wait()
    assert checked == "intact", f"the supervisor wrote into process {tid}, not the caller"
    sent_entries = min(entries, 64)  # supervisor.py sends in batches of 64; the next one finds the caller gone
    if caller == "thread":
        assert lengths == [TOTAL // entries] * sent_entries + [UNTOUCHED] * (entries - sent_entries)
    else:  # the caller's memory is gone with it; the guest's own copy of the pages was never written
        assert lengths == [UNTOUCHED] * entries


NOBODY = 65534
SENDS = '''
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
out["uid, dumpable"] = [os.geteuid(), libc.prctl(3, 0, 0, 0, 0)]  # PR_GET_DUMPABLE
# twice 2 entries (the first decided by Python, then fastpath.c knows the destination), then 65 (Python's)
out["sent"] = [sendmmsg(u.fileno(), [(sin("127.0.0.1", PORT), b"x" * n) for n in range(1, count + 1)])
               for count in (2, 2, 2, 65)]
'''


def test_the_lengths_reach_a_guest_of_another_uid(udp_server: Listener) -> None:
    """/proc/TID/mem of a dumpable guest is its uid's, mode 0600: a root
    supervisor's handler thread, which keeps no DAC override, takes it for
    the open. The guest gets what it gets bare."""
    if os.geteuid() != 0:
        pytest.skip("running the guest as nobody needs root")
    code = SENDS.replace("PORT", str(udp_server.port))
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *guest_argv(code)]
    bare = subprocess.run(as_nobody, capture_output=True, text=True, timeout=60)
    assert bare.returncode == 0, bare.stderr
    expected = json.loads(bare.stdout)
    assert expected["uid, dumpable"] == [NOBODY, 1]
    assert expected["sent"] == [[count, list(range(1, count + 1))] for count in (2, 2, 2, 65)]
    sandbox = Sandbox(Policy.parse(allow=[f"udp://127.0.0.1:{udp_server.port}"]))
    got = sandbox.run(as_nobody, capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == expected


# A send that waits on a full buffer, in a child; the child is killed; the
# guest shuts the socket down, so the supervisor's send fails with EPIPE.
EPIPE_LATE = '''
if KIND == "tcp":  # fastpath.c's
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    s.connect(("127.0.0.1", PORT))
else:  # local.py's
    s, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
s.setblocking(False)
while True:  # fill the buffer: nobody reads the other end (a send without a name is not trapped)
    try:
        s.send(b"f" * 4096)
    except BlockingIOError:
        break
s.setblocking(True)
child = os.fork()
if child == 0:
    s.sendmsg([b"w" * 4096])  # trapped; waits in the supervisor; no MSG_NOSIGNAL
    os._exit(0)
print(f"caller {child}", flush=True)
assert sys.stdin.readline() == "kill\\n"
os.kill(child, 9)
os.waitpid(child, 0)
print("dead", flush=True)
assert sys.stdin.readline() == "shut\\n"
s.shutdown(socket.SHUT_WR)  # the supervisor's send wakes up to EPIPE
print("shut", flush=True)
assert sys.stdin.readline() == "report\\n"
'''


@pytest.mark.parametrize("pidfds", ["thread", "leader"])
@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_the_sigpipe_of_a_send_that_outlived_its_caller_reaches_no_other_process(
        kind: str, pidfds: str, late_lengths: Path, slow_reader: socket.socket,
        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """With PIDFD_THREAD (Linux 6.9) the signal goes by a pidfd opened before
    the answer; without it (the leader path), by number, only to a caller
    that got the answer."""
    if os.geteuid() != 0:
        pytest.skip("setting ns_last_pid needs root")
    if pidfds == "thread" and not kernel.has_thread_pidfds():
        pytest.skip("no PIDFD_THREAD on this kernel")
    monkeypatch.setenv("GUESTFENCE_SANDBOX_LEADER_PIDFDS", "1" if pidfds == "leader" else "0")
    port = slow_reader.getsockname()[1]
    code = EPIPE_LATE.replace("KIND", repr(kind)).replace("PORT", str(port))
    sandbox = Sandbox(Policy.parse(allow=[f"tcp://127.0.0.1:{port}"]))
    guest = sandbox.popen(guest_argv(code), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    victim = connection = None
    try:
        assert guest.stdout is not None
        if kind == "tcp":
            connection, _ = slow_reader.accept()
        line = guest.stdout.readline()
        assert line.startswith("caller "), line
        tid = int(line.split()[1])
        sender = _wait_for(lambda: _sending_thread("sendmsg"), "the supervisor's send to wait")
        assert _say(guest, "kill") == "dead"
        for _ in range(200):
            victim = _victim_with_pid(late_lengths, tid)
            if victim:
                break
        assert victim, f"no process got the number {tid}"
        assert _say(guest, "shut") == "shut"
        _wait_for(lambda: _back_in_the_pool(sender), "the send to fail")
        checked = _say(victim, "check")  # "" if it is dead
        victim.wait(timeout=30)
        guest.stdin.write("report\n")  # type: ignore[union-attr]
        guest.stdin.flush()  # type: ignore[union-attr]
        assert guest.wait(timeout=30) == 0
    finally:
        for proc in (guest, victim):
            if proc:
                proc.kill()
                proc.wait()
        if connection:
            connection.close()
    assert (checked, victim.returncode) == ("intact", 0), f"process {tid} got the caller's SIGPIPE"
