"""The compiled hot path (fastpath.c) answers exactly what policy.decide decides, and a kept pidfd never reaches another task.

fastpath.c answers a call only from a verdict Python already reached for
the same socket kind and sockaddr bytes; every other call, and every
denial, goes through Python. So each destination below is used three
times: the first answer is Python's, the later ones C's, and all must be
decide()'s -- also when the same destination was decided for another
protocol just before (the verdicts are kept per socket kind) -- for random rule sets over 127.0.0.0/8 (loopback only), with
the deny errno EACCES so that an allowed connect to a closed port
(ECONNREFUSED, from the kernel) is told apart from a denial.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import random
import socket
import subprocess
from pathlib import Path

import pytest

from guestfence import Policy, Sandbox
from guestfence.policy.decide import decide
from guestfence.policy.model import Flow, Proto
from guestfence.sandbox import kernel
from guestfence.sandbox.supervisor import Denial
from tests.sandbox.conftest import Listener, drain_once_marked
from tests.sandbox.guest import guest_argv, run_sandboxed

PORTS = range(61000, 61004)


def _rule(rng: random.Random) -> str:
    proto = rng.choice(["udp", "tcp"])
    a, b, c = (rng.randint(1, 2) for _ in range(3))
    host = rng.choice(["127.0.0.0/8", f"127.{a}.0.0/16", f"127.{a}.{b}.0/24", f"127.{a}.{b}.{c}", "127.0.0.1"])
    first = rng.choice(PORTS)
    port = rng.choice(["*", str(first), f"{first}-{first + rng.randint(0, 2)}", f"{first},{rng.choice(PORTS)}"])
    return f"{proto}://{host}:{port}"


def _destinations(rng: random.Random) -> list[tuple[str, int]]:
    hosts = {f"127.{rng.randint(1, 2)}.{rng.randint(1, 2)}.{rng.randint(1, 2)}" for _ in range(12)}
    return sorted({(host, rng.choice([*PORTS, 61004])) for host in hosts | {"127.0.0.1", "0.0.0.0"}})


DIFFERENTIAL = '''
results = {}
for host, port in DESTINATIONS:
    key = f"{host}:{port}"
    results[key] = {
        "sendto": [sendto(host, port) for _ in range(3)],
        "sendmsg": [sendmsg(host, port) for _ in range(3)],
        "connect": [connect(host, port) for _ in range(3)],
        "udp connect": [connect(host, port, socket.SOCK_DGRAM) for _ in range(3)],
        "connect again": [connect(host, port) for _ in range(3)],
    }
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
results["sendmmsg"] = [sendmmsg(u.fileno(), [(sin(h, p), b"x" * (i + 1)) for i, (h, p) in enumerate(MMSG)])
                       for _ in range(3)]
out["results"] = results
'''


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_answers_are_decides_for_random_rules_and_destinations(seed: int) -> None:
    rng = random.Random(seed)
    allow = [_rule(rng) for _ in range(rng.randint(1, 5))]
    deny = [_rule(rng) for _ in range(rng.randint(0, 3))]
    policy = Policy.parse(allow=allow, deny=deny, default=rng.choice(["allow", "deny"]))
    destinations = _destinations(rng)

    def allowed(proto: Proto, host: str, port: int) -> bool:
        return decide(policy, Flow(proto=proto, address=ipaddress.ip_address(host), port=port)).allowed

    mmsg = [d for d in destinations if allowed(Proto.UDP, *d)][:8] or [("127.0.0.1", 61004)]
    denials: list[Denial] = []
    code = DIFFERENTIAL.replace("DESTINATIONS", repr(destinations)).replace("MMSG", repr(mmsg))
    sandbox = Sandbox(policy, deny_errno="EACCES", on_denied=denials.append)
    result = sandbox.run(guest_argv(code), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])["results"]

    expected_denials = 0
    for host, port in destinations:
        udp, tcp = allowed(Proto.UDP, host, port), allowed(Proto.TCP, host, port)
        calls = got[f"{host}:{port}"]
        context = f"{host}:{port} under allow={allow} deny={deny} default={policy.default}"
        assert calls["sendto"] == [1 if udp else -errno.EACCES] * 3, context
        assert calls["sendmsg"] == [1 if udp else -errno.EACCES] * 3, context
        assert calls["connect"] == [errno.ECONNREFUSED if tcp else errno.EACCES] * 3, context
        assert calls["udp connect"] == [0 if udp else errno.EACCES] * 3, context
        assert calls["connect again"] == calls["connect"], context
        expected_denials += 9 * (not udp) + 6 * (not tcp)
    if all(allowed(Proto.UDP, *d) for d in mmsg):
        assert got["sendmmsg"] == [[len(mmsg), list(range(1, len(mmsg) + 1))]] * 3
    else:  # the placeholder destination, denied: nothing sent, each time, each logged
        assert [r[0] for r in got["sendmmsg"]] == [-errno.EACCES] * 3
        expected_denials += 3
    assert len(denials) == expected_denials  # every denial is logged, not only the first


# A process whose pid is a number an exited task of the same sandbox held:
# its call must be made on its own socket. The guest asks the host (root)
# to set ns_last_pid before each fork, until the child gets the number.
RECYCLED = '''
import select
recv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); recv.bind(("127.0.0.1", 0))
port = recv.getsockname()[1]
def child_sends(fd_number):
    """In a child: a fresh UDP socket at fd_number, bound to a port of its own, sends once."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
    os.dup2(s.fileno(), fd_number)
    r = libc.sendto(fd_number, b"x", 1, 0, sin("127.0.0.1", port), 16)
    os._exit(0 if r == 1 else 1)
