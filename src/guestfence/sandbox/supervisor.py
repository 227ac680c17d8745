"""The notification loop: HANDLERS = {syscall number: handler}, a pool of handler threads.

Every trapped call is answered exactly once: with the result of the call
made on the guest's behalf, with an errno, or -- for sockets that are not
INET (AF_UNIX, AF_NETLINK), which name no network destination -- by
letting the kernel run it. A handler that fails unexpectedly answers the
deny errno: fail closed, never leave a guest waiting.

Per call: pidfd_getfd pins the guest's socket (phase 0), materialize
copies the arguments (1), verdict decides (2), NOTIF_ID_VALID proves the
pid we read from was still the caller (so a recycled pid cannot feed us
another process's memory), and onbehalf acts on the pinned copy (3) with
exactly the name decided: NULL when the decision was "the connected peer",
and for a TCP send without MSG_FASTOPEN (TCP ignores its name).

Which fd table: with PIDFD_THREAD (Linux 6.9) the pidfd names the calling
thread; without it (Debian 12's 6.1), the pidfd names its thread-group
leader (the caller itself, or the tgid in /proc/TID/status), whose fd N is the caller's fd N
because the filter refuses everything that gives a thread an fd table of
its own (``filter``). Either way the pidfd is opened and closed per call:
no cache to grow, nothing kept for a thread that is gone. Settings
``thread_pidfds`` (or ``GUESTFENCE_SANDBOX_LEADER_PIDFDS=1``, for tests)
forces the leader path on a kernel that has both.

The pool: each thread is idle (blocked in NOTIF_RECV without the GIL) or
busy (handling the call it received, on itself). A thread that takes a
call and leaves no idle thread behind starts one first, so a connect
blocked for minutes on a slow peer never delays another thread's send (up
to ``max_threads`` threads); if the thread cannot be started, it handles
its call anyway (nothing is lost; calls are then served by the threads
there are). A thread that finishes a call while ``MAX_IDLE`` others are
idle exits. Each thread drops every effective capability but
CAP_SYS_PTRACE (pidfd_getfd and process_vm_readv on a guest of another
uid need it) and CAP_KILL (the guest's SIGPIPE), so a root supervisor
lends the guest nothing in the calls it makes for it.

Memory: one call holds at most one batch of copied arguments (see
``materialize``), so the supervisor needs a small constant per call in
flight, at most ``max_threads`` of them.

The loop ends when the kernel reports the listener orphaned (no process
uses the filter any more) or the listener is closed.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import final

import seccomp

from guestfence.policy.model import Context, Policy, Symbol
from guestfence.sandbox import kernel, onbehalf
from guestfence.sandbox.materialize import (
    MAX_MMSG,
    MMSGHDR_SIZE,
    MSGHDR,
    GuestFault,
    Message,
    NoDestination,
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
MSG_FASTOPEN = 0x20000000
HEADERS_PER_READ = 64
"""sendmmsg entries whose struct mmsghdr are copied at a time (4 KiB)."""
FORCE_LEADER_PIDFDS = "GUESTFENCE_SANDBOX_LEADER_PIDFDS"
CONTINUE = Outcome(value=-1)
"""Sentinel: let the kernel run the call (non-INET sockets only)."""


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
    thread_pidfds: bool | None = None
    """Open the calling thread's pidfd (PIDFD_THREAD) rather than its leader's;
    None: when the kernel can, unless GUESTFENCE_SANDBOX_LEADER_PIDFDS=1."""


class _Call:
    """One trapped call: its notification, and access to the caller's fds and memory."""

    __slots__ = ("notif", "pid", "thread_pidfds", "sigpipe", "_tgid")

    def __init__(self, notif: kernel.Notification, *, thread_pidfds: bool) -> None:
        self.notif = notif
        self.pid = notif.pid
        self.thread_pidfds = thread_pidfds
        self.sigpipe = False
        """Raise SIGPIPE in the caller once answered (see ``raise_sigpipe``)."""
        self._tgid: int | None = None

    @property
    def tgid(self) -> int:
        """The caller's process id (GuestFault(ESRCH) once it is gone)."""
        if self._tgid is None:
            try:
                self._tgid = kernel.thread_group_of(self.pid)
            except (OSError, ValueError):
                raise GuestFault(errno.ESRCH) from None
        return self._tgid

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
        try:
            pidfd = kernel.pidfd_open_thread(self.pid) if self.thread_pidfds else self._leader_pidfd()
        except OSError:
            raise GuestFault(errno.ESRCH) from None
        try:
            return kernel.pidfd_getfd(pidfd, target)
        except OSError as exc:
            raise GuestFault(exc.errno or errno.EBADF) from None
        finally:
            os.close(pidfd)

    def _leader_pidfd(self) -> int:
        """The pidfd of the caller's thread-group leader: the caller's own when
        it is the leader (pidfd_open refuses a non-leader: EINVAL, ENOENT
        since 6.x), else its tgid's, read from /proc."""
        try:
            pidfd = kernel.pidfd_open_process(self.pid)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOENT):
                raise
            return kernel.pidfd_open_process(self.tgid)
        self._tgid = self.pid
        return pidfd

    def raise_sigpipe(self) -> None:
        """What the kernel does on EPIPE without MSG_NOSIGNAL: SIGPIPE to the
        calling thread. Sent just after the answer: a signal arriving while
        the caller still waits would interrupt the wait, losing our answer
        and restarting the call (a second EPIPE, a second signal)."""
        try:
            kernel.tgkill(self.tgid, self.pid, signal.SIGPIPE)
        except (OSError, GuestFault):
            pass  # the thread is gone: nobody to signal


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
        if settings.thread_pidfds is None:
            self.thread_pidfds = kernel.has_thread_pidfds() and os.environ.get(FORCE_LEADER_PIDFDS) != "1"
        else:
            self.thread_pidfds = settings.thread_pidfds

    @property
    def threads(self) -> tuple[int, int]:
        """(handler threads, idle ones)."""
        with self._lock:
            return self._threads, self._idle

    def start(self) -> None:
        kernel.set_sync_wakeup(self.listener)
        for _ in range(INITIAL_THREADS):
            with self._lock:
                self._threads += 1
                self._idle += 1
            if not self._start_thread():
                raise OSError(errno.EAGAIN, "cannot start a sandbox supervisor thread")

    def _start_thread(self) -> bool:
        """Start a thread already counted (idle) in the pool; uncount it if it cannot start."""
        try:
            threading.Thread(target=self._serve, name="guestfence-supervisor", daemon=True).start()
        except RuntimeError:
            with self._lock:
                self._threads -= 1
                self._idle -= 1
            return False
        return True

    def _serve(self) -> None:
        if self._privileged:
            kernel.keep_only_effective(kernel.CAP_SYS_PTRACE, kernel.CAP_KILL)
        idle = True
        try:
            while True:
                try:
                    notif = kernel.receive(self.listener)
                except OSError as exc:
                    if exc.errno in (errno.EINTR, errno.ENOENT) and not self._orphaned():
                        continue
                    return
                with self._lock:
                    self._idle -= 1
                    idle = False
                    spare = self._idle == 0 and self._threads < self.settings.max_threads
                    if spare:
                        self._threads += 1
                        self._idle += 1
                if spare:
                    self._start_thread()  # if it cannot start, this thread still handles its call
                if not self._answer(notif):
                    return
                with self._lock:
                    if self._idle >= MAX_IDLE:
                        return
                    self._idle += 1
                    idle = True
        finally:
            with self._lock:
                self._threads -= 1
                if idle:
                    self._idle -= 1
                last = self._threads == 0
            if last:
                os.close(self.listener)

    def _answer(self, notif: kernel.Notification) -> bool:
        """Handle and answer one call; False when the listener is gone."""
        call = _Call(notif, thread_pidfds=self.thread_pidfds)
        outcome = self._handle(call)
        try:
            if outcome is CONTINUE:
                kernel.respond(self.listener, notif.id, cont=True)
            else:
                kernel.respond(self.listener, notif.id, value=outcome.value, error=outcome.error)
        except OSError:
            return False
        if call.sigpipe:
            call.raise_sigpipe()
        return True

    def _orphaned(self) -> bool:
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        return any(ev & (select.POLLHUP | select.POLLNVAL | select.POLLERR) for _, ev in poller.poll(0))

    def _handle(self, call: _Call) -> Outcome:
        notif = call.notif
        handler = HANDLERS.get(notif.nr)
        if handler is None:
            return Outcome(error=errno.ENOSYS)
        try:
            return handler(self, call)
        except GuestFault as fault:
            return Outcome(error=fault.errno)
        except Exception as exc:  # a bug must not leave the guest waiting or let it through
            print(f"guestfence: supervisor error on {SYSCALL_NAMES[notif.nr]}: {exc!r}", file=sys.stderr)
            return Outcome(error=self.settings.deny_errno)

    def name_to_use(self, call: _Call, kind: SocketKind, name: bytes | None, *, flags: int = 0,
                    is_connect: bool = False) -> bytes | None:
        """The name the call on the guest's behalf passes: exactly what was
        decided. GuestFault(deny errno), logged, when the policy refuses it.

        NULL for "the connected peer" and for a TCP send without
        MSG_FASTOPEN (TCP ignores that name; passing none means no later
        change of the socket's state can make it a destination). Bytes the
        kernel refuses whatever the socket's state are passed as they are,
        for the kernel's own errno. Verdicts are remembered per (socket
        kind, sockaddr bytes) unless the policy names ``@host``, whose
        answer can change from one call to the next: names were resolved
        at start, so nothing else can.
        """
        if name is None or (kind.is_stream and not is_connect and not flags & MSG_FASTOPEN):
            return None
        key = (kind, name, is_connect)
        result = self._verdicts.get(key)
        if result is None:
            destination = parse_sockaddr(name, domain=kind.domain, is_connect=is_connect, stream=kind.is_stream)
            if destination is NoDestination.PEER:
                return None
            if destination is NoDestination.REFUSED:
                return name
            result = verdict(self.settings.policy, self.settings.context, kind, destination)
            if self._cacheable:
                if len(self._verdicts) >= MAX_CACHED_VERDICTS:
                    self._verdicts.clear()
                self._verdicts[key] = result
        if result.allowed:
            return name
        if self.settings.on_denied is not None:
            self.settings.on_denied(Denial(
                pid=call.pid,
                syscall=SYSCALL_NAMES[call.notif.nr],
                protocol=result.flow.proto.value if result.flow else str(kind.protocol),
                destination=result.destination,
                decided_by=result.decided_by,
            ))
        raise GuestFault(self.settings.deny_errno)

    def still_waiting(self, call: _Call) -> None:
        """Everything we read came from the caller: it has not left the call (pid not recycled)."""
        if not kernel.id_valid(self.listener, call.notif.id):
            raise GuestFault(errno.ESRCH)


