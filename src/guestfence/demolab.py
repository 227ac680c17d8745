"""The demo's lab: two network namespaces joined by a ``vmtap-`` veth, a
listener on the host side and a prober on the guest side.

``DemoLab`` creates everything under names carrying this process's id and
removes it all in ``close()``, which runs on success, on error and on
Ctrl-C (the demo turns SIGTERM into the same path). Nothing touches the
machine's own ruleset: guestfence runs inside the lab's host namespace.

Run as a module, this file is the two helper processes:

    python -m guestfence.demolab serve TCP,PORTS UDP,PORTS   answer on every address
    python -m guestfence.demolab probe JSON-TARGETS TIMEOUT [SOURCE]

``serve`` prints ``ready`` once listening; TCP ports send ``ok`` and close,
UDP ports answer ``ok``. ``probe`` tries each ``tcp://A:P``,
``udp://A:P`` or ``icmp://A`` at once and prints ``{target: reached}``.
"""

from __future__ import annotations

import json
import os
import select
import selectors
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence

from guestfence.errors import HostError

READY = b"ready"


def serve(tcp_ports: Sequence[int], udp_ports: Sequence[int]) -> None:
    chooser = selectors.DefaultSelector()
    for kind, ports in ((socket.SOCK_STREAM, tcp_ports), (socket.SOCK_DGRAM, udp_ports)):
        for port in ports:
            sock = socket.socket(socket.AF_INET6, kind)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("::", port))
            if kind == socket.SOCK_STREAM:
                sock.listen(64)
            chooser.register(sock, selectors.EVENT_READ, kind)
    print(READY.decode(), flush=True)
    while True:
        for key, _ in chooser.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                if key.data == socket.SOCK_STREAM:
                    conn, _ = sock.accept()
                    conn.sendall(b"ok")
                    conn.close()
                else:
                    _, peer = sock.recvfrom(2048)
                    sock.sendto(b"ok", peer)
            except OSError:
                continue


def probe(targets: Sequence[str], timeout: float, source: str = "") -> dict[str, bool]:
    results: dict[str, bool] = {}

    def attempt(target: str) -> None:
        scheme, _, rest = target.partition("://")
        try:
            results[target] = _attempt(scheme, rest, timeout, source)
        except OSError:
            results[target] = False

    threads = [threading.Thread(target=attempt, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _attempt(scheme: str, rest: str, timeout: float, source: str) -> bool:
    if scheme == "icmp":
        command = ["ping", "-c1", "-W", str(max(1, round(timeout)))] + (["-I", source] if source else []) + [rest]
        return subprocess.run(command, capture_output=True).returncode == 0
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if scheme == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as sock:
        sock.settimeout(timeout)
        if source and (":" in source) == (family == socket.AF_INET6):
            sock.bind((source, 0))
        if scheme == "tcp":
            sock.connect((host, int(port)))
        else:
            sock.sendto(b"hi", (host, int(port)))
        return sock.recv(16) == b"ok"


def run(argv: Sequence[str], *, netns: str | None = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A command, inside ``netns`` when given. Raises HostError when it fails and ``check``."""
    command = list(argv) if netns is None else ["ip", "netns", "exec", netns, *argv]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HostError(f"cannot run {' '.join(command)}: {exc}") from exc
    if check and done.returncode != 0:
        raise HostError(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return done


class DemoLab:
    """A host namespace and a VM namespace joined by ``vmtap-demo``."""

    HOST_LINK = ("192.0.2.1/30", "2001:db8:1::1/64")
    GUEST_LINK = ("192.0.2.2/30", "2001:db8:1::2/64")
    HOST_EXTRA = "198.51.100.7/32"

    def __init__(self) -> None:
        tag = os.getpid()
        self.host = f"gfdemo-host-{tag}"
        self.guest = f"gfdemo-vm-{tag}"
        self.iface = "vmtap-demo"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.namespaces: list[str] = []

    def build(self, tcp_ports: Sequence[int], udp_ports: Sequence[int]) -> None:
        for name in (self.host, self.guest):
            run(["ip", "netns", "add", name])
            self.namespaces.append(name)
            run(["ip", "link", "set", "lo", "up"], netns=name)
        run(["ip", "link", "add", self.iface, "netns", self.host, "type", "veth", "peer", "name", "eth0", "netns", self.guest])
        for netns, dev, cidrs in ((self.host, self.iface, self.HOST_LINK), (self.guest, "eth0", self.GUEST_LINK)):
            run(["ip", "link", "set", dev, "up"], netns=netns)
            for cidr in cidrs:
                run(["ip", "addr", "add", cidr, "dev", dev, *(["nodad"] if ":" in cidr else [])], netns=netns)
        run(["ip", "addr", "add", self.HOST_EXTRA, "dev", "lo"], netns=self.host)
        run(["ip", "route", "add", "default", "via", self.HOST_LINK[0].split("/")[0]], netns=self.guest)
        run(["ip", "-6", "route", "add", "default", "via", self.HOST_LINK[1].split("/")[0]], netns=self.guest)
        ports = [",".join(map(str, tcp_ports)), ",".join(map(str, udp_ports))]
        server = self.spawn([sys.executable, "-m", "guestfence.demolab", "serve", *ports], netns=self.host)
        assert server.stdout is not None
        ready, _, _ = select.select([server.stdout], [], [], 10)
        if not ready or server.stdout.readline().strip() != READY:
            raise HostError("the demo's listener did not start")

    def spawn(self, argv: Sequence[str], *, netns: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(["ip", "netns", "exec", netns, *argv], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.processes.append(process)
        return process

    def probe(self, targets: Sequence[str], timeout: float = 1.0) -> dict[str, bool]:
        done = run([sys.executable, "-m", "guestfence.demolab", "probe", json.dumps(list(targets)), str(timeout)], netns=self.guest)
        return json.loads(done.stdout)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        for name in reversed(self.namespaces):
            run(["ip", "netns", "del", name], check=False)
        self.processes.clear()
        self.namespaces.clear()


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve([int(p) for p in sys.argv[2].split(",") if p], [int(p) for p in sys.argv[3].split(",") if p])
    elif sys.argv[1:2] == ["probe"]:
        print(json.dumps(probe(json.loads(sys.argv[2]), float(sys.argv[3]), *sys.argv[4:5])))
