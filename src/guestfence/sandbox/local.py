"""Calls on unix, netlink and other non-INET sockets: decided, then made for the guest on the pinned socket.

No such call is ever handed back to the kernel to run (CONTINUE): the
kernel would look the fd number and the address up again, and another
guest thread that dup2()s an INET socket onto the number and rewrites the
address would get an unchecked connect or send. Here the socket is our
pinned copy (pidfd_getfd), so it stays unix or netlink whatever the guest
does to its fd table, and the destination is the one decided:

    socket    destination in the call             decided by              made as
    unix      a path                              decide_unix on the      connect/send to /proc/self/fd/N of
                                                  resolved path           an O_PATH fd on the socket inode
    unix      an abstract name (@NAME)            decide_unix on NAME     the exact bytes read
    unix      none, or a send on a stream or      nothing to decide: the  as read (the kernel refuses a
              seqpacket socket (no destination)   connected peer          name there or ignores it)
    netlink   the kernel (nl_pid 0, no groups)    always allowed          as read
    netlink   a process or multicast groups       refused: no rule names it
    others    (AF_ALG) no destination             nothing to decide       as read

A path is resolved as the guest's kernel would: absolute paths inside the
guest thread's root (/proc/TID/root, openat2 RESOLVE_IN_ROOT), relative
ones from its working directory (/proc/TID/cwd; refused when the guest's
root or mount namespace is not ours, since ".." and absolute symlinks
would then be resolved in ours),
symlinks followed, magic links (/proc/self/fd/...) refused (they would be
resolved as ours). The socket inode is opened with O_PATH, the decision
is made on its canonical path, and the call is made to that very inode
through /proc/self/fd/N, so a symlink swapped or a file renamed after the
decision cannot redirect it. A deny rule naming one path also refuses any
other name (hard link) of the same socket.

Everything runs with the guest thread's identity (``identity.acting_as``):
the path lookup and the socket's write-permission check are the guest's,
and the server sees the guest's uid and gid. Control messages: SCM_RIGHTS
numbers are the guest's descriptors, taken from the guest with
pidfd_getfd and passed as ours (the same open files); SCM_CREDENTIALS is
refused (EPERM): the kernel checks a claimed pid against the sender's
process, which is ours, not the guest's.

Netlink sends to the kernel keep its own privilege checks
(netlink_ns_capable: the opener of the socket, the guest, and the caller,
our thread acting as the guest with no effective capability), so they gain
nothing of the supervisor's.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import stat
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import final

from guestfence.policy.decide import decide_unix
from guestfence.policy.model import Policy, UnixFlow, UnixScope
from guestfence.sandbox import identity, onbehalf
from guestfence.sandbox.identity import IdentityError
from guestfence.sandbox.materialize import CMSGHDR, GuestFault, Message
from guestfence.sandbox.onbehalf import Outcome
from guestfence.sandbox.verdict import SocketKind

SOCKADDR_UN_SIZE = 110
SOCKADDR_NL_SIZE = 12
SCM_RIGHTS = 1
SCM_CREDENTIALS = 2
SCM_MAX_FD = 253
MAX_PASSED_FDS = 1024
"""Descriptors passed with SCM_RIGHTS in one call (beyond: ETOOMANYREFS, as the kernel's in-flight limit)."""

_OPENAT2 = {"x86_64": 437, "aarch64": 437}[os.uname().machine]
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


Report = Callable[["Caller", str, str, str], None]
"""``report(caller, protocol, destination, decided_by)``: log one refusal."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Caller:
    """The guest thread whose call this is."""

    tid: int
    syscall: str
    still_waiting: Callable[[], None]
    """Raises GuestFault(ESRCH) unless the thread is still in the call (its tid not recycled)."""
    take_fd: Callable[[int], int]
    """Our copy of the caller's descriptor N (pidfd_getfd from the caller's fd table); GuestFault."""


class _Refused(Exception):
    def __init__(self, err: int) -> None:
        super().__init__(errno.errorcode.get(err, str(err)))
        self.errno = err


@dataclass(slots=True)
class _Plan:
    """One connect or message as it will be made, and the descriptors to close after."""

    message: Message
    files: list[int] = field(default_factory=list)


class _Guest:
    """What we hold of the calling thread: its root and working directory, opened once."""

    def __init__(self, tid: int) -> None:
        self.tid = tid
        self.root = -1
        self.cwd = -1
        self.root_path = "/"
        self.same_root = True

    def open(self, *, paths: bool, relative: bool) -> None:
        try:
            if paths:
                self.root = os.open(f"/proc/{self.tid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                self.root_path = os.readlink(f"/proc/{self.tid}/root")
                self.same_root = (os.path.samestat(os.fstat(self.root), os.stat("/"))
                                  and os.path.samestat(os.stat(f"/proc/{self.tid}/ns/mnt"), os.stat("/proc/self/ns/mnt")))
            if relative:
                self.cwd = os.open(f"/proc/{self.tid}/cwd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            raise GuestFault(errno.ESRCH) from None

    def close(self) -> None:
        for fd in (self.root, self.cwd):
            if fd >= 0:
                os.close(fd)


class Local:
    """Serves the non-INET calls of one sandbox with its policy."""

    def __init__(self, policy: Policy, deny_errno: int, report: Report) -> None:
        self.policy = policy
        self.deny_errno = deny_errno
        self.report = report
        self._path_denials = [r.target for r in policy.deny_unix if r.scope is UnixScope.PATH]

    def connect(self, caller: Caller, fd: int, kind: SocketKind, name: bytes) -> Outcome:
        return self._run(caller, fd, kind, [Message(name=name, payload=b"", control=b"")], 0,
                         connect=True, many=False, fault=None)

    def send(self, caller: Caller, fd: int, kind: SocketKind, messages: Sequence[Message], flags: int, *,
             many: bool, fault: GuestFault | None = None) -> Outcome:
        """sendto/sendmsg (one message) or sendmmsg (``many``: the messages before the first refused
        one, or before ``fault``, are sent and counted, as the kernel counts)."""
        return self._run(caller, fd, kind, messages, flags, connect=False, many=many, fault=fault)

    def _run(self, caller: Caller, fd: int, kind: SocketKind, messages: Sequence[Message], flags: int, *,
             connect: bool, many: bool, fault: GuestFault | None) -> Outcome:
        stop = Outcome(error=fault.errno) if fault else Outcome()
        if not messages:
            return stop
        guest = _Guest(caller.tid)
        plans: list[_Plan] = []
        try:
            try:
                who = identity.of_thread(caller.tid)
            except (OSError, KeyError, ValueError):
                raise GuestFault(errno.ESRCH) from None
            unix = kind.domain == socket.AF_UNIX
            names = [_path_of(m.name) for m in messages if unix and _names_peer(kind, m, connect)]
            guest.open(paths=any(names), relative=any(p and not p.startswith(b"/") for p in names))
            caller.still_waiting()
            try:
                with identity.acting_as(who):
                    for message in messages:
                        try:
                            plans.append(self._plan(caller, guest, kind, message, connect=connect))
                        except (_Refused, GuestFault) as refused:
                            stop = Outcome(error=refused.errno)
                            break
                    if not plans:
                        return stop
                    if any(plan.message.control for plan in plans):
                        caller.still_waiting()  # the SCM_RIGHTS descriptors came from the caller
                    if connect:
                        return onbehalf.connect(fd, plans[0].message.name or b"")
                    if many:
                        return onbehalf.sendmmsg(fd, [p.message for p in plans], flags)
                    return onbehalf.sendmsg(fd, plans[0].message, flags)
            except IdentityError as exc:
                self.report(caller, _protocol(kind), "(any)", f"refused: {exc}")
                return Outcome(error=errno.EACCES)
        finally:
            for plan in plans:
                for file in plan.files:
                    os.close(file)
            guest.close()

    def _plan(self, caller: Caller, guest: _Guest, kind: SocketKind, message: Message, *, connect: bool) -> _Plan:
        if kind.domain == socket.AF_NETLINK:
            return self._plan_netlink(caller, message)
        if kind.domain != socket.AF_UNIX:
            return _Plan(message=message)  # AF_ALG: nothing to decide, and the pinned socket stays what it is
        plan = _Plan(message=message)
        try:
            if message.control:
                plan.message = replace(message, control=self._take_passed_fds(caller, message.control, plan.files))
            if _names_peer(kind, message, connect):
                self._plan_unix_destination(caller, guest, plan)
        except BaseException:
            for file in plan.files:
                os.close(file)
            raise
        return plan

    def _plan_netlink(self, caller: Caller, message: Message) -> _Plan:
        if _has_cmsg(message.control, SCM_CREDENTIALS) or _has_cmsg(message.control, SCM_RIGHTS):
            raise GuestFault(errno.EPERM if _has_cmsg(message.control, SCM_CREDENTIALS) else errno.EINVAL)
        name = message.name
        if name is not None and len(name) >= SOCKADDR_NL_SIZE and _family(name) == socket.AF_NETLINK:
            port, groups = struct.unpack_from("=II", name, 4)
            if port or groups:
                self.report(caller, "netlink", f"netlink port {port} groups {groups:#x}",
                            "netlink to a process or a multicast group is not governed by any rule")
                raise _Refused(self.deny_errno)
        return _Plan(message=message)

    def _plan_unix_destination(self, caller: Caller, guest: _Guest, plan: _Plan) -> None:
        name = plan.message.name
        assert name is not None
        if len(name) <= 2 or len(name) > SOCKADDR_UN_SIZE or _family(name) != socket.AF_UNIX:
            return  # the kernel refuses it (EINVAL), or AF_UNSPEC disconnects: no destination
        if name[2] == 0:
            flow = UnixFlow(abstract=name[3:].decode("utf-8", "surrogateescape"))
            self._decide(caller, flow)
            return
        path = _path_of(name)
        assert path
        socket_fd = self._open_socket(caller, guest, path)
        plan.files.append(socket_fd)
        flow = UnixFlow(path=self._canonical(caller, guest, socket_fd))
        self._decide(caller, flow, guest=guest, socket_fd=socket_fd)
        via = b"/proc/self/fd/%d\0" % socket_fd
        plan.message = replace(plan.message, name=struct.pack("=H", socket.AF_UNIX) + via)

    def _decide(self, caller: Caller, flow: UnixFlow, *, guest: _Guest | None = None, socket_fd: int = -1) -> None:
        decision = decide_unix(self.policy, flow)
        decided_by = decision.decided_by
        allowed = decision.allowed
        if allowed and guest is not None:
            same = self._denied_other_name(guest, socket_fd)
            if same is not None:
                allowed, decided_by = False, f"deny unix://{same} (the same socket under another name)"
        if not allowed:
            self.report(caller, "unix", str(flow), decided_by)
            raise _Refused(self.deny_errno)

    def _denied_other_name(self, guest: _Guest, socket_fd: int) -> str | None:
        """The denied path that is another name (a hard link) of the socket we opened, if any."""
        if not self._path_denials:
            return None
        ours = os.fstat(socket_fd)
        for path in self._path_denials:
            try:
                other = _openat2(guest.root, os.fsencode(path), _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
            except OSError:
                continue  # not there, or not for the guest to reach: no name it could use
            try:
                if os.path.samestat(ours, os.fstat(other)):
                    return path
            finally:
                os.close(other)
        return None

    def _open_socket(self, caller: Caller, guest: _Guest, path: bytes) -> int:
        """An O_PATH descriptor on the socket inode ``path`` names for the guest (with the guest's ids)."""
        if path.startswith(b"/"):
            base, resolve = guest.root, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS
        elif guest.same_root:
            base, resolve = guest.cwd, _RESOLVE_NO_MAGICLINKS
        else:
            self.report(caller, "unix", os.fsdecode(path),
                        "refused: a relative socket path in a guest whose root or mount namespace is not the supervisor's")
            raise _Refused(errno.EACCES)
        try:
            fd = _openat2(base, path, resolve)
        except OSError as exc:
            raise GuestFault(exc.errno or errno.ENOENT) from None
        status = os.fstat(fd)
        if not stat.S_ISSOCK(status.st_mode) or status.st_nlink == 0:
            os.close(fd)
            raise GuestFault(errno.ECONNREFUSED if status.st_nlink else errno.ENOENT)
        return fd

    def _canonical(self, caller: Caller, guest: _Guest, socket_fd: int) -> str:
        """The socket's path in the guest's view of the file system."""
        path = os.readlink(f"/proc/self/fd/{socket_fd}")
        if guest.root_path == "/":
            return path
        if path.startswith(guest.root_path + "/"):
            return path[len(guest.root_path):]
        self.report(caller, "unix", path, "refused: the socket lies outside the guest's root")
        raise _Refused(errno.EACCES)

    def _take_passed_fds(self, caller: Caller, control: bytes, files: list[int]) -> bytes:
        """``control`` with each SCM_RIGHTS number replaced by our copy of the guest's descriptor."""
        out = bytearray(control)
        offset = 0
        while offset + CMSGHDR.size <= len(control):
            length, level, kind = CMSGHDR.unpack_from(control, offset)
            if length < CMSGHDR.size or offset + length > len(control):
                break  # the kernel refuses the malformed header (EINVAL) when it parses our copy
            if level == socket.SOL_SOCKET and kind == SCM_CREDENTIALS:
                raise GuestFault(errno.EPERM)
            if level == socket.SOL_SOCKET and kind == SCM_RIGHTS:
                count = (length - CMSGHDR.size) // 4
                if count > SCM_MAX_FD:
                    raise GuestFault(errno.EINVAL)
                if len(files) + count > MAX_PASSED_FDS:
                    raise GuestFault(errno.ETOOMANYREFS)
                for i in range(count):
                    at = offset + CMSGHDR.size + 4 * i
                    number = struct.unpack_from("=i", control, at)[0]
                    ours = caller.take_fd(number)
                    files.append(ours)
                    struct.pack_into("=i", out, at, ours)
            offset += (length + 7) & ~7
        return bytes(out)


def _openat2(base: int, path: bytes, resolve: int) -> int:
    """openat2(base, path, O_PATH | O_CLOEXEC, resolve): an O_PATH descriptor or OSError."""
    how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, resolve)
    fd = _syscall(_OPENAT2, ctypes.c_int(base), path, ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(fd)


def _names_peer(kind: SocketKind, message: Message, connect: bool) -> bool:
    """Whether the kernel will use the message's name to find a peer: a connect, or a datagram
    send (stream sockets refuse a name, seqpacket ones ignore it)."""
    return message.name is not None and (connect or kind.type == socket.SOCK_DGRAM)


def _path_of(name: bytes | None) -> bytes:
    """The file path in a unix sockaddr (up to the first NUL, as the kernel reads it), b"" if none."""
    if name is None or len(name) <= 2 or len(name) > SOCKADDR_UN_SIZE or _family(name) != socket.AF_UNIX:
        return b""
    return name[2:].split(b"\0", 1)[0]


def _family(name: bytes) -> int:
    return int.from_bytes(name[:2], "little")


def _has_cmsg(control: bytes, kind: int) -> bool:
    offset = 0
    while offset + CMSGHDR.size <= len(control):
        length, level, found = CMSGHDR.unpack_from(control, offset)
        if length < CMSGHDR.size:
            return False
        if level == socket.SOL_SOCKET and found == kind:
            return True
        offset += (length + 7) & ~7
    return False


def _protocol(kind: SocketKind) -> str:
    return {socket.AF_UNIX: "unix", socket.AF_NETLINK: "netlink"}.get(kind.domain, f"family {kind.domain}")