def handle_connect(sup: Supervisor, call: _Call) -> Outcome:
    fd_arg, address, length = call.notif.args[:3]
    fd, kind = call.take_socket(fd_arg)
    try:
        if not kind.is_inet:
            return CONTINUE
        name = read_sockaddr(call.read, address, length)
        sup.still_waiting(call)
        decided = sup.name_to_use(call, kind, name, is_connect=True)
        assert decided is not None  # a connect's name is never "the peer"
        return onbehalf.connect(fd, decided)
    finally:
        os.close(fd)


def _signalled(call: _Call, outcome: Outcome, flags: int) -> Outcome:
    call.sigpipe = outcome.error == errno.EPIPE and not flags & onbehalf.MSG_NOSIGNAL
    return outcome


def handle_sendto(sup: Supervisor, call: _Call) -> Outcome:
    fd_arg, buffer, length, flags, address, address_length = call.notif.args
    fd, kind = call.take_socket(fd_arg)
    try:
        if not kind.is_inet:
            return CONTINUE
        pieces = ((address, sockaddr_length(address_length)), (buffer, payload_length(length, stream=kind.is_stream)))
        try:
            name, payload = call.read_many(pieces)
        except OSError as exc:
            raise GuestFault(exc.errno or errno.EFAULT) from None
        sup.still_waiting(call)
        flags = as_int32(flags)
        decided = sup.name_to_use(call, kind, name, flags=flags)
        return _signalled(call, onbehalf.sendto(fd, payload, flags, decided), flags)
    finally:
        os.close(fd)


