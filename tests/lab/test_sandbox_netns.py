"""The sandbox in a network namespace of the test's own: ICMP ping sockets,
and ``@host`` following an address added while the guest runs."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab.netlab import Lab, sh
from tests.sandbox.guest import guest_argv

pytestmark = pytest.mark.lab

CLI = [sys.executable, "-c", "import sys; from guestfence.cli import main; sys.exit(main())"]
# How long a CLI run may take before the test calls it hung.
HANG_BOUND = 180

PING = '''
def ping(host):
    v6 = ":" in host
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM,
                      socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
    s.settimeout(2)
    try:
        s.sendto(bytes([128 if v6 else 8, 0, 0, 0, 0, 0, 0, 1]) + b"guestfence", (host, 0))
        reply = s.recv(100)
        return "reply" if reply[0] in (0, 129) else "other"
    except OSError as e:
        return e.errno
    finally:
        s.close()
out["v4"] = ping("127.0.0.1")
out["v4_denied"] = ping("127.0.0.2")
out["v6"] = ping("::1")
out["udp_same_host"] = sendto("127.0.0.1", 9)
'''


def _run_in(netns: str, code: str, *options: str) -> dict:
    cmd = ["ip", "netns", "exec", netns, *CLI, "run", *options, "--", *guest_argv(code)] if options else \
        ["ip", "netns", "exec", netns, *guest_argv(code)]
    # Bounds a hang, no expectation of speed: under TCG (the 6.1 pass) a CLI
    # start alone takes tens of seconds on a loaded machine.
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_BOUND)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_icmp_rules_govern_only_the_ping_socket(lab: Lab) -> None:
    netns = lab.netns("gfsb")
    sh("sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647", netns=netns)
    assert _run_in(netns, PING) == {"v4": "reply", "v4_denied": "reply", "v6": "reply", "udp_same_host": 1}
    got = _run_in(netns, PING, "--net-allow", "icmp://127.0.0.1", "--net-allow", "icmp://[::1]",
                  "--net-allow", "tcp://127.0.0.1:9")
    assert got == {"v4": "reply", "v4_denied": errno.ECONNREFUSED, "v6": "reply",
                   "udp_same_host": -errno.ECONNREFUSED}


HOST = '''
out["before"] = sendto("198.51.100.7", 9)
out["own_address"] = sendto("198.51.100.1", 9)
out["loopback"] = sendto("127.0.0.1", 9)
out["tcp_not_covered"] = connect("198.51.100.1", 9, blocking=False)
open(READY, "w").write("x")
while not os.path.exists(ADDED):
    time.sleep(0.01)
out["after"] = sendto("198.51.100.7", 9)
'''


def test_host_symbol_covers_an_address_added_while_running(lab: Lab, tmp_path: Path) -> None:
    netns, peer = lab.netns("gfsb"), lab.netns("gfsp")
    lab.veth(netns, "d0", peer, "p0")
    lab.addr(netns, "d0", "198.51.100.1/24")
    ready, added = tmp_path / "ready", tmp_path / "added"
    code = HOST.replace("READY", repr(str(ready))).replace("ADDED", repr(str(added)))
    cmd = ["ip", "netns", "exec", netns, *CLI, "run", "--default", "allow", "--net-deny", "udp://@host:*",
           "--", *guest_argv(code)]
    proc = lab.spawn(cmd)
    deadline = time.monotonic() + HANG_BOUND
    while not ready.exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.01)
    lab.addr(netns, "d0", "198.51.100.7/32")
    added.write_text("x")
    out, err = proc.communicate(timeout=HANG_BOUND)
    assert proc.returncode == 0, err
    got = json.loads(out.decode().strip().splitlines()[-1])
    assert got == {"before": 1, "own_address": -errno.ECONNREFUSED, "loopback": -errno.ECONNREFUSED,
                   "tcp_not_covered": errno.EINPROGRESS, "after": -errno.ECONNREFUSED}
