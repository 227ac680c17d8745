"""The notification loop: HANDLERS = {syscall number: handler}, a pool of handler threads.

The common case never reaches Python: handler threads loop in C
(``fastpath``: fastpath.c), which answers connect, sendto and sendmsg on
INET sockets to destinations this module has already decided as allowed
(``name_to_use`` hands each allowed verdict to C), and hands every other
notification here, before anything is executed. What follows is this
module's own handling, which is what C reproduces for those calls (C
reads the arguments before it pins the socket, and a pidfd it kept from
before the notification proves the read without NOTIF_ID_VALID:
fastpath.c says why).

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
another process's memory), and onbehalf acts on the pinned copy (3) with
exactly the name decided: NULL when the decision was "the connected peer",
and for a TCP send without MSG_FASTOPEN (TCP ignores its name). The one
result written into the guest's memory, sendmmsg's msg_len, goes through
``kernel.GuestMemory`` (fds that hold the caller's mm, opened before that
proof), never by pid number: the send may wait for minutes, and a write,
unlike a read, cannot be checked afterwards.

Which fd table: with PIDFD_THREAD (Linux 6.9) the pidfd names the calling
thread; without it (Debian 12's 6.1), the pidfd names its thread-group
leader (the caller itself, or the tgid in /proc/TID/status), whose fd N is the caller's fd N
because the filter refuses everything that gives a thread an fd table of
its own (``filter``). Here the pidfd is opened and closed per call; C
keeps a few (fastpath.c says why a kept one cannot name another task). Settings
``thread_pidfds`` (or ``GUESTFENCE_SANDBOX_LEADER_PIDFDS=1``, for tests)
forces the leader path on a kernel that has both.

The pool lives in C (fastpath.c says how and why): one thread at a time
waits in NOTIF_RECV, the other idle ones wait for its turn; before
anything that may block -- a blocking call, or handing a call to Python --
the receiving thread passes the turn on, or returns ``SPAWN`` for
``_serve`` to start a thread first (up to ``max_threads``), so a connect
blocked for minutes on a slow peer never delays another thread's send; if
the thread cannot be started, it handles its call anyway (nothing is
lost). A thread that finishes a call while four others are idle exits.

Each thread drops every effective capability but CAP_SYS_PTRACE
(pidfd_getfd and process_vm_readv on a guest of another uid need it) and
CAP_KILL (the guest's SIGPIPE), so a root supervisor
lends the guest nothing in the calls it makes for it (``identity`` raises
CAP_SETUID/CAP_SETGID only for the moment it takes on or gives back a
guest's ids, and makes unix and netlink calls with none; ``GuestMemory``
and fastpath.c raise CAP_DAC_OVERRIDE only to open a dumpable guest's
/proc/TID/mem, which is its uid's, mode 0600).

Memory: one call holds at most one batch of copied arguments (see
``materialize``), and each thread has C's buffers (about 600 KiB and
optmem_max), so the supervisor needs a small constant per thread, at most
``max_threads`` of them.

The loop ends when the kernel reports the listener orphaned (no process
uses the filter any more) or the listener is closed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import final

import seccomp

from guestfence.policy.model import Context, Policy, Symbol
from guestfence.sandbox import fastpath, kernel, local, onbehalf
from guestfence.sandbox.materialize import (
    MAX_CONTROL,
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
    read_messages,
    read_one_message,
    read_sockaddr,
    sockaddr_length,
)
from guestfence.sandbox.onbehalf import Outcome
from guestfence.sandbox.verdict import SocketKind, Verdict, executed_name, socket_kind, verdict

MAX_CACHED_VERDICTS = 4096
INITIAL_THREADS = 2
MSG_FASTOPEN = 0x20000000
HEADERS_PER_READ = 64
"""sendmmsg entries whose struct mmsghdr are copied at a time (4 KiB)."""
FORCE_LEADER_PIDFDS = "GUESTFENCE_SANDBOX_LEADER_PIDFDS"
FORCE_MAPS_TEXT = "GUESTFENCE_SANDBOX_MAPS_TEXT"
"""=1: read /proc/TID/maps as text, as on Linux < 6.11, where PROCMAP_QUERY would do (for tests)."""


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

    __slots__ = ("notif", "pid", "thread_pidfds", "sigpipe", "_tgid", "_signal_pidfd")

    def __init__(self, notif: kernel.Notification, *, thread_pidfds: bool) -> None:
        self.notif = notif
        self.pid = notif.pid
        self.thread_pidfds = thread_pidfds
        self.sigpipe = False
        """Raise SIGPIPE in the caller once answered (see ``aim_sigpipe``)."""
        self._tgid: int | None = None
        self._signal_pidfd: int | None = None

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
        return fd, socket_kind(domain, sock_type, protocol)

    def take_fd(self, target: int) -> int:
        """Our own descriptor for the open file behind the caller's fd ``target`` (GuestFault(EBADF))."""
        if target < 0:
            raise GuestFault(errno.EBADF)
        return self._getfd(target)

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

    def aim_sigpipe(self, listener: int) -> None:
        """Before the answer: who ``raise_sigpipe`` will signal, proven the
        caller while it still waits in the call (else no signal at all).

        What the kernel does on EPIPE without MSG_NOSIGNAL is SIGPIPE to the
        calling thread; we send it just after the answer (a signal arriving
        while the caller still waits would interrupt the wait, losing our
        answer and restarting the call). The send may have waited for
        minutes, and a caller killed meanwhile may have left its number to
        a process outside the sandbox, which a signal by number (tgkill)
        would kill (tests/sandbox/test_sandbox_write_back.py). So the
        signal goes by a PIDFD_THREAD pidfd opened now, which names the
        caller's thread whatever takes its number later (a thread-directed
        signal, Linux 6.9). Without PIDFD_THREAD (Linux < 6.9) it goes by
        tgkill, with the thread group read now, and only once the caller
        got the answer: alive a moment before.
        """
        try:
            if self.thread_pidfds:
                self._signal_pidfd = kernel.pidfd_open_thread(self.pid)
            else:
                self._tgid = None
                _ = self.tgid
            self.sigpipe = kernel.id_valid(listener, self.notif.id)
        except (OSError, GuestFault):
            self.sigpipe = False

    def raise_sigpipe(self, answered: bool) -> None:
        """SIGPIPE to the caller aimed at (``aim_sigpipe``), if it got the answer."""
        try:
            if answered and self.sigpipe:
                if self._signal_pidfd is not None:
                    signal.pidfd_send_signal(self._signal_pidfd, signal.SIGPIPE)
                else:
                    kernel.tgkill(self.tgid, self.pid, signal.SIGPIPE)
        except (OSError, GuestFault):
            pass  # the thread is gone: nobody to signal
        finally:
            if self._signal_pidfd is not None:
                os.close(self._signal_pidfd)
                self._signal_pidfd = None


