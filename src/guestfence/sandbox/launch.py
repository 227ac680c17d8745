"""The sandboxed child's first program: load the filter, hand over the listener, exec.

Run as ``python -m guestfence.sandbox.launch SOCKET_FD CMD ARGS...`` by
``guestfence.sandbox.spawn``, never by hand. Steps, in a fresh
single-threaded process (no fork-with-threads hazards):

1. Read the filter plan (one JSON line) from SOCKET_FD; no_new_privs, then the seccomp filter (libseccomp); from here on every
   connect/send of this process and its descendants waits for a verdict.
2. Write ``ok FD`` on SOCKET_FD: FD is our number for the listener. The
   supervisor copies it with pidfd_getfd (a write needs no verdict, where
   passing it with SCM_RIGHTS would be a sendmsg waiting for the very
   supervisor it is meant for), then answers one byte.
3. Close the listener, so that it lives only in the supervisor: when the
   supervisor dies, the kernel fails every trapped call (ENOSYS).
4. Give back the signal dispositions the Python interpreter changed
   (SIGPIPE, SIGXFSZ ignored), as subprocess does: the command must start
   as it would bare. pasta, for one, refuses to start with SIGPIPE ignored.
5. exec CMD; on failure exit 127 (not found) or 126, as a shell does.

Errors before the hand-over are written as ``error MESSAGE`` instead.
"""

from __future__ import annotations

import os
import signal
import sys

PYTHON_IGNORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


def main(argv: list[str]) -> int:
    sock_fd, command = int(argv[0]), argv[1:]
    try:
        from guestfence.sandbox.filter import FilterPlan, build_filter

        flt = build_filter(FilterPlan.from_json(_read_line(sock_fd)))
        flt.load()
        listener = flt.get_notify_fd()
    except Exception as exc:  # any failure here is reported to the supervisor, which raises HostError
        os.write(sock_fd, f"error cannot install the seccomp filter: {exc}\n".encode())
        return 126
    os.write(sock_fd, f"ok {listener}\n".encode())
    if os.read(sock_fd, 1) != b"g":
        return 126
    os.close(listener)
    os.close(sock_fd)
    for signum in PYTHON_IGNORED_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"guestfence: {command[0]}: {exc.strerror}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126


def _read_line(fd: int) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 65536)
        if not chunk:
            raise EOFError("the supervisor went away")
        data += chunk
    return data.decode()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