def fork(send):
    pid = os.fork()
    if pid == 0:
        send()
    return pid
def source_port():
    assert select.select([recv], [], [], 30)[0], "no datagram arrived"
    return recv.recvfrom(16)[1][1]
# the first task: a process sending on its fd 100 (fastpath.c keeps a pidfd for its number)
first = fork(lambda: child_sends(100))
assert os.waitpid(first, 0)[1] == 0
first_port = source_port()
tries = 0
while True:
    tries += 1
    assert tries < 200, "the pid was never recycled"
    print(f"want {first}", flush=True)
    assert sys.stdin.readline().strip() == "ok"
    again = fork(lambda: child_sends(100) if os.getpid() == first else os._exit(2))
    status = os.waitpid(again, 0)[1]
    if again == first:
        break
out["recycled"] = again == first
out["status"] = status
out["ports differ"] = source_port() != first_port
out["tries"] = tries
'''


@pytest.mark.parametrize("pidfds", ["thread", "leader"])
def test_a_recycled_pid_is_served_with_its_own_socket(pidfds: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """fastpath.c keeps a pidfd per guest task, keyed by its number: when the
    number is reused by a new process, the call is still made on the new
    process's socket (a kept pidfd names the exited task: pidfd_getfd fails,
    and the entry is replaced)."""
    if os.geteuid() != 0:
        pytest.skip("setting ns_last_pid needs root")
    if pidfds == "thread" and not kernel.has_thread_pidfds():
        pytest.skip("no PIDFD_THREAD on this kernel")
    monkeypatch.setenv("GUESTFENCE_SANDBOX_LEADER_PIDFDS", "1" if pidfds == "leader" else "0")
    sandbox = Sandbox(Policy.parse(allow=["udp://127.0.0.1:*"]))
    proc = sandbox.popen(guest_argv(RECYCLED), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        for line in proc.stdout:
            if not line.startswith("want "):
                break
            with open("/proc/sys/kernel/ns_last_pid", "w") as last:
                last.write(str(int(line.split()[1]) - 1))
            proc.stdin.write("ok\n")
            proc.stdin.flush()
        got = json.loads(line)
    finally:
        proc.kill()
        proc.wait()
    assert got["recycled"] and got["status"] == 0 and got["ports differ"], got


# Two live processes whose pids share a slot of fastpath.c's pidfd cache
# (PIDFD_SLOTS = 32), sending in turn on their own fd 100.
SHARED_SLOT = '''
import select
recv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); recv.bind(("127.0.0.1", 0))
port = recv.getsockname()[1]
def worker():
    """A child: a UDP socket of its own at fd 100; sends once per byte read, until EOF."""
    in_r, in_w = os.pipe()  # parent -> child
    out_r, out_w = os.pipe()  # child -> parent
    pid = os.fork()
    if pid:
        os.close(in_r); os.close(out_w)
        return pid, in_w, out_r
    try:  # a child not kept finds its pipes closed: it just exits
        os.close(in_w); os.close(out_r)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
        os.dup2(s.fileno(), 100)
        os.write(out_w, s.getsockname()[1].to_bytes(2, "big"))
        while os.read(in_r, 1):
            os.write(out_w, b"1" if libc.sendto(100, b"x", 1, 0, sin("127.0.0.1", port), 16) == 1 else b"0")
    finally:
        os._exit(0)
