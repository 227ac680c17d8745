"""The binding of guestfence-fastpath.so (fastpath.c: the supervisor's hot path in C, and why).

Built by the Makefile next to this file. Every call releases the GIL
(ctypes.CDLL), so handler threads block in NOTIF_RECV and handle calls in C
in parallel with Python. ``serve`` returns only when Python is needed:
``PYTHON`` (the notification is Python's to handle and answer), ``SIGPIPE``
(the call was made and failed with EPIPE: answer that and raise the guest's
SIGPIPE), ``SPAWN`` (start a
handler thread, then ``handle`` the notification), ``EXIT``/``LAST`` (the
thread leaves the pool; the last one closes the listener and ``free``s).
"""

from __future__ import annotations

import ctypes
import errno
import os
from functools import cache
from pathlib import Path

from guestfence.sandbox.verdict import SocketKind

LIBRARY = Path(__file__).with_name("guestfence-fastpath.so")
EXIT, LAST, PYTHON, SIGPIPE, SPAWN, DONE = range(6)
_P = ctypes.c_void_p


@cache
def _library() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(LIBRARY), use_errno=True)
    for name, argtypes, restype in (
        ("gf_new", (ctypes.c_int,) * 6, _P),
        ("gf_free", (_P,), None),
        ("gf_thread_new", (_P,), _P),
        ("gf_thread_free", (_P,), None),
        ("gf_allow", (_P, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t,
                      ctypes.c_char_p, ctypes.c_size_t), None),
        ("gf_handle", (_P, _P, _P), ctypes.c_int),
        ("gf_serve", (_P, _P, _P, ctypes.c_int), ctypes.c_int),
        ("gf_unspawn", (_P,), None),
    ):
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, restype
    return lib


class FastPath:
    """One listener's C state: the handler pool's counts, the verdict table, cached pidfds."""

    def __init__(self, listener: int, *, thread_pidfds: bool, procmap_query: bool, max_control: int,
                 max_threads: int, threads: int) -> None:
        self._lib = _library()
        self._gf = self._lib.gf_new(listener, int(thread_pidfds), int(procmap_query), max_control, max_threads,
                                    threads)
        if not self._gf:
            raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))
        self.serve = lambda scratch, notif, back: self._lib.gf_serve(self._gf, scratch, notif, int(back))
        self.handle = lambda scratch, notif: self._lib.gf_handle(self._gf, scratch, notif)

    def thread_scratch(self) -> int | None:
        """A handler thread's buffers (None, if they cannot be allocated: C then hands every call to Python)."""
        return self._lib.gf_thread_new(self._gf)

    def free_scratch(self, scratch: int | None) -> None:
        self._lib.gf_thread_free(scratch)

    def unspawn(self) -> None:
        """A thread ``SPAWN`` counted could not be started."""
        self._lib.gf_unspawn(self._gf)

    def allow(self, kind: SocketKind, *, connect: bool, raw: bytes, executed: bytes) -> None:
        """Python decided ``raw`` allowed on ``kind`` sockets, executed as ``executed``: C may reuse that."""
        self._lib.gf_allow(self._gf, kind.domain, kind.type, kind.protocol, int(connect), raw, len(raw), executed,
                           len(executed))

    def free(self) -> None:
        """Once the last thread left (``LAST``)."""
        self._lib.gf_free(self._gf)
        self._gf = None
