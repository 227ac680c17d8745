"""The seccomp user-notification and pidfd calls the Python bindings lack.

python3-seccomp 2.5.4 builds and loads filters, but its ``receive_notify``
holds the GIL while it blocks and it has no ``NOTIF_ID_VALID``; the stdlib
has no ``pidfd_getfd``, ``process_vm_readv``, ``capset`` or ``tgkill``. Notifications
are received by fastpath.c; this module parses them and makes the calls
Python's handlers need; ``GuestMemory`` writes results into a caller's
memory through fds that hold its mm, never by its number. Every function
raises ``OSError`` with the kernel's errno; callers decide what an errno
means.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import fcntl
import os
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import final

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

# x86-64 and aarch64 share these numbers (the "new" generic table) except
# where noted; both are the only architectures guestfence runs on.
_NR = {
    "x86_64": {"pidfd_getfd": 438, "process_vm_readv": 310, "capset": 126,
               "capget": 125},
    "aarch64": {"pidfd_getfd": 438, "process_vm_readv": 270, "capset": 91,
                "capget": 90},
}[os.uname().machine]

# struct seccomp_notif: u64 id, u32 pid, u32 flags, struct seccomp_data
# { s32 nr, u32 arch, u64 instruction_pointer, u64 args[6] }.
NOTIF = struct.Struct("=QIIiIQ6Q")
# struct seccomp_notif_resp: u64 id, s64 val, s32 error, u32 flags.
NOTIF_RESP = struct.Struct("=QqiI")
_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(direction: int, number: int, size: int, kind: str = "!") -> int:
    return (direction << 30) | (size << 16) | (ord(kind) << 8) | number


IOCTL_NOTIF_SEND = _ioc(_IOC_READ | _IOC_WRITE, 1, NOTIF_RESP.size)
IOCTL_NOTIF_ID_VALID = _ioc(_IOC_WRITE, 2, 8)
IOCTL_NOTIF_SET_FLAGS = _ioc(_IOC_WRITE, 4, 8)
USER_NOTIF_FLAG_CONTINUE = 1
USER_NOTIF_FD_SYNC_WAKE_UP = 1
PIDFD_THREAD = os.O_EXCL  # pidfd_open(tid, PIDFD_THREAD), Linux 6.9


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Notification:
    """One trapped system call, as the kernel reported it."""

    id: int
    pid: int
    nr: int
    arch: int
    args: tuple[int, int, int, int, int, int]


SMALL_READ = 4096
"""Reads up to this size land in a per-thread buffer (4 KiB per handler
thread) rather than a fresh one: a sockaddr and a typical datagram."""


class _Scratch(threading.local):
    """Per-thread ctypes buffers reused by every call (allocating them costs
    more than the system calls they serve)."""

    def __init__(self) -> None:
        self.value = ctypes.c_int()
        self.size = ctypes.c_uint32()
        self.value_ref = ctypes.byref(self.value)
        self.size_ref = ctypes.byref(self.size)
        self.iovecs = (ctypes.c_uint64 * 16)()
        self.local_ref = ctypes.addressof(self.iovecs)
        self.remote_ref = ctypes.addressof(self.iovecs) + 8 * 8
        self.small = ctypes.create_string_buffer(SMALL_READ)
        self.small_ref = ctypes.addressof(self.small)


_scratch = _Scratch()


def parse_notification(buf: ctypes.Array[ctypes.c_char]) -> Notification:
    """The struct seccomp_notif NOTIF_RECV filled in (fastpath's loop receives them)."""
    nid, pid, _flags, nr, arch, _ip, *args = NOTIF.unpack_from(buf)
    return Notification(id=nid, pid=pid, nr=nr, arch=arch, args=tuple(args))


def respond(notify_fd: int, notif_id: int, *, value: int = 0, error: int = 0, cont: bool = False) -> bool:
    """Answer one call: its return ``value``, or ``-error``, or let it run.
    Whether the caller got the answer.

    ENOENT means the caller is gone (killed, or its syscall interrupted):
    nothing is left to answer, which is not an error of ours (False).
    """
    flags = USER_NOTIF_FLAG_CONTINUE if cont else 0
    resp = bytearray(NOTIF_RESP.pack(notif_id, value, -error if error else 0, flags))
    try:
        fcntl.ioctl(notify_fd, IOCTL_NOTIF_SEND, resp)
    except OSError as exc:
        if exc.errno != errno_mod.ENOENT:
            raise
        return False
    return True


def id_valid(notify_fd: int, notif_id: int) -> bool:
    """Whether the task of ``notif_id`` still waits in that call (so its pid was not reused)."""
    try:
        fcntl.ioctl(notify_fd, IOCTL_NOTIF_ID_VALID, struct.pack("=Q", notif_id))
    except OSError as exc:
        if exc.errno == errno_mod.ENOENT:
            return False
        raise
    return True


def set_sync_wakeup(notify_fd: int) -> bool:
    """Ask for synchronous wake-ups (Linux 6.6): the guest and the handler
    hand the CPU to each other instead of going through the scheduler."""
    try:
        fcntl.ioctl(notify_fd, IOCTL_NOTIF_SET_FLAGS, USER_NOTIF_FD_SYNC_WAKE_UP)
    except OSError:
        return False
    return True


def has_thread_pidfds() -> bool:
    """Whether pidfd_open takes PIDFD_THREAD (Linux 6.9), so a pidfd can
    name any thread rather than a thread-group leader only."""
    try:
        os.close(os.pidfd_open(os.getpid(), PIDFD_THREAD))
    except OSError:
        return False
    return True


def pidfd_open_thread(tid: int) -> int:
    """A pidfd for thread ``tid`` itself (needs ``has_thread_pidfds()``)."""
    return os.pidfd_open(tid, PIDFD_THREAD)


def pidfd_open_process(tgid: int) -> int:
    """A pidfd for the thread group ``tgid`` (its leader), on any kernel."""
    return os.pidfd_open(tgid)


def thread_group_of(tid: int) -> int:
    """The thread-group id (process id) of thread ``tid``, from /proc/TID/status."""
    with open(f"/proc/{tid}/status", "rb") as status:
        for line in status:
            if line.startswith(b"Tgid:"):
                return int(line.split()[1])
    raise OSError(errno_mod.ESRCH, os.strerror(errno_mod.ESRCH))


_tgkill = _libc.tgkill
_tgkill.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)


