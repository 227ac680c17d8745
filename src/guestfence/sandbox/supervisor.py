"""The notification loop: HANDLERS = {syscall number: handler}, one handler thread per call in flight.

Every trapped call is answered exactly once: with the result of the call
made on the guest's behalf or with an errno, never by letting the kernel
run it (which would look the fd and the address up again, after the
guest's other threads had a chance to swap them). INET sockets are
decided here; unix, netlink and other sockets by ``local``. A handler that
fails unexpectedly answers the deny errno: fail closed, never leave a
guest waiting.

Per call: pidfd_getfd pins the guest's socket (phase 0), materialize
copies the arguments (1), verdict decides (2), NOTIF_ID_VALID proves the
pid we read from was still the caller (so a recycled pid cannot feed us
another process's memory), and onbehalf acts on the pinned copy (3).

Threads: receivers block in NOTIF_RECV without the GIL, each call is
handled on the thread that received it, and the last idle receiver starts
another before it handles anything, so a connect blocked for minutes on a
slow peer never delays another thread's send (up to ``max_threads`` calls
in flight). Threads beyond ``MAX_IDLE`` idle ones exit. Each thread drops
every effective capability but CAP_SYS_PTRACE (pidfd_getfd and
process_vm_readv on a guest of another uid need it), so a root supervisor
lends the guest nothing in the calls it makes for it (``identity`` raises
CAP_SETUID/CAP_SETGID only for the moment it takes on or gives back a
guest's ids, and makes unix and netlink calls with none).

The loop ends when the kernel reports the listener orphaned (no process
uses the filter any more) or the listener is closed.
"""

from __future__ import annotations

import errno
import os
import select
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import final

import seccomp

from guestfence.policy.model import Context, Policy, Symbol
from guestfence.sandbox import kernel, local, onbehalf
from guestfence.sandbox.materialize import (
    MAX_MMSG,
    MMSGHDR_SIZE,
    MSGHDR,
    GuestFault,
    Message,
    as_int32,
    mmsg_headers,
    parse_sockaddr,
    payload_length,
    read_bytes,
    read_message,
    read_messages,
    read_sockaddr,
    sockaddr_length,
)
from guestfence.sandbox.onbehalf import Outcome
from guestfence.sandbox.verdict import SocketKind, Verdict, verdict

MAX_IDLE = 4
MAX_CACHED_VERDICTS = 4096
INITIAL_THREADS = 2


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Denial:
    """One refused attempt, as logged: who, which call, where, and what decided."""

    pid: int
    syscall: str
    protocol: str
    destination: str
    decided_by: str


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    policy: Policy
    context: Context
    deny_errno: int = errno.ECONNREFUSED
    on_denied: Callable[[Denial], None] | None = None
    max_threads: int = 256


class _Call:
    """One trapped call: its notification, and access to the caller's fds and memory."""

    __slots__ = ("notif", "pidfds", "pid")

    def __init__(self, notif: kernel.Notification, pidfds: dict[int, int]) -> None:
        self.notif = notif
        self.pidfds = pidfds
        self.pid = notif.pid

    def read(self, address: int, length: int) -> bytes:
        return kernel.read_memory(self.pid, address, length)

    def read_many(self, pieces: Sequence[tuple[int, int]]) -> list[bytes]:
        return kernel.read_memory_many(self.pid, pieces)

    def take_socket(self, fd_arg: int) -> tuple[int, SocketKind]:
        """Our pinned copy of the guest's ``fd_arg`` and what it is. GuestFault(EBADF/ENOTSOCK)."""
        target = fd_arg & 0xFFFFFFFF
        if target & 0x80000000:
            raise GuestFault(errno.EBADF)
        fd = self._getfd(target)
        try:
            domain, sock_type, protocol = kernel.socket_kind(fd)
        except OSError as exc:
            os.close(fd)
            raise GuestFault(exc.errno or errno.ENOTSOCK) from None
        return fd, SocketKind(domain=domain, type=sock_type, protocol=protocol)

    def _getfd(self, target: int) -> int:
        for attempt in range(2):
            pidfd = self.pidfds.get(self.pid)
            if pidfd is None:
                try:
                    pidfd = self.pidfds[self.pid] = kernel.pidfd_open(self.pid)
                except OSError:
                    raise GuestFault(errno.ESRCH) from None
            try:
                return kernel.pidfd_getfd(pidfd, target)
            except OSError as exc:
                if exc.errno == errno.ESRCH and attempt == 0:
                    os.close(self.pidfds.pop(self.pid))  # a dead thread whose tid came back
                    continue
                raise GuestFault(exc.errno or errno.EBADF) from None
        raise GuestFault(errno.ESRCH)


