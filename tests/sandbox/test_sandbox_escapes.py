"""Ways around the supervisor are closed: each works bare (we run as root
here, so raw sockets and friends are available) and is refused sandboxed."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from guestfence import Policy, Sandbox
from tests.sandbox.conftest import Listener
from tests.sandbox.guest import run_bare, run_sandboxed

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="the bare run needs root to show the leak")

SOCKETS = '''
def try_socket(*args):
    try:
        socket.socket(*args).close()
        return 0
    except OSError as e:
        return e.errno
out["raw_icmp"] = try_socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
out["raw_v6"] = try_socket(socket.AF_INET6, socket.SOCK_RAW | socket.SOCK_NONBLOCK, 58)
out["packet"] = try_socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
out["packet_high_bits"] = libc.syscall({"x86_64": 41, "aarch64": 198}[os.uname().machine], (1 << 32) | socket.AF_PACKET, 3, 0) < 0 and ctypes.get_errno()
out["inet_sock_packet"] = try_socket(socket.AF_INET, 10, 0)
out["vsock"] = try_socket(40, socket.SOCK_STREAM, 0)
out["mptcp"] = try_socket(socket.AF_INET, socket.SOCK_STREAM, 262)
out["netlink_raw"] = try_socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
'''


@ROOT_ONLY
def test_raw_packet_and_foreign_sockets_are_refused() -> None:
    bare = run_bare(SOCKETS)
    assert bare["raw_icmp"] == bare["raw_v6"] == bare["packet"] == bare["mptcp"] == 0
    assert bare["packet_high_bits"] is False  # the kernel reads the low 32 bits: AF_PACKET
    got = run_sandboxed(SOCKETS, default="allow")
    assert got == {
        "raw_icmp": errno.EPERM, "raw_v6": errno.EPERM, "packet": errno.EAFNOSUPPORT,
        "packet_high_bits": errno.EAFNOSUPPORT, "inet_sock_packet": errno.EPERM, "vsock": errno.EAFNOSUPPORT,
        "mptcp": errno.EPROTONOSUPPORT, "netlink_raw": 0,
    }


IO_URING = '''
params = ctypes.create_string_buffer(120)
fd = libc.syscall(425, 4, params)
out["io_uring_setup"] = 0 if fd >= 0 else ctypes.get_errno()
'''


def test_io_uring_is_refused() -> None:
    # kernel.io_uring_disabled exists from Linux 6.6 only; before, io_uring
    # is available whenever the kernel has it (the bare run shows which).
    disabled = Path("/proc/sys/kernel/io_uring_disabled")
    if disabled.exists() and disabled.read_text().strip() != "0":
        pytest.skip("io_uring is disabled on this host (kernel.io_uring_disabled)")
    bare = run_bare(IO_URING)
    if bare == {"io_uring_setup": errno.ENOSYS}:
        pytest.skip("kernel capability: this kernel is built without io_uring")
    assert bare == {"io_uring_setup": 0}
    assert run_sandboxed(IO_URING, default="allow") == {"io_uring_setup": errno.EPERM}


SOURCE_ROUTE = '''
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes([1, 131, 7, 4, 127, 0, 0, 1]))
    out["ip_options"] = 0
except OSError as e:
    out["ip_options"] = e.errno
try:
    u.sendmsg([b"x"], [(socket.IPPROTO_IP, 7, bytes([131, 7, 4, 127, 0, 0, 1, 1]))], 0, ("127.0.0.1", PORT))
    out["retopts_cmsg"] = 0
except OSError as e:
    out["retopts_cmsg"] = e.errno
'''


def test_source_routing_options_are_refused(udp_server: Listener) -> None:
    code = SOURCE_ROUTE.replace("PORT", str(udp_server.port))
    assert run_bare(code) == {"ip_options": 0, "retopts_cmsg": 0}
    assert run_sandboxed(code, default="allow") == {"ip_options": errno.EPERM, "retopts_cmsg": errno.EPERM}


@pytest.fixture(scope="module")
def escape_abi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the ABI escape program")
    binary = tmp_path_factory.mktemp("abi") / "escape_abi"
    source = Path(__file__).with_name("escape_abi.c")
    subprocess.run(["gcc", "-O1", "-no-pie", "-o", str(binary), str(source)], check=True)
    return binary


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="i386 and x32 ABIs exist on x86-64 only")
@pytest.mark.parametrize("abi", ["int80", "x32"])
def test_foreign_syscall_abis_kill_the_process(abi: str, escape_abi: Path, tcp_server: Listener) -> None:
    bare = subprocess.run([str(escape_abi), abi, str(tcp_server.port)], capture_output=True, text=True, timeout=30)
    if abi == "int80":
        assert bare.stdout.strip() == "0", "the i386 socketcall connects bare (IA32 emulation on)"
    sandbox = Sandbox(Policy.parse(default="deny"))
    got = sandbox.run([str(escape_abi), abi, str(tcp_server.port)], capture_output=True, timeout=30)
    assert got.returncode == -signal.SIGSYS


NEW_LISTENER = '''
libc.prctl(38, 1, 0, 0, 0)  # no_new_privs, as an unprivileged filter needs
allow_all = struct.pack("=HBBI", 0x06, 0, 0, 0x7FFF0000)  # BPF_RET|BPF_K SECCOMP_RET_ALLOW
insns = ctypes.create_string_buffer(allow_all, 8)
prog = ctypes.create_string_buffer(struct.pack("=H6xQ", 1, ctypes.addressof(insns)), 16)
fd = libc.syscall({"x86_64": 317, "aarch64": 277}[os.uname().machine], 1, 8, prog)  # seccomp(SET_MODE_FILTER, FLAG_NEW_LISTENER, &prog)
out["second_listener"] = 0 if fd >= 0 else ctypes.get_errno()
'''


def test_a_second_listener_cannot_be_installed() -> None:
    assert run_sandboxed(NEW_LISTENER, default="allow") == {"second_listener": errno.EBUSY}
    assert run_bare(NEW_LISTENER) == {"second_listener": 0}


def test_filter_survives_exec_and_reaches_grandchildren(tcp_server: Listener) -> None:
    code = f'''
import subprocess
child = "import socket; s = socket.socket(); print(s.connect_ex(('127.0.0.2', {tcp_server.port})))"
out["grandchild"] = int(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True).stdout)
'''
    assert run_bare(code) == {"grandchild": 0}
    assert run_sandboxed(code, allow=[f"tcp://127.0.0.1:{tcp_server.port}"]) == {"grandchild": errno.ECONNREFUSED}