def tgkill(tgid: int, tid: int, signum: int) -> None:
    """Send ``signum`` to thread ``tid`` of process ``tgid`` (a thread-directed
    signal, as the kernel's own SIGPIPE on a send is)."""
    if _tgkill(tgid, tid, signum) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """Our own descriptor for the open file behind the guest's ``target_fd`` (close-on-exec)."""
    fd = _syscall(_NR["pidfd_getfd"], ctypes.c_int(pidfd), ctypes.c_int(target_fd), ctypes.c_uint(0))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


_process_vm_readv = _libc.process_vm_readv
_process_vm_readv.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong,
                              ctypes.c_ulong)
_process_vm_readv.restype = ctypes.c_ssize_t
MAX_PIECES = 4
IOV_MAX = 1024


def read_memory(pid: int, address: int, length: int) -> bytes:
    """``length`` bytes of the guest's memory at ``address``.

    Raises OSError(EFAULT) when any of it is unmapped: a short read means a
    bad pointer, exactly as the kernel's own copy_from_user would report.
    """
    return read_memory_many(pid, ((address, length),))[0]


def read_memory_many(pid: int, pieces: Sequence[tuple[int, int]]) -> list[bytes]:
    """Every ``(address, length)`` piece, in one system call per IOV_MAX pieces.

    OSError(EFAULT) when any piece is unreadable (it does not say which).
    """
    out: list[bytes] = []
    for start in range(0, len(pieces), IOV_MAX):
        out += _read_chunk(pid, pieces[start:start + IOV_MAX])
    return out


