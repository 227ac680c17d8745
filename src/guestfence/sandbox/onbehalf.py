"""The only code that connects or sends for the guest: on our pinned duplicate of its socket.

Phase 3 of 3 (materialize -> verdict -> on-behalf). The duplicate (taken
with pidfd_getfd) shares the guest's open file description, so O_NONBLOCK,
socket options, the bound address and the connection state are the
guest's own; the bytes are the ones the verdict saw. Each function returns
the kernel's result as an ``Outcome``, errno included, so the guest gets
exactly what the same call would have given it bare (EINPROGRESS for a
non-blocking connect, EAGAIN, EMSGSIZE, a partial sendmmsg count...).

The name passed is exactly the one decided, or NULL when the decision was
"the connected peer" (or a TCP send, which takes no name without
MSG_FASTOPEN): nothing the guest does to the socket meanwhile
(connect(AF_UNSPEC), a fast-open flag) can make the kernel read a
destination from bytes that were not decided as one.

Flags: MSG_ZEROCOPY is stripped (the kernel would send our buffer by
reference after we have freed and reused it: other calls' data, our heap),
and MSG_NOSIGNAL is always added, so an EPIPE never kills the supervisor's
process; the guest's own SIGPIPE is raised by ``supervisor``.

Why acting for the guest gains it nothing: the calls take no path (only
INET sockets come here; AF_UNIX, whose connect resolves paths and whose
messages carry the sender's credentials, is never sent on its behalf),
ephemeral ports are picked without a privilege check, netfilter's owner
match and cgroup hooks look at the socket (created by the guest), not at
us, and the supervisor's handler threads keep no effective capability but
CAP_SYS_PTRACE and CAP_KILL (see ``supervisor``), so control messages that need
CAP_NET_ADMIN/CAP_NET_RAW (SO_MARK, SO_PRIORITY > 6, IPv6 hop-by-hop
options) fail as they would for an unprivileged guest.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import final

from guestfence.sandbox.materialize import Message

_libc = ctypes.CDLL(None, use_errno=True)
_connect = _libc.connect
_connect.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
_sendto = _libc.sendto
_sendto.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
_sendto.restype = ctypes.c_ssize_t
_sendmsg = _libc.sendmsg
_sendmsg.restype = ctypes.c_ssize_t
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)


class _IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_char_p), ("len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    _fields_ = (
        ("name", ctypes.c_char_p), ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(_IoVec)), ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_char_p), ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    )


class _MMsgHdr(ctypes.Structure):
    _fields_ = (("hdr", _MsgHdr), ("len", ctypes.c_uint))


_sendmsg.argtypes = (ctypes.c_int, ctypes.POINTER(_MsgHdr), ctypes.c_int)

MSG_NOSIGNAL = 0x4000
MSG_ZEROCOPY = 0x4000000


def _own_flags(flags: int) -> int:
    """The guest's send flags, minus what would lend it our memory or our signal disposition."""
    return (flags & ~MSG_ZEROCOPY) | MSG_NOSIGNAL


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """The call's return value, or ``error`` (an errno) when it failed."""

    value: int = 0
    error: int = 0
    lengths: tuple[int, ...] = ()
    """sendmmsg only: the msg_len the kernel wrote for each message sent."""


def connect(fd: int, raw: bytes) -> Outcome:
    if _connect(fd, raw, len(raw)) == 0:
        return Outcome()
    return Outcome(error=ctypes.get_errno())


def sendto(fd: int, payload: bytes, flags: int, raw: bytes | None) -> Outcome:
    sent = _sendto(fd, payload, len(payload), _own_flags(flags), raw, 0 if raw is None else len(raw))
    if sent < 0:
        return Outcome(error=ctypes.get_errno())
    return Outcome(value=sent)


def sendmsg(fd: int, message: Message, flags: int) -> Outcome:
    keep: list[object] = []
    sent = _sendmsg(fd, ctypes.byref(_fill(_MsgHdr(), message, keep)), _own_flags(flags))
    if sent < 0:
        return Outcome(error=ctypes.get_errno())
    return Outcome(value=sent)


def sendmmsg(fd: int, messages: Sequence[Message], flags: int) -> Outcome:
    vector = (_MMsgHdr * len(messages))()
    keep: list[object] = []
    for entry, message in zip(vector, messages):
        _fill(entry.hdr, message, keep)
    count = _sendmmsg(fd, vector, len(messages), _own_flags(flags))
    if count < 0:
        return Outcome(error=ctypes.get_errno())
    return Outcome(value=count, lengths=tuple(vector[i].len for i in range(count)))


def _fill(header: _MsgHdr, message: Message, keep: list[object]) -> _MsgHdr:
    iov = _IoVec(message.payload, len(message.payload))
    keep.append(iov)
    header.iov = ctypes.pointer(iov)
    header.iovlen = 1
    if message.name is not None:
        header.name = message.name
        header.namelen = len(message.name)
    if message.control:
        header.control = message.control
        header.controllen = len(message.control)
    return header
