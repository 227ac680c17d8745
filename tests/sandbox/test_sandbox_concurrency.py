"""Threads, forked children, racing rewrites, a slow peer, a dead supervisor.

Thread tests run twice: with a pidfd per calling thread (PIDFD_THREAD,
Linux >= 6.9) and with the thread-group leader's pidfd, the only one
Linux 6.1 (Debian 12) can open, forced by GUESTFENCE_SANDBOX_LEADER_PIDFDS.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from guestfence.sandbox import kernel, supervisor
from tests.sandbox.conftest import DeniedPorts, Listener, drain_once_marked
from tests.sandbox.guest import guest_argv, run_bare, run_sandboxed


@pytest.fixture(params=["thread", "leader"])
def pidfds(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """name: pidfds; scope: function. Which pidfd the supervisor opens per call (both paths are tested)."""
    if request.param == "thread" and not kernel.has_thread_pidfds():
        pytest.skip("this kernel has no PIDFD_THREAD (Linux < 6.9)")
    monkeypatch.setenv("GUESTFENCE_SANDBOX_LEADER_PIDFDS", "1" if request.param == "leader" else "0")
    return request.param


def test_threads_and_forked_children_are_covered(tcp_server: Listener, pidfds: str) -> None:
    code = f'''
results = {{}}
def worker(i):
    results[i] = (connect("127.0.0.1", {tcp_server.port}), connect("127.0.0.2", {tcp_server.port}))
threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
out["threads"] = sorted(set(results.values()))
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(w, json.dumps([connect("127.0.0.1", {tcp_server.port}), connect("127.0.0.2", {tcp_server.port})]).encode())
    os._exit(0)
os.waitpid(pid, 0)
out["forked"] = json.loads(os.read(r, 100))
'''
    assert run_bare(code) == {"threads": [[0, 0]], "forked": [0, 0]}
    got = run_sandboxed(code, allow=[f"tcp://127.0.0.1:{tcp_server.port}"])
    assert got == {"threads": [[0, errno.ECONNREFUSED]], "forked": [0, errno.ECONNREFUSED]}


def test_rewriting_the_address_mid_call_cannot_reach_the_denied_peer(tcp_server: Listener,
                                                                      denied_ports: DeniedPorts, pidfds: str) -> None:
    """A thread flips the shared sockaddr between an allowed and a denied
    address while another connects with it: the supervisor decides on its
    copy and connects that copy, so no connection ever reaches the denied
    listener. The bare control runs until it has reached the denied
    listener (or a time bound passes: then there is nothing to compare).
    The sandboxed run aims at a denied listener of its own: connections
    the bare control left in the first one's backlog are accepted late
    under TCG and must not be counted against it."""
    def code(denied: int) -> str:
        return f'''
ok, no = sin("127.0.0.1", {tcp_server.port}), sin("127.0.0.1", {denied})
buf = ctypes.create_string_buffer(ok, 16)
stop = False
def flipper():
    while not stop:
        ctypes.memmove(buf, no, 16)
        ctypes.memmove(buf, ok, 16)
t = threading.Thread(target=flipper); t.start()
connected = 0
for i in range(400):
    s = socket.socket()
    connected += libc.connect(s.fileno(), buf, 16) == 0
    s.close()
stop = True; t.join()
out["connected"] = connected
'''
    deadline = time.monotonic() + 30
    while denied_ports.arrivals == 0:
        if time.monotonic() > deadline:
            pytest.skip("the bare control never reached the denied listener in 30 s: nothing to compare")
        run_bare(code(denied_ports.port))
    with contextlib.closing(DeniedPorts()) as denied:
        assert run_sandboxed(code(denied.port), allow=[f"tcp://127.0.0.1:{tcp_server.port}"])["connected"] > 0
        assert denied.settled() == 0


def test_64_threads_by_500_connects_are_all_decided_right(tcp_server: Listener, pidfds: str) -> None:
    code = f'''
wrong = []
def worker(i):
    for j in range(500):
        host = "127.0.0.1" if (i + j) % 2 else "127.0.0.2"
        r = connect(host, {tcp_server.port}, kind=socket.SOCK_DGRAM)
        if r != (0 if host == "127.0.0.1" else errno.ECONNREFUSED):
            wrong.append((host, r))
threads = [threading.Thread(target=worker, args=(i,)) for i in range(64)]
for t in threads: t.start()
for t in threads: t.join()
out["wrong"] = wrong[:5]
'''
    got = run_sandboxed(code, allow=[f"udp://127.0.0.1:{tcp_server.port}"], timeout=240)
    assert got == {"wrong": []}


def test_a_slow_connect_does_not_stall_other_threads(udp_server: Listener, full_listener: socket.socket,
                                                     tmp_path: Path) -> None:
    """The listener's accept queue is full, so the kernel drops the SYN and
    the guest's blocking connect waits for a retransmit; once it is under
    way, another thread sends 200 datagrams, notes the time and says so (a
    file), and only then is the queue drained (or after 60 s, when the
    sends are stalled behind the connect). The sends must come first.
    Waiting for conditions, not for fixed times, keeps the test the same on
    a slow machine (a VM under TCG takes seconds to start the guest)."""
    slow, sent = full_listener, tmp_path / "sent"
    drain = drain_once_marked(slow, sent, accepts=3)
    code = f'''
done = {{}}
s = socket.socket()
def slow():
    s.connect_ex(("127.0.0.1", {slow.getsockname()[1]}))
    done["connect"] = time.monotonic()
t = threading.Thread(target=slow); t.start()
out["connecting"] = connecting([s])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(200):
    sendto("127.0.0.1", {udp_server.port}, sock=u)
done["sends"] = time.monotonic()
open({str(sent)!r}, "w").close()
t.join()
out["sends_first"] = done["sends"] < done["connect"]
'''
    try:
        got = run_sandboxed(code, allow=[f"tcp://127.0.0.1:{slow.getsockname()[1]}",
                                         f"udp://127.0.0.1:{udp_server.port}"], timeout=120)
    finally:
        drain.join()
    assert got == {"connecting": True, "sends_first": True}


def test_the_guest_loses_the_network_when_the_supervisor_dies(tcp_server: Listener, tmp_path: Path) -> None:
    ready, go, result = tmp_path / "ready", tmp_path / "go", tmp_path / "result"
    code = f'''
out["before"] = connect("127.0.0.1", {tcp_server.port})
open({str(ready)!r}, "w").write("x")
while not os.path.exists({str(go)!r}):
    time.sleep(0.01)
out["after"] = connect("127.0.0.1", {tcp_server.port})
out["after_udp"] = sendto("127.0.0.1", {tcp_server.port})
open({str(result)!r} + ".part", "w").write(json.dumps(out))
os.replace({str(result)!r} + ".part", {str(result)!r})  # whole when it appears: the test reads it then
'''
    cli = subprocess.Popen(
        [sys.executable, "-c", "import sys; from guestfence.cli import main; sys.exit(main())", "run", "--net-allow", f"tcp://127.0.0.1:{tcp_server.port}",
         "--net-allow", f"udp://127.0.0.1:{tcp_server.port}", "--", *guest_argv(code)],
        start_new_session=True, stdout=subprocess.DEVNULL,
    )
    try:
        _wait_for(ready)
        cli.kill()  # the supervisor, not the guest
        cli.wait()
        go.write_text("x")
        _wait_for(result)
    finally:
        os.killpg(cli.pid, signal.SIGKILL)
    assert result.read_text() == f'{{"before": 0, "after": {errno.ENOSYS}, "after_udp": {-errno.ENOSYS}}}'


def _wait_for(path: Path, timeout: float = 120) -> None:
    # Generous: under TCG (the 6.1 pass) starting the CLI and the guest takes tens of seconds.
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)


def test_no_call_is_lost_when_no_handler_thread_can_be_started(tcp_server: Listener,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the supervisor's process cannot start threads (RLIMIT_NPROC,
    memory), each call is still answered by the thread that received it."""
    started = []

    class Refusing(threading.Thread):
        def start(self) -> None:
            if len(started) >= 2:  # the two initial handlers, then no more
                raise RuntimeError("can't start new thread")
            started.append(self)
            super().start()

    monkeypatch.setattr(supervisor.threading, "Thread", Refusing)
    code = f'''
results = []
def worker(i):
    results.append(connect("127.0.0.1" if i % 2 else "127.0.0.2", {tcp_server.port}))
threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
for t in threads: t.start()
for t in threads: t.join()
out["results"] = sorted(results)
'''
    got = run_sandboxed(code, allow=[f"tcp://127.0.0.1:{tcp_server.port}"], timeout=60)
    assert got == {"results": [0] * 8 + [errno.ECONNREFUSED] * 8}
    assert len(started) == 2
