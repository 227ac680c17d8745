"""A supervisor thread takes on a guest thread's identity for one call, and gives it back.

Linux credentials belong to threads: the setresuid/setresgid/setgroups
*system calls* change the calling thread only (glibc's wrappers of the
same names change every thread of the process; we never call those). A
handler thread that connects or sends to a unix socket for the guest
first takes the guest thread's real and effective uid and gid and its
supplementary groups, read from /proc/TID/status, so that:

- the socket file's permission check (write access on the socket inode)
  and the directory searches of the path lookup are the guest's, made
  with no effective capability at all, also for a root guest (the
  permitted set is kept, because the saved uid stays 0, so the thread
  can come back);
- the server sees the guest's uid and gid in SO_PEERCRED (effective ids)
  and in the credentials the kernel attaches for SO_PASSCRED (real ids).

What cannot be made the guest's: the pid the kernel records for the peer
is our process's (SO_PEERCRED pid, SO_PEERPIDFD, SCM_CREDENTIALS pid).
An unprivileged supervisor cannot take on another identity at all: it
serves a guest whose ids are its own and refuses any other (see
``Identity.matches``), never lending its own.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import final


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

_NR = {
    "x86_64": {"setresuid": 117, "setresgid": 119, "setgroups": 116, "getresuid": 118, "getresgid": 120,
               "getgroups": 115, "capget": 125, "capset": 126},
    "aarch64": {"setresuid": 147, "setresgid": 149, "setgroups": 159, "getresuid": 148, "getresgid": 150,
                "getgroups": 158, "capget": 90, "capset": 91},
}[os.uname().machine]

CAP_SETGID = 6
CAP_SETUID = 7


class IdentityError(Exception):
    """The guest's identity cannot be taken on (or ours cannot be restored)."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """(real, effective, saved) uids and gids and the supplementary groups of one thread."""

    uids: tuple[int, int, int]
    gids: tuple[int, int, int]
    groups: frozenset[int]

    def matches(self, other: Identity) -> bool:
        """The same real and effective ids and groups: what a peer can see of a thread."""
        return (self.uids[:2] == other.uids[:2] and self.gids[:2] == other.gids[:2]
                and self.groups == other.groups)


def of_thread(tid: int) -> Identity:
    """The identity of thread ``tid`` (any thread id, as /proc/TID shows it)."""
    fields: dict[str, list[int]] = {}
    with open(f"/proc/{tid}/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups"):
                fields[key] = [int(v) for v in value.split()]
    uids, gids = fields["Uid"], fields["Gid"]
    return Identity(uids=(uids[0], uids[1], uids[2]), gids=(gids[0], gids[1], gids[2]),
                    groups=frozenset(fields.get("Groups", ())))


def of_this_thread() -> Identity:
    uids = (ctypes.c_uint * 3)()
    gids = (ctypes.c_uint * 3)()
    _check(_syscall(_NR["getresuid"], ctypes.byref(uids, 0), ctypes.byref(uids, 4), ctypes.byref(uids, 8)))
    _check(_syscall(_NR["getresgid"], ctypes.byref(gids, 0), ctypes.byref(gids, 4), ctypes.byref(gids, 8)))
    count = _check(_syscall(_NR["getgroups"], ctypes.c_int(0), None))
    groups = (ctypes.c_uint * max(count, 1))()
    count = _check(_syscall(_NR["getgroups"], ctypes.c_int(count), groups))
    return Identity(uids=(uids[0], uids[1], uids[2]), gids=(gids[0], gids[1], gids[2]),
                    groups=frozenset(groups[i] for i in range(count)))


@contextmanager
def acting_as(guest: Identity) -> Iterator[None]:
    """Run the body with ``guest``'s ids on this thread, then restore ours.

    A supervisor thread without root's ids cannot switch: it runs the body
    as itself when the guest's ids are its own, and raises IdentityError
    otherwise. If our ids cannot be restored the process aborts: a handler
    thread must never go on with a guest's identity (or with root's
    capabilities in its effective set).
    """
    ours = of_this_thread()
    if ours.uids != (0, 0, 0):
        if not ours.matches(guest):
            raise IdentityError(f"the guest's ids (uid {guest.uids[1]}, gid {guest.gids[1]}) are not ours "
                                f"(uid {ours.uids[1]}, gid {ours.gids[1]}), and only root can take them on")
        yield
        return
    effective = _effective_caps()
    if ours.matches(guest):  # a root guest of a root supervisor: only the capabilities go
        _set_effective_caps(())
        try:
            yield
        finally:
            _restore(ours, effective, groups=False)
        return
    _set_effective_caps((CAP_SETUID, CAP_SETGID))
    try:
        if guest.groups != ours.groups:
            _set_groups(guest.groups)
        _check(_syscall(_NR["setresgid"], ctypes.c_uint(guest.gids[0]), ctypes.c_uint(guest.gids[1]),
                        ctypes.c_uint(guest.gids[1])))
        # The saved uid stays 0: the way back. A non-zero effective uid clears the effective capabilities.
        _check(_syscall(_NR["setresuid"], ctypes.c_uint(guest.uids[0]), ctypes.c_uint(guest.uids[1]),
                        ctypes.c_uint(0)))
        _set_effective_caps(())  # also for a root guest: its calls are made with no capability at all
    except OSError as exc:
        _restore(ours, effective)
        raise IdentityError(f"cannot take on the guest's ids: {exc.strerror}") from None
    try:
        yield
    finally:
        _restore(ours, effective)


def _restore(ours: Identity, effective: tuple[int, ...], *, groups: bool = True) -> None:
    """Our ids back, and exactly the effective capabilities we had before."""
    try:
        _check(_syscall(_NR["setresuid"], ctypes.c_uint(ours.uids[0]), ctypes.c_uint(ours.uids[1]),
                        ctypes.c_uint(ours.uids[2])))
        _set_effective_caps((CAP_SETUID, CAP_SETGID))
        if groups:
            if of_this_thread().groups != ours.groups:
                _set_groups(ours.groups)
            _check(_syscall(_NR["setresgid"], ctypes.c_uint(ours.gids[0]), ctypes.c_uint(ours.gids[1]),
                            ctypes.c_uint(ours.gids[2])))
        _set_effective_caps(effective)
    except OSError as exc:
        os.write(2, f"guestfence: cannot restore a supervisor thread's identity ({exc.strerror}); aborting\n".encode())
        os.abort()


def _set_groups(groups: frozenset[int]) -> None:
    ordered = sorted(groups)
    _check(_syscall(_NR["setgroups"], ctypes.c_size_t(len(ordered)), (ctypes.c_uint * max(1, len(ordered)))(*ordered)))


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32))


def _effective_caps() -> tuple[int, ...]:
    """This thread's effective capabilities, by number."""
    header = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    _check(_syscall(_NR["capget"], ctypes.byref(header), ctypes.byref(data)))
    return tuple(i * 32 + bit for i in range(2) for bit in range(32) if data[i].effective >> bit & 1)


def _set_effective_caps(capabilities: tuple[int, ...]) -> None:
    """This thread's effective set becomes exactly ``capabilities`` (those permitted)."""
    header = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    _check(_syscall(_NR["capget"], ctypes.byref(header), ctypes.byref(data)))
    wanted = [0, 0]
    for capability in capabilities:
        wanted[capability // 32] |= 1 << (capability % 32)
    for i in range(2):
        data[i].effective = wanted[i] & data[i].permitted
    _check(_syscall(_NR["capset"], ctypes.byref(header), ctypes.byref(data)))


def _check(result: int) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result

