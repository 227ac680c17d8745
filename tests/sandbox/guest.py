"""Helpers for guest programs: run Python code sandboxed (or bare) and get its results back.

A guest snippet calls the helpers in ``PRELUDE`` and sets ``out[...]``;
the dict comes back as JSON on stdout. Each helper returns the errno of
the call (0 when it worked) or, for sends, the count sent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence

from guestfence import Policy, Sandbox

PRELUDE = r'''
import ctypes, errno, json, os, socket, struct, sys, threading, time
out = {}
libc = ctypes.CDLL(None, use_errno=True)

def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET

def connect(host, port, kind=socket.SOCK_STREAM, family=None, blocking=True):
    s = socket.socket(family or family_of(host), kind)
    s.setblocking(blocking)
    try:
        return s.connect_ex((host, port))
    finally:
        s.close()

def sendto(host, port, data=b"x", family=None, sock=None):
    s = sock or socket.socket(family or family_of(host), socket.SOCK_DGRAM)
    try:
        return s.sendto(data, (host, port))
    except OSError as e:
        return -e.errno

def sendmsg(host, port, data=b"x", family=None):
    s = socket.socket(family or family_of(host), socket.SOCK_DGRAM)
    try:
        return s.sendmsg([data], [], 0, (host, port))
    except OSError as e:
        return -e.errno

def sendmmsg(fd, entries):
    """entries: list of (sockaddr bytes or None, payload). Returns (result, msg_lens)."""
    n = len(entries)
    keep = []
    vec = ctypes.create_string_buffer(64 * n)
    for i, (name, payload) in enumerate(entries):
        nb = ctypes.create_string_buffer(name or b"", len(name or b""))
        pb = ctypes.create_string_buffer(payload, len(payload))
        iov = ctypes.create_string_buffer(struct.pack("=QQ", ctypes.addressof(pb), len(payload)), 16)
        keep += [nb, pb, iov]
        struct.pack_into("=QI4xQQQQi4xI4x", vec, 64 * i, ctypes.addressof(nb) if name else 0,
                         len(name or b""), ctypes.addressof(iov), 1, 0, 0, 0, 0)
    libc.sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
    r = libc.sendmmsg(fd, vec, n, 0)
    result = r if r >= 0 else -ctypes.get_errno()
    return result, [struct.unpack_from("=I", vec, 64 * i + 56)[0] for i in range(n)]

def connecting(socks, timeout=60):
    """Whether a connect of each of ``socks`` is under way (the connect made on our
    behalf gave it its local port), waiting up to ``timeout`` s: a bound, not a sleep."""
    deadline = time.monotonic() + timeout
    while any(s.getsockname()[1] == 0 for s in socks):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True

def sin(host, port):
    if ":" in host:
        return struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0) + socket.inet_pton(socket.AF_INET6, host) + b"\0" * 4
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(host) + b"\0" * 8
'''


def guest_argv(code: str) -> list[str]:
    return [sys.executable, "-c", PRELUDE + code + "\nprint(json.dumps(out))\n"]


def run_sandboxed(code: str, *, allow: Sequence[str] = (), deny: Sequence[str] = (), default: str = "deny",
                  timeout: float = 60, **sandbox_args: object) -> dict:
    sandbox = Sandbox(Policy.parse(allow=allow, deny=deny, default=default), **sandbox_args)
    result = sandbox.run(guest_argv(code), capture_output=True, text=True, timeout=timeout)
    return _parse(result)


def run_bare(code: str, *, timeout: float = 60) -> dict:
    return _parse(subprocess.run(guest_argv(code), capture_output=True, text=True, timeout=timeout))


def _parse(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])