def _read_chunk(pid: int, pieces: Sequence[tuple[int, int]]) -> list[bytes]:
    total = sum(length for _, length in pieces)
    if total == 0:
        return [b"" for _ in pieces]
    scratch = _scratch
    if total <= SMALL_READ:
        start = scratch.small_ref
    else:
        buf = ctypes.create_string_buffer(total)
        start = ctypes.addressof(buf)
    count = len(pieces)
    if count <= MAX_PIECES:
        iovecs, local, remote = scratch.iovecs, scratch.local_ref, scratch.remote_ref
    else:
        iovecs = (ctypes.c_uint64 * (4 * count))()
        local = ctypes.addressof(iovecs)
        remote = local + 16 * count
    half = len(iovecs) // 2
    base = start
    for i, (address, length) in enumerate(pieces):
        iovecs[2 * i] = base
        iovecs[2 * i + 1] = length
        iovecs[half + 2 * i] = address
        iovecs[half + 2 * i + 1] = length
        base += length
    got = _process_vm_readv(pid, local, count, remote, count, 0)
    if got < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    if got != total:
        raise OSError(errno_mod.EFAULT, os.strerror(errno_mod.EFAULT))
    out, offset = [], start
    for _, length in pieces:
        out.append(ctypes.string_at(offset, length))
        offset += length
    return out


PROCMAP_QUERY = _ioc(_IOC_READ | _IOC_WRITE, 17, 104, "f")
"""Linux 6.11: the mapping at an address, asked of /proc/TID/maps (struct procmap_query, 104 bytes)."""
_PROCMAP = struct.Struct("=9Q4I2Q")
_PROCMAP_WRITABLE = 0x02
_BLOCK = 4096
CAP_DAC_OVERRIDE = 1