class Supervisor:
    """Serves one listener until no process uses its filter any more."""

    def __init__(self, listener: int, settings: Settings) -> None:
        self.listener = listener
        self.settings = settings
        self._privileged = os.geteuid() == 0
        self._verdicts: dict[tuple[int, int, int, bytes, bool], Verdict] = {}
        self._cacheable = Symbol.HOST not in settings.policy.symbols()
        self.local = local.Local(settings.policy, settings.deny_errno, self._report_local)
        if settings.thread_pidfds is None:
            self.thread_pidfds = kernel.has_thread_pidfds() and os.environ.get(FORCE_LEADER_PIDFDS) != "1"
        else:
            self.thread_pidfds = settings.thread_pidfds
        self.procmap_query = kernel.has_procmap_query() and os.environ.get(FORCE_MAPS_TEXT) != "1"
        self.fast = fastpath.FastPath(listener, thread_pidfds=self.thread_pidfds, procmap_query=self.procmap_query,
                                      max_control=MAX_CONTROL, max_threads=settings.max_threads,
                                      threads=INITIAL_THREADS)

    def start(self) -> None:
        kernel.set_sync_wakeup(self.listener)
        for _ in range(INITIAL_THREADS):
            if not self._start_thread():
                raise OSError(errno.EAGAIN, "cannot start a sandbox supervisor thread")

    def _start_thread(self) -> bool:
        """Start a thread already counted (idle) in the pool; uncount it if it cannot start."""
        try:
            threading.Thread(target=self._serve, name="guestfence-supervisor", daemon=True).start()
        except RuntimeError:
            self.fast.unspawn()
            return False
        return True

    def _serve(self) -> None:
        """One handler thread: C's loop, and what C hands back (fastpath's return values)."""
        if self._privileged:
            kernel.keep_only_effective(kernel.CAP_SYS_PTRACE, kernel.CAP_KILL)
        fast = self.fast
        scratch = fast.thread_scratch()
        buffer = ctypes.create_string_buffer(kernel.NOTIF.size)
        back = False
        try:
            while True:
                step = fast.serve(scratch, buffer, back)
                back = True
                if step == fastpath.SPAWN:
                    self._start_thread()  # if it cannot start, this thread still handles its call
                    step = fast.handle(scratch, buffer)
                if step == fastpath.PYTHON:
                    self._answer(kernel.parse_notification(buffer))
                elif step == fastpath.SIGPIPE:  # C made the call; it failed with EPIPE
                    call = _Call(kernel.parse_notification(buffer), thread_pidfds=self.thread_pidfds)
                    call.sigpipe = True
                    self._respond(call, Outcome(error=errno.EPIPE))
                elif step in (fastpath.EXIT, fastpath.LAST):
                    if step == fastpath.LAST:
                        os.close(self.listener)
                        fast.free_scratch(scratch)
                        scratch = None
                        fast.free()
                    return
        finally:
            fast.free_scratch(scratch)

    def _answer(self, notif: kernel.Notification) -> None:
        """Handle and answer one call."""
        call = _Call(notif, thread_pidfds=self.thread_pidfds)
        self._respond(call, self._handle(call))

    def _respond(self, call: _Call, outcome: Outcome) -> None:
        """Answer ``call`` with ``outcome``, then raise its SIGPIPE if it is owed
        one and got the answer (if the listener is gone, the next NOTIF_RECV
        ends the thread)."""
        owed = call.sigpipe
        if owed:
            call.aim_sigpipe(self.listener)
        try:
            answered = kernel.respond(self.listener, call.notif.id, value=outcome.value, error=outcome.error)
        except OSError:
            answered = False
        if owed:
            call.raise_sigpipe(answered)

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
        raw, name = name, executed_name(name)  # an unspecified destination goes to the loopback it is decided as
        key = (kind.domain, kind.type, kind.protocol, name, is_connect)  # hashed in C, unlike SocketKind
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
            if self._cacheable:  # C answers the next call to it without Python
                self.fast.allow(kind, connect=is_connect, raw=raw, executed=name)
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

    def caller(self, call: _Call) -> local.Caller:
        return local.Caller(tid=call.pid, syscall=SYSCALL_NAMES[call.notif.nr],
                            still_waiting=lambda: self.still_waiting(call), take_fd=call.take_fd)

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
        pieces = ((address, sockaddr_length(address_length)), (buffer, payload_length(length, stream=kind.is_stream)))
        try:
            name, payload = call.read_many(pieces)
        except OSError as exc:
            raise GuestFault(exc.errno or errno.EFAULT) from None
        flags = as_int32(flags)
        if not kind.is_inet:
            message = Message(name=name, payload=payload, control=b"")
            return _signalled(call, sup.local.send(sup.caller(call), fd, kind, [message], flags, many=False), flags)
        sup.still_waiting(call)
        decided = sup.name_to_use(call, kind, name, flags=flags)
        return _signalled(call, onbehalf.sendto(fd, payload, flags, decided), flags)
    finally:
        os.close(fd)