def handle_sendmsg(sup: Supervisor, call: _Call) -> Outcome:
    fd_arg, header, flags = call.notif.args[:3]
    fd, kind = call.take_socket(fd_arg)
    try:
        if not kind.is_inet:
            return CONTINUE
        message = read_message(call.read, read_bytes(call.read, header, MSGHDR.size), stream=kind.is_stream)
        sup.still_waiting(call)
        flags = as_int32(flags)
        decided = replace(message, name=sup.name_to_use(call, kind, message.name, flags=flags))
        return _signalled(call, onbehalf.sendmsg(fd, decided, flags), flags)
    finally:
        os.close(fd)


def handle_sendmmsg(sup: Supervisor, call: _Call) -> Outcome:
    """Entries are read, decided and sent in bounded batches; the ones
    before the first refused (or unreadable) entry are sent, and the count
    is returned, as the kernel counts: an error only when nothing was sent.
    A vector that runs into an unmapped page ends the call there; a
    read-only one fails at the first msg_len the kernel could not store."""
    fd_arg, vector, vlen, flags = call.notif.args[:4]
    flags = as_int32(flags)
    count = min(vlen & 0xFFFFFFFF, MAX_MMSG)
    if count == 0:
        return Outcome()
    fd, kind = call.take_socket(fd_arg)
    try:
        if not kind.is_inet:
            return CONTINUE
        sent_total, index = 0, 0
        stop: GuestFault | None = None
        while index < count:
            wanted = min(count - index, HEADERS_PER_READ)
            base = vector + index * MMSGHDR_SIZE
            raw = _read_vector(call, base, wanted)
            headers = mmsg_headers(raw)
            messages, stop = read_messages(call.read, call.read_many, headers, stream=kind.is_stream)
            if stop is None and len(messages) == len(headers) < wanted:
                stop = GuestFault(errno.EFAULT)  # the vector runs into an unmapped page
            decided: list[Message] = []
            for message in messages:
                try:
                    decided.append(replace(message, name=sup.name_to_use(call, kind, message.name, flags=flags)))
                except GuestFault as refused:
                    stop = refused
                    break
            sup.still_waiting(call)
            if not decided:
                break
            sent, fault = _send_batch(call, fd, base, raw, decided, flags)
            sent_total += sent
            if fault is not None or sent < len(decided):
                stop = fault
                break
            if stop is not None:
                break
            index += sent
        if sent_total:
            return Outcome(value=sent_total)
        return Outcome(error=stop.errno) if stop else Outcome()
    finally:
        os.close(fd)