@final
class GuestMemory:
    """A caller's memory as it is now, for writing results back into it.

    /proc/TID/mem and /proc/TID/maps, opened for thread ``tid``: each fd
    holds the mm of the task that had the number when it was opened,
    whatever takes the number later, and fails once that mm is gone, so a
    write through it can reach no other process. Open it before the
    NOTIF_ID_VALID that proves the reads, which then proves it the
    caller's too. (fastpath.c's struct guest_mm says why not
    process_vm_writev by number: a write cannot be taken back.)
    ``query``: ask the maps with PROCMAP_QUERY (``has_procmap_query``),
    rather than read their text. OSError when either cannot be opened.
    """

    __slots__ = ("_mem", "_maps", "_query")

    def __init__(self, tid: int, *, query: bool) -> None:
        self._query = query
        self._mem = _open_overriding(f"/proc/{tid}/mem", os.O_WRONLY | os.O_CLOEXEC)
        try:
            self._maps = os.open(f"/proc/{tid}/maps", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(self._mem)
            raise

    def close(self) -> None:
        os.close(self._mem)
        os.close(self._maps)

    def storable(self, fields: Sequence[tuple[int, bytes]]) -> int:
        """How many of ``fields`` ((address, the bytes it holds), ascending)
        the caller could store into, from the first: those in mappings it
        may write, in pages a write reaches (a file mapping's page past the
        end of the file, a guard page: its own store faults there too).
        Each 4096 bytes are tried by writing back what one field holds:
        invisible to the guest."""
        if not fields:
            return 0
        end = self._writable_end(fields[0][0], fields[-1][0] + len(fields[-1][1]))
        tried = fields[0][0]
        for index, (address, held) in enumerate(fields):
            if address + len(held) > end:
                return index
            if address + len(held) > tried:
                if self._pwrite(held, address) != len(held):
                    return index
                tried = ((address + len(held) - 1) | (_BLOCK - 1)) + 1
        return len(fields)

    def write(self, pieces: Sequence[tuple[int, bytes]]) -> None:
        """Write each ``(address, data)``, in order, until one fails (the mm is gone, or the page)."""
        for address, data in pieces:
            if self._pwrite(data, address) != len(data):
                return

    def _pwrite(self, data: bytes, address: int) -> int:
        try:
            return os.pwrite(self._mem, data, address)
        except OSError:
            return 0

    def _writable_end(self, address: int, limit: int) -> int:
        """The end of the run of mappings the caller may write (PROT_WRITE) from
        ``address`` on, up to ``limit``. Asked, not tried: a write to
        /proc/TID/mem is a debugger's (FOLL_FORCE) and also succeeds in a
        read-only private mapping, where the kernel's own store fails."""
        if not self._query:
            return self._writable_end_from_text(address, limit)
        while address < limit:
            query = bytearray(_PROCMAP.pack(_PROCMAP.size, 0, address, *[0] * 12))
            try:
                fcntl.ioctl(self._maps, PROCMAP_QUERY, query)
            except OSError:
                return address  # ENOENT: no mapping there; ESRCH: the mm is gone
            _, _, _, _, vma_end, vma_flags, *_ = _PROCMAP.unpack(query)
            if not vma_flags & _PROCMAP_WRITABLE:
                return address
            address = vma_end
        return address

    def _writable_end_from_text(self, address: int, limit: int) -> int:
        # From the start each time: storable is asked once per batch of a
        # sendmmsg, and the read before left the offset at the end.
        os.lseek(self._maps, 0, os.SEEK_SET)
        text = b""
        while chunk := os.read(self._maps, 65536):
            text += chunk
        for line in text.splitlines():  # "start-end perms ...", in ascending order
            span, perms = line.split(b" ", 2)[:2]
            start, end = (int(n, 16) for n in span.split(b"-"))
            if start > address:
                return address  # a gap
            if end > address:
                if perms[1:2] != b"w":
                    return address
                address = end
                if address >= limit:
                    break
        return address


def has_procmap_query() -> bool:
    """Whether /proc/PID/maps answers PROCMAP_QUERY (Linux 6.11)."""
    probe = ctypes.c_int()
    query = bytearray(_PROCMAP.pack(_PROCMAP.size, 0, ctypes.addressof(probe), *[0] * 12))
    with open("/proc/self/maps", "rb", buffering=0) as maps:
        try:
            fcntl.ioctl(maps.fileno(), PROCMAP_QUERY, query)
        except OSError:
            return False
    return True


def _open_overriding(path: str, flags: int) -> int:
    """os.open, with CAP_DAC_OVERRIDE for this thread if it is permitted: /proc/TID/mem
    is 0600, owned by the guest's uid when it is dumpable, and a root supervisor's
    handler threads keep no DAC override (``supervisor``)."""
    try:
        return os.open(path, flags)
    except PermissionError:
        header = _CapHeader(_CAPABILITY_VERSION_3, 0)
        data = (_CapData * 2)()
        if _syscall(_NR["capget"], ctypes.byref(header), ctypes.byref(data)) != 0 or \
                not data[0].permitted >> CAP_DAC_OVERRIDE & 1:
            raise
    effective = data[0].effective
    data[0].effective |= 1 << CAP_DAC_OVERRIDE
    if _syscall(_NR["capset"], ctypes.byref(header), ctypes.byref(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    try:
        return os.open(path, flags)
    finally:
        data[0].effective = effective
        if _syscall(_NR["capset"], ctypes.byref(header), ctypes.byref(data)) != 0:
            os.write(2, b"guestfence: cannot drop CAP_DAC_OVERRIDE again; aborting\n")
            os.abort()


_PR_SET_DUMPABLE = 4


def set_non_dumpable() -> None:
    """Keep same-uid processes (the guest) from ptracing us or writing our memory."""
    if _libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32))


_CAPABILITY_VERSION_3 = 0x20080522
CAP_KILL = 5
CAP_SYS_PTRACE = 19


def keep_only_effective(*capabilities: int) -> None:
    """Drop every effective capability of the calling thread except ``capabilities``
    (if permitted). Per thread: other threads keep theirs."""
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _syscall(_NR["capget"], ctypes.byref(header), ctypes.byref(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    keep = sum(1 << capability for capability in set(capabilities))
    for i in range(2):
        data[i].effective &= (keep >> (32 * i)) & data[i].permitted
    if _syscall(_NR["capset"], ctypes.byref(header), ctypes.byref(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


_getsockopt = _libc.getsockopt
_getsockopt.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_SOL_SOCKET, _SO_TYPE, _SO_PROTOCOL, _SO_DOMAIN = 1, 3, 38, 39


def socket_kind(fd: int) -> tuple[int, int, int]:
    """(SO_DOMAIN, SO_TYPE, SO_PROTOCOL) of ``fd``, without wrapping it in a
    Python socket (which could change the shared file's O_NONBLOCK)."""
    scratch = _scratch
    found = []
    for option in (_SO_DOMAIN, _SO_TYPE, _SO_PROTOCOL):
        scratch.size.value = 4
        if _getsockopt(fd, _SOL_SOCKET, option, scratch.value_ref, scratch.size_ref) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        found.append(scratch.value.value)
    return found[0], found[1], found[2]
