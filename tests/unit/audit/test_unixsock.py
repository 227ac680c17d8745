"""audit --sandbox's unix listeners: which lines of /proc/net/unix are services, and the verdicts."""

from __future__ import annotations

import socket

from guestfence.audit.model import Status, Verdict
from guestfence.audit.unixsock import UnixListener, compare_unix, parse_proc_net_unix
from guestfence.policy.model import Policy

PROC_NET_UNIX = """\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 1001 /run/docker.sock
0000000000000000: 00000002 00000000 00000000 0001 02     0 /run/docker.sock
0000000000000000: 00000002 00000000 00000000 0002 01 1002 /dev/log
0000000000000000: 00000002 00000000 00000000 0002 03 1003 /tmp/connected-dgram
0000000000000000: 00000002 00000000 00010000 0001 01 1004 @/tmp/.X11-unix/X0
0000000000000000: 00000002 00000000 00010000 0005 01 1005 /run/seq.sock
0000000000000000: 00000002 00000000 00010000 0001 01 1006 relative.sock
0000000000000000: 00000003 00000000 00000000 0001 03 1007
0000000000000000: 00000002 00000000 00000000 0001 01 1008 /tmp/bound-not-listening
"""


def test_listeners_are_listening_sockets_and_unconnected_named_datagram_sockets() -> None:
    found = {(lst.address, lst.type) for lst in parse_proc_net_unix(PROC_NET_UNIX)}
    assert found == {
        ("/run/docker.sock", socket.SOCK_STREAM),
        ("/dev/log", socket.SOCK_DGRAM),
        ("@/tmp/.X11-unix/X0", socket.SOCK_STREAM),
        ("/run/seq.sock", socket.SOCK_SEQPACKET),
    }


def test_a_reachable_socket_the_policy_denies_is_a_violation() -> None:
    policy = Policy.parse(allow=["unix://@*"], deny=[])
    docker = UnixListener(address="/nonexistent-dir/docker.sock", type=socket.SOCK_STREAM)
    x11 = UnixListener(address="@/tmp/.X11-unix/X0", type=socket.SOCK_STREAM)
    findings = compare_unix(policy, [(docker, Status.REACHABLE, "connected"), (x11, Status.REACHABLE, "connected"),
                                     (docker, Status.REFUSED, "refused")])
    assert [(f.verdict, f.decision.decided_by) for f in findings] == [
        (Verdict.VIOLATION, "default deny"), (Verdict.ALLOWED, "allow unix://@*"), (Verdict.BLOCKED, "default deny")]