def _send_batch(call: _Call, fd: int, base: int, raw: bytes, messages: Sequence[Message],
                flags: int) -> tuple[int, GuestFault | None]:
    """Send ``messages`` (the entries at ``base``, whose bytes are ``raw``)
    and store each msg_len; (the count the kernel would report, the error
    that ended the call there, if any).

    The kernel stores each msg_len right after sending its entry and stops
    at the first it cannot store, counting it unsent. So we first find how
    many msg_len fields are writable by writing back the values they hold
    (invisible to the guest), and send at most one entry past them.
    """
    fields = [(base + i * MMSGHDR_SIZE + MSGHDR.size, raw[i * MMSGHDR_SIZE + MSGHDR.size:][:4])
              for i in range(len(messages))]
    try:
        writable = kernel.write_memory(call.pid, fields) // 4
    except OSError:
        raise GuestFault(errno.ESRCH) from None
    sent = onbehalf.sendmmsg(fd, messages[:writable + 1], flags)
    if sent.error:
        _signalled(call, sent, flags)
        return 0, GuestFault(sent.error)
    stored = min(sent.value, writable)
    try:
        kernel.write_memory(call.pid, [(address, n.to_bytes(4, sys.byteorder))
                                       for (address, _), n in zip(fields, sent.lengths[:stored])])
    except OSError:
        pass  # the caller was killed meanwhile: nobody reads the lengths
    if sent.value > writable:
        return writable, GuestFault(errno.EFAULT)
    return sent.value, None


def _read_vector(call: _Call, address: int, entries: int) -> bytes:
    """Up to ``entries`` struct mmsghdr at ``address``: all of them, or the
    readable ones before an unmapped page (maybe none)."""
    try:
        return call.read(address, entries * MMSGHDR_SIZE)
    except OSError:
        pass
    readable = b""
    for i in range(entries):
        try:
            readable += call.read(address + i * MMSGHDR_SIZE, MMSGHDR_SIZE)
        except OSError:
            break
    return readable
def _nr(name: str) -> int:
    return seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)


HANDLERS: dict[int, Callable[[Supervisor, _Call], Outcome]] = {
    _nr("connect"): handle_connect,
    _nr("sendto"): handle_sendto,
    _nr("sendmsg"): handle_sendmsg,
    _nr("sendmmsg"): handle_sendmmsg,
}
SYSCALL_NAMES = {_nr(name): name for name in ("connect", "sendto", "sendmsg", "sendmmsg")}