def handle_sendmsg(sup: Supervisor, call: _Call) -> Outcome:
    fd_arg, header, flags = call.notif.args[:3]
    fd, kind = call.take_socket(fd_arg)
    try:
        message = read_one_message(call.read, call.read_many, read_bytes(call.read, header, MSGHDR.size),
                                   stream=kind.is_stream)
        flags = as_int32(flags)
        if not kind.is_inet:
            return _signalled(call, sup.local.send(sup.caller(call), fd, kind, [message], flags, many=False), flags)
        sup.still_waiting(call)
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
        memory = kernel.GuestMemory(call.pid, query=sup.procmap_query)  # proven the caller's by still_waiting
    except OSError as exc:  # not ours to write (a non-dumpable guest, no CAP_SYS_PTRACE), or gone
        os.close(fd)
        raise GuestFault(errno.EPERM if exc.errno in (errno.EACCES, errno.EPERM) else errno.ESRCH) from None
    try:
        send = onbehalf.sendmmsg
        if not kind.is_inet:  # local decides and sends each batch
            caller = sup.caller(call)

            def send(fd: int, messages: Sequence[Message], flags: int) -> Outcome:
                return sup.local.send(caller, fd, kind, messages, flags, many=True)
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
            decided: list[Message] = [] if kind.is_inet else messages
            for message in messages if kind.is_inet else ():
                try:
                    decided.append(replace(message, name=sup.name_to_use(call, kind, message.name, flags=flags)))
                except GuestFault as refused:
                    stop = refused
                    break
            sup.still_waiting(call)
            if not decided:
                break
            sent, fault = _send_batch(call, memory, fd, base, raw, decided, flags, send)
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
        memory.close()
        os.close(fd)


def _send_batch(call: _Call, memory: kernel.GuestMemory, fd: int, base: int, raw: bytes,
                messages: Sequence[Message], flags: int,
                send: Callable[[int, Sequence[Message], int], Outcome]) -> tuple[int, GuestFault | None]:
    """Send ``messages`` (the entries at ``base``, whose bytes are ``raw``)
    and store each msg_len; (the count the kernel would report, the error
    that ended the call there, if any).

    The kernel stores each msg_len right after sending its entry and stops
    at the first it cannot store, counting it unsent. So we first find how
    many msg_len fields the caller could store into (``memory.storable``),
    and send at most one entry past them. The lengths are written through
    ``memory``, which holds the caller's mm: the send may wait for minutes,
    and a caller killed meanwhile may have left its number to another
    process, outside the sandbox, which a write by number would reach.
    ``send`` is onbehalf.sendmmsg, or local's for a non-INET socket (which
    decides each entry and answers the deny errno when it sends none).
    """
    fields = [(base + i * MMSGHDR_SIZE + MSGHDR.size, raw[i * MMSGHDR_SIZE + MSGHDR.size:][:4])
              for i in range(len(messages))]
    writable = memory.storable(fields)
    sent = send(fd, messages[:writable + 1], flags)
    if sent.error:
        _signalled(call, sent, flags)
        return 0, GuestFault(sent.error)
    stored = min(sent.value, writable)
    memory.write([(address, n.to_bytes(4, sys.byteorder))
                  for (address, _), n in zip(fields, sent.lengths[:stored])])  # nothing, once the caller is gone
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
