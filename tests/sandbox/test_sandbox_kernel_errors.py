"""Errors are the kernel's: the same calls run bare and sandboxed give the same results.

Each snippet is run twice, bare and under a policy that allows its
destinations; every call that the kernel would fail must fail the same
way in the sandbox (EFAULT, EINPROGRESS, EBADF, ENOTSOCK, EINVAL...).
"""

from __future__ import annotations

import pytest

from tests.sandbox.conftest import Listener
from tests.sandbox.guest import run_bare, run_sandboxed

CASES = {
    "nonblocking_connect": 'out["r"] = connect("127.0.0.1", PORT, blocking=False)',
    "connect_refused_port": 'out["r"] = connect("127.0.0.1", 1)',
    "connect_bad_pointer": '''
s = socket.socket()
out["r"] = libc.connect(s.fileno(), ctypes.c_void_p(8), 16) == -1 and ctypes.get_errno()''',
    "connect_bad_fd": 'out["r"] = libc.connect(999, sin("127.0.0.1", PORT), 16) == -1 and ctypes.get_errno()',
    "connect_not_a_socket": '''
fd = os.open("/dev/null", os.O_RDONLY)
out["r"] = libc.connect(fd, sin("127.0.0.1", PORT), 16) == -1 and ctypes.get_errno()''',
    "connect_short_address": '''
s = socket.socket()
out["r"] = libc.connect(s.fileno(), sin("127.0.0.1", PORT), 8) == -1 and ctypes.get_errno()''',
    "connect_negative_length": '''
s = socket.socket()
out["r"] = libc.connect(s.fileno(), sin("127.0.0.1", PORT), -1) == -1 and ctypes.get_errno()''',
    "connect_twice": '''
s = socket.socket()
out["first"] = s.connect_ex(("127.0.0.1", PORT))
out["again"] = s.connect_ex(("127.0.0.1", PORT))''',
    "connect_unspec_disconnects_udp": '''
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect(("127.0.0.1", PORT))
out["r"] = libc.connect(u.fileno(), struct.pack("=H", 0) + b"\\0" * 14, 16)
out["peer"] = u.connect_ex(("127.0.0.1", PORT))''',
    "sendto_bad_buffer": '''
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
out["r"] = libc.sendto(u.fileno(), ctypes.c_void_p(8), 4, 0, sin("127.0.0.1", PORT), 16) == -1 and ctypes.get_errno()''',
    "sendto_bad_address": '''
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
out["r"] = libc.sendto(u.fileno(), b"x", 1, 0, ctypes.c_void_p(8), 16) == -1 and ctypes.get_errno()''',
    "sendto_oversized_datagram": '''
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
out["r"] = sendto("127.0.0.1", PORT, b"x" * 70000, sock=u)''',
    "sendto_nonblocking_tcp_unconnected_with_name": '''
s = socket.socket(); s.setblocking(False)
out["r"] = libc.sendto(s.fileno(), b"x", 1, 0, sin("127.0.0.1", PORT), 16) == -1 and ctypes.get_errno()''',
    "tcp_fast_open_send": '''
s = socket.socket()
r = libc.sendto(s.fileno(), b"hello", 5, 0x20000000, sin("127.0.0.1", PORT), 16)
out["r"] = r if r >= 0 else -ctypes.get_errno()''',
    "sendmmsg_bad_vector": '''
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
libc.sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
out["r"] = libc.sendmmsg(u.fileno(), ctypes.c_void_p(8), 2, 0) == -1 and ctypes.get_errno()''',
    "sendmmsg_zero": '''
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
out["r"] = sendmmsg(u.fileno(), [])''',
    "sendmsg_bad_iovec": '''
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
name = sin("127.0.0.1", PORT)
hdr = struct.pack("=QI4xQQQQi4x", ctypes.cast(ctypes.c_char_p(name), ctypes.c_void_p).value, 16, 8, 1, 0, 0, 0)
out["r"] = libc.sendmsg(u.fileno(), hdr, 0) == -1 and ctypes.get_errno()''',
    "sendmsg_overlong_namelen_is_clamped": '''
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
name = ctypes.create_string_buffer(sin("127.0.0.1", PORT) + bytes(184), 200)
data = ctypes.create_string_buffer(b"x", 1)
iov = ctypes.create_string_buffer(struct.pack("=QQ", ctypes.addressof(data), 1), 16)
hdr = struct.pack("=QI4xQQQQi4x", ctypes.addressof(name), 200, ctypes.addressof(iov), 1, 0, 0, 0)
r = libc.sendmsg(u.fileno(), hdr, 0)
out["r"] = r if r >= 0 else -ctypes.get_errno()''',
    "sendmsg_negative_namelen": '''
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
name = ctypes.create_string_buffer(sin("127.0.0.1", PORT), 16)
hdr = struct.pack("=QI4xQQQQi4x", ctypes.addressof(name), 0xFFFFFFFF, 0, 0, 0, 0, 0)
r = libc.sendmsg(u.fileno(), hdr, 0)
out["r"] = r if r >= 0 else -ctypes.get_errno()''',
    "sendmsg_long_controllen": '''
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
name = ctypes.create_string_buffer(sin("127.0.0.1", PORT), 16)
out["r"] = {}
for size in (100000, 140000, 1 << 40):
    control = ctypes.create_string_buffer(min(size, 200000))
    hdr = struct.pack("=QI4xQQQQi4x", ctypes.addressof(name), 16, 0, 0, ctypes.addressof(control), size, 0)
    r = libc.sendmsg(u.fileno(), hdr, 0)
    out["r"][size] = r if r >= 0 else -ctypes.get_errno()''',
    "sendmmsg_vector_into_an_unmapped_page": '''
import mmap
m = mmap.mmap(-1, 8192)
base = ctypes.addressof(ctypes.c_char.from_buffer(m))
name = ctypes.create_string_buffer(sin("127.0.0.1", PORT), 16)
data = ctypes.create_string_buffer(b"x", 1)
iov = ctypes.create_string_buffer(struct.pack("=QQ", ctypes.addressof(data), 1), 16)
start = 4096 - 2 * 64
for i in range(2):
    struct.pack_into("=QI4xQQQQi4x", m, start + 64 * i, ctypes.addressof(name), 16, ctypes.addressof(iov), 1, 0, 0, 0)
libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
libc.mprotect(base + 4096, 4096, 0)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
libc.sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
r = libc.sendmmsg(u.fileno(), base + start, 4, 0)
out["r"] = r if r >= 0 else -ctypes.get_errno()
out["lens"] = [struct.unpack_from("=I", m, start + 64 * i + 56)[0] for i in range(2)]''',
    "sendmmsg_read_only_vector": '''
import mmap
m = mmap.mmap(-1, 4096)
base = ctypes.addressof(ctypes.c_char.from_buffer(m))
name = ctypes.create_string_buffer(sin("127.0.0.1", PORT), 16)
data = ctypes.create_string_buffer(b"x", 1)
iov = ctypes.create_string_buffer(struct.pack("=QQ", ctypes.addressof(data), 1), 16)
for i in range(3):
    struct.pack_into("=QI4xQQQQi4x", m, 64 * i, ctypes.addressof(name), 16, ctypes.addressof(iov), 1, 0, 0, 0)
libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
libc.mprotect(base, 4096, 1)  # PROT_READ
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
libc.sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
r = libc.sendmmsg(u.fileno(), base, 3, 0)
out["r"] = r if r >= 0 else -ctypes.get_errno()''',
    **{f"sendmmsg_read_only_from_entry_{first}_of_{count}_known_destination": f'''
import mmap
m = mmap.mmap(-1, 8192, flags=mmap.MAP_PRIVATE)  # private: a debugger's write (FOLL_FORCE) would succeed
base = ctypes.addressof(ctypes.c_char.from_buffer(m))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3):  # decided by Python: fastpath.c knows the destination
    sendmmsg(u.fileno(), [(sin("127.0.0.1", PORT), b"w")])
name = ctypes.create_string_buffer(sin("127.0.0.1", PORT), 16)
data = ctypes.create_string_buffer(b"x", 1)
iov = ctypes.create_string_buffer(struct.pack("=QQ", ctypes.addressof(data), 1), 16)
start = 4096 - 64 * {first}
for i in range({count}):
    struct.pack_into("=QI4xQQQQi4x", m, start + 64 * i, ctypes.addressof(name), 16, ctypes.addressof(iov), 1, 0, 0, 0)
libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
libc.mprotect(base + 4096, 4096, 1)  # PROT_READ: entries {first} and on
libc.sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
r = libc.sendmmsg(u.fileno(), base + start, {count}, 0)
out["r"] = r if r >= 0 else -ctypes.get_errno()
out["lens"] = [struct.unpack_from("=I", m, start + 64 * i + 56)[0] for i in range({count})]'''
       for first, count in ((0, 4), (2, 4), (60, 65))},  # 65: more than fastpath.c takes
    "sendmmsg_of_more_than_one_batch": '''
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
out["r"], out["lens"] = sendmmsg(u.fileno(), [(sin("127.0.0.1", PORT), b"m%d" % i) for i in range(150)])''',
    "epipe_raises_sigpipe_unless_msg_nosignal": '''
import signal
caught = []
signal.signal(signal.SIGPIPE, lambda *_: caught.append(threading.get_native_id()))
for name, flags in (("plain", 0), ("nosignal", socket.MSG_NOSIGNAL)):
    caught.clear()
    s = socket.socket()
    s.connect(("127.0.0.1", PORT))
    s.recv(1)  # the server has closed its end
    errors = []
    while not errors or errors[-1] != errno.EPIPE and len(errors) < 100:
        try:
            s.sendmsg([b"x"], [], flags)
        except OSError as e:
            errors.append(e.errno)
    deadline = time.monotonic() + (5 if flags == 0 else 0.3)  # sandboxed, it comes just after the call returns
    while not caught and time.monotonic() < deadline:
        time.sleep(0.01)
    out[name] = [errors[-1], caught == [threading.get_native_id()]]
    s.close()''',
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_sandboxed_call_fails_as_bare(case: str, tcp_server: Listener) -> None:
    _same_as_bare(case, tcp_server)


@pytest.mark.parametrize("case", sorted(name for name in CASES
                                         if "read_only" in name or "unmapped" in name or "batch" in name))
def test_msg_len_stored_as_bare_where_the_maps_are_read_as_text(case: str, tcp_server: Listener,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Which msg_len fields a guest could store into is asked of
    /proc/TID/maps with PROCMAP_QUERY, or, before Linux 6.11, read from its
    text: the same answers, for every batch of a long vector (each asks anew)."""
    monkeypatch.setenv("GUESTFENCE_SANDBOX_MAPS_TEXT", "1")
    _same_as_bare(case, tcp_server)


def _same_as_bare(case: str, tcp_server: Listener) -> None:
    code = CASES[case].replace("PORT", str(tcp_server.port))
    policy = {"allow": [f"tcp://127.0.0.1:{tcp_server.port}", f"udp://127.0.0.1:{tcp_server.port}",
                        "tcp://127.0.0.1:1"]}
    assert run_sandboxed(code, **policy) == run_bare(code)
