"""Real listeners on loopback for sandbox tests (no root needed).

``tcp_server``/``udp_server`` listen on 127.0.0.1, 127.0.0.2 and ::1 at one
port, so a destination the sandbox refuses is one a bare run reaches;
the TCP one accepts and closes in a thread, the UDP one records what it got.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest


class Listener:
    def __init__(self, kind: int) -> None:
        self.kind = kind
        self.received: list[bytes] = []
        first = socket.socket(socket.AF_INET, kind)
        first.bind(("127.0.0.1", 0))
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
                    conn.close()
                else:
                    self.received.append(sock.recv(65536))
            except (TimeoutError, OSError):
                continue

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
