"""Sandbox(policy).popen(argv) / .run(argv): a process whose every network destination the policy decides.

The child is started through ``guestfence-launch`` (launcher.c, built by
``make install`` next to this module), which loads the filter compiled
here, drops capabilities and execs the command, keeping the pid; its
listener is copied here with pidfd_getfd, and a ``Supervisor`` serves it on
daemon threads until no process of the sandbox is left. The Popen object
returned is the command's own process: its pid, exit status and pipes are
the command's.

Nothing the guest controls reaches the launcher: it starts with an empty
environment, and the command's environment (``env=``, or ours) travels on
the control socket and is handed to the command's exec only, after the
filter; ``cwd=`` is the command's, and a static C program reads nothing
from it. A missing launcher is a HostError (exit 3), never a fallback.

A root command runs without the capabilities that reach the supervisor or
go around the network stack (the list is in launcher.c) unless
``keep_caps=True``. Calling ``popen`` makes this process non-dumpable
(PR_SET_DUMPABLE 0), so that the guest, which usually runs as the same
user, can neither ptrace its supervisor nor copy its files or fds.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from guestfence.errors import HostError, PolicyError
from guestfence.policy.decide import require_gateway
from guestfence.policy.model import Address, Context, Policy
from guestfence.resolve import Resolution, resolve_names
from guestfence.sandbox import fastpath, kernel, route
from guestfence.sandbox.filter import bpf_program, plan_filter
from guestfence.sandbox.supervisor import Denial, Settings, Supervisor
from guestfence.sandbox.verdict import DENY_ERRNOS

HANDSHAKE_TIMEOUT = 30.0
LAUNCHER = Path(__file__).with_name("guestfence-launch")
KEEP_CAPS = 1


class Sandbox:
    """A policy plus how to report: start any number of processes under it.

    ``deny_errno`` is what a refused connect or send returns (ECONNREFUSED,
    EACCES or EPERM); ``on_denied`` is called, on a supervisor thread, with
    each ``Denial``. DNS names in the policy are resolved once, at the first
    start (see ``resolution``); a name that does not resolve is decided
    closed. ``gateways`` are the addresses ``@gateway`` stands for; a policy
    naming ``@gateway`` without them is refused (PolicyError).
    closed. ``keep_caps`` lets a root command keep every capability, and
    with them the means to take the listener from its supervisor and answer
    its own calls: for trusted commands only.
    """

    def __init__(
        self,
        policy: Policy,
        *,
        deny_errno: str = "ECONNREFUSED",
        on_denied: Callable[[Denial], None] | None = None,
        gateways: Iterable[Address] = (),
        keep_caps: bool = False,
    ) -> None:
        if deny_errno not in DENY_ERRNOS:
            raise PolicyError(f"deny errno {deny_errno!r} is not one of {', '.join(DENY_ERRNOS)}")
        self.gateways = frozenset(gateways)
        require_gateway(policy, self.gateways, hint="give the address @gateway stands for with --gateway ADDR, or name it")
        self.policy = policy
        self.deny_errno = deny_errno
        self.on_denied = on_denied
        self.keep_caps = keep_caps
        self._resolution: Resolution | None = None

    @property
    def resolution(self) -> Resolution:
        """The addresses the policy's DNS names resolved to (resolved on first use)."""
        if self._resolution is None:
            self._resolution = resolve_names(self.policy.names())
        return self._resolution

    def popen(self, argv: Sequence[str], **popen_args: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` sandboxed; ``popen_args`` are subprocess.Popen's (stdin, stdout, env, cwd...)."""
        if not argv:
            raise PolicyError("no command to run")
        if not os.access(LAUNCHER, os.X_OK):
            raise HostError(f"the sandbox launcher {LAUNCHER} is missing: build it with 'make install'")
        if not fastpath.LIBRARY.exists():
            raise HostError(f"the sandbox supervisor's {fastpath.LIBRARY} is missing: build it with 'make install'")
        request = _launch_request(popen_args.pop("env", None), keep_caps=self.keep_caps)
        settings = Settings(
            policy=self.policy,
            context=Context(gateways=self.gateways, address_type=route.address_type, names=dict(self.resolution.addresses)),
            deny_errno=DENY_ERRNOS[self.deny_errno],
            on_denied=self.on_denied,
        )
        try:
            kernel.set_non_dumpable()
        except OSError as exc:
            raise HostError(f"cannot make the supervisor non-dumpable: {exc.strerror}") from exc
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with ours, theirs:
            pass_fds = (*popen_args.pop("pass_fds", ()), theirs.fileno())
            launcher = [str(LAUNCHER), str(theirs.fileno()), *argv]
            try:
                proc = subprocess.Popen(launcher, pass_fds=pass_fds, env={}, **popen_args)
            except OSError as exc:
                raise HostError(f"cannot start the sandbox launcher: {exc.strerror}") from exc
            theirs.close()
            try:
                ours.sendall(request)
                listener = _take_listener(ours, proc)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            Supervisor(listener, settings).start()
            ours.sendall(b"g")
        return proc

    def run(self, argv: Sequence[str], *, input: bytes | str | None = None, timeout: float | None = None,
            check: bool = False, **popen_args: Any) -> subprocess.CompletedProcess[Any]:
        """Like subprocess.run, sandboxed: wait for ``argv`` and return its status and output."""
        if input is not None:
            popen_args["stdin"] = subprocess.PIPE
        if popen_args.pop("capture_output", False):
            popen_args["stdout"] = popen_args["stderr"] = subprocess.PIPE
        with self.popen(argv, **popen_args) as proc:
            try:
                out, err = proc.communicate(input, timeout=timeout)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        result = subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
        if check:
            result.check_returncode()
        return result


@cache
def _filter_program() -> bytes:
    """The same for every sandbox (the policy is applied in the supervisor): compiled once."""
    return bpf_program(plan_filter())


def _launch_request(env: Mapping[Any, Any] | None, *, keep_caps: bool) -> bytes:
    """What the launcher reads on its control socket (launcher.c): counts, flags,
    the BPF program, and the command's environment as NAME=VALUE NUL strings.
    Raises ValueError on a name or value subprocess would refuse."""
    block = bytearray()
    for name, value in (os.environ if env is None else env).items():
        name, value = os.fsencode(name), os.fsencode(value)
        if not name or b"=" in name or b"\0" in name + value:
            raise ValueError(f"illegal environment variable {name!r}")
        block += name + b"=" + value + b"\0"
    program = _filter_program()
    flags = KEEP_CAPS if keep_caps else 0
    return struct.pack("=III", len(program) // 8, len(block), flags) + program + bytes(block)


def _take_listener(ours: socket.socket, proc: subprocess.Popen[Any]) -> int:
    """Read ``ok FD`` from the launcher and copy its listener FD into this process."""
    ours.settimeout(HANDSHAKE_TIMEOUT)
    try:
        line = ours.recv(4096).decode(errors="replace").strip()
    except TimeoutError:
        raise HostError("the sandbox launcher did not answer in time") from None
    except ConnectionError:
        line = ""  # it exited without reading all we sent: reported below with its status
    if line.startswith("error "):
        raise HostError(line.removeprefix("error "))
    if not line.startswith("ok "):
        proc.wait()
        raise HostError(f"the sandbox launcher failed (exit status {proc.returncode})")
    try:
        with _pidfd(proc.pid) as pidfd:
            return kernel.pidfd_getfd(pidfd, int(line.removeprefix("ok ")))
    except OSError as exc:
        hint = " (pidfd_getfd needs Linux >= 5.6)" if exc.errno == errno.ENOSYS else ""
        raise HostError(f"cannot take the seccomp listener from the sandbox: {exc.strerror}{hint}") from exc


class _pidfd:
    def __init__(self, pid: int) -> None:
        self.fd = os.pidfd_open(pid)

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