class Supervisor:
    """Serves one listener until no process uses its filter any more."""

    def __init__(self, listener: int, settings: Settings) -> None:
        self.listener = listener
        self.settings = settings
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0
        self._privileged = os.geteuid() == 0
        self._verdicts: dict[tuple[SocketKind, bytes, bool], Verdict] = {}
        self._cacheable = Symbol.HOST not in settings.policy.symbols()
        self.local = local.Local(settings.policy, settings.deny_errno, self._report_local)

    def start(self) -> None:
        kernel.set_sync_wakeup(self.listener)
        for _ in range(INITIAL_THREADS):
            self._spawn()

    def _spawn(self) -> None:
        with self._lock:
            self._idle += 1
            self._threads += 1
        threading.Thread(target=self._serve, name="guestfence-supervisor", daemon=True).start()

    def _serve(self) -> None:
        if self._privileged:
            kernel.keep_only_effective(kernel.CAP_SYS_PTRACE)
        pidfds: dict[int, int] = {}
        try:
            while self._serve_one(pidfds):
                pass
        finally:
            for pidfd in pidfds.values():
                os.close(pidfd)
            with self._lock:
                self._idle -= 1
                self._threads -= 1
                last = self._threads == 0
            if last:
                os.close(self.listener)

    def _serve_one(self, pidfds: dict[int, int]) -> bool:
        try:
            notif = kernel.receive(self.listener)
        except OSError as exc:
            return exc.errno in (errno.EINTR, errno.ENOENT) and not self._orphaned()
        with self._lock:
            self._idle -= 1
            spare = self._idle == 0 and self._threads < self.settings.max_threads
        if spare:
            self._spawn()
        outcome = self._handle(notif, pidfds)
        try:
            kernel.respond(self.listener, notif.id, value=outcome.value, error=outcome.error)
        except OSError:
            return False
        with self._lock:
            if self._idle >= MAX_IDLE:
                return False
            self._idle += 1
        return True

    def _orphaned(self) -> bool:
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        return any(ev & (select.POLLHUP | select.POLLNVAL | select.POLLERR) for _, ev in poller.poll(0))

    def _handle(self, notif: kernel.Notification, pidfds: dict[int, int]) -> Outcome:
        handler = HANDLERS.get(notif.nr)
        if handler is None:
            return Outcome(error=errno.ENOSYS)
        call = _Call(notif, pidfds)
        try:
            return handler(self, call)
        except GuestFault as fault:
            return Outcome(error=fault.errno)
        except Exception as exc:  # a bug must not leave the guest waiting or let it through
            print(f"guestfence: supervisor error on {SYSCALL_NAMES[notif.nr]}: {exc!r}", file=sys.stderr)
            return Outcome(error=self.settings.deny_errno)

    def allows(self, call: _Call, fd: int, kind: SocketKind, name: bytes | None, *, is_connect: bool) -> bool:
        """Whether the call may go on; logs the denial when not.

        A name on a connected stream socket is no destination: TCP ignores
        it (only an unconnected fast-open send connects to it). Verdicts are
        remembered per (socket kind, sockaddr bytes) unless the policy names
        ``@host``, whose answer can change from one call to the next: names
        were resolved at start, so nothing else can.
        """
        if name is None or (kind.is_stream and not is_connect and kernel.is_connected(fd)):
            return True
        key = (kind, name, is_connect)
        result = self._verdicts.get(key)
        if result is None:
            destination = parse_sockaddr(name, domain=kind.domain, is_connect=is_connect)
            if destination is None:
                return True  # no address the kernel will use: it refuses the call or uses the peer
            result = verdict(self.settings.policy, self.settings.context, kind, destination)
            if self._cacheable:
                if len(self._verdicts) >= MAX_CACHED_VERDICTS:
                    self._verdicts.clear()
                self._verdicts[key] = result
        if not result.allowed and self.settings.on_denied is not None:
            self.settings.on_denied(Denial(
                pid=call.pid,
                syscall=SYSCALL_NAMES[call.notif.nr],
                protocol=result.flow.proto.value if result.flow else str(kind.protocol),
                destination=result.destination,
                decided_by=result.decided_by,
            ))
        return result.allowed

    def caller(self, call: _Call) -> local.Caller:
        return local.Caller(tid=call.pid, syscall=SYSCALL_NAMES[call.notif.nr],
                            still_waiting=lambda: self.still_waiting(call))

    def _report_local(self, caller: local.Caller, protocol: str, destination: str, decided_by: str) -> None:
        if self.settings.on_denied is not None:
            self.settings.on_denied(Denial(pid=caller.tid, syscall=caller.syscall, protocol=protocol,
                                           destination=destination, decided_by=decided_by))

    def still_waiting(self, call: _Call) -> None:
        """Everything we read came from the caller: it has not left the call (pid not recycled)."""
        if not kernel.id_valid(self.listener, call.notif.id):
            raise GuestFault(errno.ESRCH)