first = worker()
for _ in range(2000):
    second = worker()
    if second[0] % 32 == first[0] % 32:
        break
    os.close(second[1]); os.close(second[2]); os.waitpid(second[0], 0)
assert second[0] % 32 == first[0] % 32, "no pid in the same slot"
own = {pid: int.from_bytes(os.read(from_child, 2), "big") for pid, _, from_child in (first, second)}
seen = []
for round in range(6):
    for pid, to_child, from_child in (first, second):
        os.write(to_child, b"s")
        assert os.read(from_child, 1) == b"1"
        assert select.select([recv], [], [], 30)[0], "no datagram arrived"
        seen.append(recv.recvfrom(16)[1][1] == own[pid])
out["own sockets"] = seen
'''


@pytest.mark.parametrize("pidfds", ["thread", "leader"])
def test_processes_sharing_a_pidfd_slot_are_served_with_their_own_sockets(pidfds: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Two live guest processes whose numbers fall in the same slot of the
    pidfd cache, sending in turn: each call is made on the caller's socket."""
    if pidfds == "thread" and not kernel.has_thread_pidfds():
        pytest.skip("no PIDFD_THREAD on this kernel")
    monkeypatch.setenv("GUESTFENCE_SANDBOX_LEADER_PIDFDS", "1" if pidfds == "leader" else "0")
    result = Sandbox(Policy.parse(allow=["udp://127.0.0.1:*"])).run(
        guest_argv(SHARED_SLOT), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"own sockets": [True] * 12}


def test_slow_connects_after_the_pool_grew_do_not_stall_other_threads(
        tcp_server: Listener, udp_server: Listener, full_listener: socket.socket, tmp_path: Path) -> None:  # fmt: skip
    """First 8 threads connect at once, again and again: more blocking calls
    than idle threads, so the pool starts threads and some calls are handled
    by them (gf_handle). Then 6 threads block in connects to a full accept
    queue, more than the threads left idle: the pool must start threads
    again, so 200 sends of another thread, made once the connects are under
    way, end before the connects do (the queue is drained once the sender
    says it is done, or after 60 s). A pool that miscounted the first
    phase's threads as about to come back started none."""
    slow, sent = full_listener, tmp_path / "sent"

    drain = drain_once_marked(slow, sent, accepts=8)
    code = f'''
def burst():
    for _ in range(20):
        assert connect("127.0.0.1", {tcp_server.port}) == 0
threads = [threading.Thread(target=burst) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
done = {{}}
def slow(s):
    s.connect_ex(("127.0.0.1", {slow.getsockname()[1]}))
    done.setdefault("connect", time.monotonic())
socks = [socket.socket() for _ in range(6)]
threads = [threading.Thread(target=slow, args=(s,)) for s in socks]
for t in threads: t.start()
out["connecting"] = connecting(socks)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(200):
    sendto("127.0.0.1", {udp_server.port}, sock=u)
done["sends"] = time.monotonic()
open({str(sent)!r}, "w").close()
for t in threads: t.join()
out["sends_first"] = done["sends"] < done["connect"]
'''
    try:
        got = run_sandboxed(code, allow=[f"tcp://127.0.0.1:{tcp_server.port}", f"tcp://127.0.0.1:{slow.getsockname()[1]}",
                                         f"udp://127.0.0.1:{udp_server.port}"], timeout=150)
    finally:
        drain.join()
    assert got == {"connecting": True, "sends_first": True}
