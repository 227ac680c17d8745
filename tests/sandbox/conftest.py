"""Real listeners on loopback for sandbox tests (no root needed).

``tcp_server``/``udp_server`` listen on 127.0.0.1, 127.0.0.2 and ::1 at one
port, so a destination the sandbox refuses is one a bare run reaches;
the TCP one accepts, counts and closes in a thread, the UDP one records
what it got. ``denied_ports`` is both at one port, for counting arrivals.
``full_listener`` is a listener whose queue is full, so a connect to it
waits (the kernel drops its SYNs) until the test accepts from it, which
``drain_once_marked`` does once the guest says (a file) that what must
come first is done.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


class Listener:
    def __init__(self, kind: int, port: int = 0) -> None:
        self.kind = kind
        self.received: list[bytes] = []
        self.accepted = 0
        first = socket.socket(socket.AF_INET, kind)
        first.bind(("127.0.0.1", port))
        self.port = first.getsockname()[1]
        second = socket.socket(socket.AF_INET, kind)
        second.bind(("127.0.0.2", self.port))
        v6 = socket.socket(socket.AF_INET6, kind)
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        v6.bind(("::1", self.port))
        self.sockets = (first, second, v6)
        self.stopping = False
        self.threads = [threading.Thread(target=self._serve, args=(s,), daemon=True) for s in self.sockets]
        for sock in self.sockets:
            if kind == socket.SOCK_STREAM:
                sock.listen(4096)
            sock.settimeout(0.2)
        for thread in self.threads:
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        while not self.stopping:
            try:
                if self.kind == socket.SOCK_STREAM:
                    conn, _ = sock.accept()
                    self.accepted += 1
                    conn.close()
                else:
                    self.received.append(sock.recv(65536))
            except (TimeoutError, OSError):
                continue

    @property
    def arrivals(self) -> int:
        return self.accepted + len(self.received)

    def received_at_least(self, count: int, timeout: float = 10) -> list[bytes]:
        """What was received, once ``count`` datagrams have been (or the time bound passed)."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.received)

    def close(self) -> None:
        self.stopping = True
        for thread in self.threads:
            thread.join()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def tcp_server() -> Iterator[Listener]:
    """name: tcp_server; scope: function. TCP on 127.0.0.1 and [::1], same port, accepting."""
    listener = Listener(socket.SOCK_STREAM)
    yield listener
    listener.close()


@pytest.fixture
def udp_server() -> Iterator[Listener]:
    """name: udp_server; scope: function. UDP on 127.0.0.1 and [::1], same port, recording datagrams."""
    listener = Listener(socket.SOCK_DGRAM)
    yield listener
    listener.close()


class DeniedPorts:
    """TCP and UDP listeners at one port on 127.0.0.1, 127.0.0.2 and ::1: what reached them."""

    def __init__(self) -> None:
        for _ in range(50):
            self.tcp = Listener(socket.SOCK_STREAM)
            try:
                self.udp = Listener(socket.SOCK_DGRAM, port=self.tcp.port)
            except OSError:
                self.tcp.close()
                continue
            self.port = self.tcp.port
            return
        raise RuntimeError("no port free for both TCP and UDP")

    @property
    def arrivals(self) -> int:
        return self.tcp.arrivals + self.udp.arrivals

    def settled(self, timeout: float = 5) -> int:
        """The arrival count once the listeners have taken what is queued (unchanged for 0.3 s)."""
        count, deadline = -1, time.monotonic() + timeout
        while count != self.arrivals and time.monotonic() < deadline:
            count = self.arrivals
            time.sleep(0.3)
        return self.arrivals

    def close(self) -> None:
        self.tcp.close()
        self.udp.close()


@pytest.fixture
def denied_ports() -> Iterator[DeniedPorts]:
    """name: denied_ports; scope: function. TCP and UDP at one port on 127.0.0.1, 127.0.0.2, ::1, counting arrivals."""
    ports = DeniedPorts()
    yield ports
    ports.close()


@pytest.fixture
def full_listener() -> Iterator[socket.socket]:
    """A listener on 127.0.0.1 with ``listen(0)`` and a connection in its
    queue (which is then full): a further connect waits until the caller
    accepts from it. Waits for the queued connection rather than a time."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        for _ in range(2):  # the first fills the queue; the second's SYNs are dropped
            filler = socket.socket()
            fillers.append(filler)
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
        _, writable, _ = select.select([], fillers[:1], [], 30)
        assert writable, "the queue-filling connection never completed"
        yield listener
    finally:
        for sock in (listener, *fillers):
            sock.close()


def drain_once_marked(listener: socket.socket, mark: Path, accepts: int) -> threading.Thread:
    """A started thread that, once the file ``mark`` exists (or after 60 s),
    accepts up to ``accepts`` connections waiting on ``listener``. The guest
    creates ``mark`` once it has noted the time of what must come before the
    connects end, so they end after it however slowly the guest is
    scheduled; a connect that never comes fails the test on its result.
    Not on the arrival of the guest's datagrams: the last one can arrive,
    the queue be drained and a connect end on its SYN's retransmission, all
    before the sending thread, descheduled after its last send, has noted
    its time."""

    def drain() -> None:
        deadline = time.monotonic() + 60
        while not mark.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        listener.settimeout(30)
        try:
            for _ in range(accepts):
                listener.accept()[0].close()
        except TimeoutError:
            pass

    thread = threading.Thread(target=drain)
    thread.start()
    return thread