def handle_connect(sup: Supervisor, call: _Call) -> Outcome:
    fd_arg, address, length = call.notif.args[:3]
    fd, kind = call.take_socket(fd_arg)
    try:
        name = read_sockaddr(call.read, address, length)
        if not kind.is_inet:
            return sup.local.connect(sup.caller(call), fd, kind, name)
        sup.still_waiting(call)
        if not sup.allows(call, fd, kind, name, is_connect=True):
            return Outcome(error=sup.settings.deny_errno)
        return onbehalf.connect(fd, name)
    finally:
        os.close(fd)


def handle_sendto(sup: Supervisor, call: _Call) -> Outcome:
    fd_arg, buffer, length, flags, address, address_length = call.notif.args
    fd, kind = call.take_socket(fd_arg)
    try:
        pieces = ((address, sockaddr_length(address_length)), (buffer, payload_length(length, stream=kind.is_stream)))
        try:
            name, payload = call.read_many(pieces)
        except OSError as exc:
            raise GuestFault(exc.errno or errno.EFAULT) from None
        if not kind.is_inet:
            message = Message(name=name, payload=payload, control=b"")
            return sup.local.send(sup.caller(call), fd, kind, [message], as_int32(flags), many=False)
        sup.still_waiting(call)
        if not sup.allows(call, fd, kind, name, is_connect=False):
            return Outcome(error=sup.settings.deny_errno)
        return onbehalf.sendto(fd, payload, as_int32(flags), name)
    finally:
        os.close(fd)


def handle_sendmsg(sup: Supervisor, call: _Call) -> Outcome:
    fd_arg, header, flags = call.notif.args[:3]
    fd, kind = call.take_socket(fd_arg)
    try:
        message = read_message(call.read, read_bytes(call.read, header, MSGHDR.size), stream=kind.is_stream)
        if not kind.is_inet:
            return sup.local.send(sup.caller(call), fd, kind, [message], as_int32(flags), many=False)
        sup.still_waiting(call)
        if not sup.allows(call, fd, kind, message.name, is_connect=False):
            return Outcome(error=sup.settings.deny_errno)
        return onbehalf.sendmsg(fd, message, as_int32(flags))
    finally:
        os.close(fd)


def handle_sendmmsg(sup: Supervisor, call: _Call) -> Outcome:
    """Every entry is decided; the ones before the first refused (or
    unreadable) entry are sent, and the count is returned, as the kernel
    counts: an error only when nothing was sent."""
    fd_arg, vector, vlen, flags = call.notif.args[:4]
    count = min(vlen & 0xFFFFFFFF, MAX_MMSG)
    if count == 0:
        return Outcome()
    fd, kind = call.take_socket(fd_arg)
    try:
        headers = mmsg_headers(read_bytes(call.read, vector, count * MMSGHDR_SIZE))
        read, fault = read_messages(call.read, call.read_many, headers, stream=kind.is_stream)
        if kind.is_inet:
            stop = Outcome(error=fault.errno) if fault else Outcome()
            messages: list[Message] = []
            for message in read:
                if not sup.allows(call, fd, kind, message.name, is_connect=False):
                    stop = Outcome(error=sup.settings.deny_errno)
                    break
                messages.append(message)
            sup.still_waiting(call)
            if not messages:
                return stop
            sent = onbehalf.sendmmsg(fd, messages, as_int32(flags))
        else:
            sent = sup.local.send(sup.caller(call), fd, kind, read, as_int32(flags), many=True, fault=fault)
            if not sent.lengths:
                return sent
        if sent.error:
            return sent
        try:
            kernel.write_memory(call.pid, [
                (vector + i * MMSGHDR_SIZE + MSGHDR.size, n.to_bytes(4, sys.byteorder))
                for i, n in enumerate(sent.lengths)
            ])
        except OSError:
            pass  # the kernel, too, reports the count it sent when it cannot store msg_len
        return Outcome(value=sent.value)
    finally:
        os.close(fd)


def _nr(name: str) -> int:
    return seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)


HANDLERS: dict[int, Callable[[Supervisor, _Call], Outcome]] = {
    _nr("connect"): handle_connect,
    _nr("sendto"): handle_sendto,
    _nr("sendmsg"): handle_sendmsg,
    _nr("sendmmsg"): handle_sendmmsg,
}
SYSCALL_NAMES = {_nr(name): name for name in ("connect", "sendto", "sendmsg", "sendmmsg")}
