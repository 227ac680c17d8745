"""The sandbox decides every destination of a real child process, per protocol.

Real seccomp, real sockets on loopback, no root needed. Each test also
shows the leak: the same guest code run bare reaches what the sandbox
refuses.
"""

from __future__ import annotations

import errno

from tests.sandbox.conftest import Listener
from tests.sandbox.guest import run_bare, run_sandboxed


def test_tcp_connect_allowed_by_rule_and_denied_by_default(tcp_server: Listener) -> None:
    code = f'out["allowed"] = connect("127.0.0.1", {tcp_server.port}); out["other"] = connect("127.0.0.2", {tcp_server.port})'
    assert run_bare(code) == {"allowed": 0, "other": 0}
    assert run_sandboxed(code, allow=[f"tcp://127.0.0.1:{tcp_server.port}"]) == {
        "allowed": 0, "other": errno.ECONNREFUSED}


def test_deny_errno_is_configurable(tcp_server: Listener) -> None:
    code = f'out["r"] = connect("127.0.0.1", {tcp_server.port})'
    assert run_sandboxed(code, deny_errno="EACCES") == {"r": errno.EACCES}
    assert run_sandboxed(code, deny_errno="EPERM") == {"r": errno.EPERM}


def test_deny_beats_allow_and_allow_default(tcp_server: Listener) -> None:
    code = f'out["v4"] = connect("127.0.0.1", {tcp_server.port}); out["v6"] = connect("::1", {tcp_server.port})'
    got = run_sandboxed(code, default="allow", deny=["tcp://127.0.0.1:*"], allow=["tcp://127.0.0.1:*"])
    assert got == {"v4": errno.ECONNREFUSED, "v6": 0}


def test_udp_rule_does_not_authorise_tcp(tcp_server: Listener, udp_server: Listener) -> None:
    port = tcp_server.port
    code = f'out["tcp"] = connect("127.0.0.1", {port}); out["udp"] = sendto("127.0.0.1", {udp_server.port})'
    got = run_sandboxed(code, allow=[f"udp://127.0.0.1:{port}", f"udp://127.0.0.1:{udp_server.port}"])
    assert got == {"tcp": errno.ECONNREFUSED, "udp": 1}


def test_udp_sendto_and_sendmsg_decided_per_destination(udp_server: Listener) -> None:
    port = udp_server.port
    code = (f'out["to_ok"] = sendto("127.0.0.1", {port}, b"one"); out["to_no"] = sendto("127.0.0.2", {port});'
            f'out["msg_ok"] = sendmsg("127.0.0.1", {port}, b"two"); out["msg_no"] = sendmsg("127.0.0.3", {port})')
    got = run_sandboxed(code, allow=[f"udp://127.0.0.1:{port}"])
    assert got == {"to_ok": 3, "to_no": -errno.ECONNREFUSED, "msg_ok": 3, "msg_no": -errno.ECONNREFUSED}
    assert sorted(udp_server.received_at_least(2)) == [b"one", b"two"]


def test_sendmmsg_stops_at_the_denied_entry_like_the_kernel(udp_server: Listener) -> None:
    port = udp_server.port
    code = f'''
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
ok, no = sin("127.0.0.1", {port}), sin("127.0.0.9", {port})
out["middle"] = sendmmsg(u.fileno(), [(ok, b"a"), (ok, b"bb"), (no, b"ccc"), (ok, b"dddd")])
out["first"] = sendmmsg(u.fileno(), [(no, b"e"), (ok, b"f")])
out["all"] = sendmmsg(u.fileno(), [(ok, b"g"), (ok, b"hh")])
'''
    got = run_sandboxed(code, allow=[f"udp://127.0.0.1:{port}"])
    assert got == {"middle": [2, [1, 2, 0, 0]], "first": [-errno.ECONNREFUSED, [0, 0]], "all": [2, [1, 2]]}
    assert sorted(udp_server.received_at_least(4)) == [b"a", b"bb", b"g", b"hh"]


def test_connected_udp_send_without_destination_passes_and_with_one_is_decided(udp_server: Listener) -> None:
    port = udp_server.port
    code = f'''
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
out["connect"] = u.connect_ex(("127.0.0.1", {port}))
out["send"] = u.send(b"peer")
out["elsewhere"] = sendto("127.0.0.5", {port}, sock=u)
'''
    got = run_sandboxed(code, allow=[f"udp://127.0.0.1:{port}"])
    assert got == {"connect": 0, "send": 4, "elsewhere": -errno.ECONNREFUSED}


def test_ipv6_and_ipv4_mapped_destinations_are_decided_as_ipv4(tcp_server: Listener, udp_server: Listener) -> None:
    tport, uport = tcp_server.port, udp_server.port
    code = f'''
out["v6"] = connect("::1", {tport})
out["mapped_tcp"] = connect("::ffff:127.0.0.1", {tport})
out["mapped_tcp_denied"] = connect("::ffff:127.0.0.2", {tport})
d6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
out["mapped_udp"] = sendto("::ffff:127.0.0.1", {uport}, sock=d6)
r = libc.sendto(d6.fileno(), b"q", 1, 0, sin("127.0.0.4", {uport}), 16)
out["v4_on_v6_socket"] = r if r >= 0 else -ctypes.get_errno()
'''
    assert run_bare(code) == {"v6": 0, "mapped_tcp": 0, "mapped_tcp_denied": 0, "mapped_udp": 1, "v4_on_v6_socket": 1}
    got = run_sandboxed(code, allow=[f"tcp://[::1]:{tport}", f"tcp://127.0.0.1:{tport}", f"udp://127.0.0.1:{uport}"])
    assert got == {"v6": 0, "mapped_tcp": 0, "mapped_tcp_denied": errno.ECONNREFUSED, "mapped_udp": 1,
                   "v4_on_v6_socket": -errno.ECONNREFUSED}


def test_unix_and_netlink_sockets_pass_untouched(tmp_path) -> None:
    path = tmp_path / "sock"
    code = f'''
srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); srv.bind({str(path)!r})
c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
out["unix_sendto"] = c.sendto(b"hi", {str(path)!r})
out["unix_got"] = srv.recv(10).decode()
nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
out["netlink_sendto"] = nl.sendto(b"\\0" * 16, (0, 0)) if False else nl.sendto(struct.pack("=IHHII", 16, 18, 0x301, 1, 0), (0, 0))
'''
    assert run_sandboxed(code) == {"unix_sendto": 2, "unix_got": "hi", "netlink_sendto": 16}
