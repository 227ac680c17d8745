"""A host namespace with services on several ports and addresses, and a guest
namespace joined to it by a veth pair: the scene every audit lab test uses.

    host  h0: 192.0.2.1/24  2001:db8::1/64  fe80::1      lo: 198.51.100.1/32
    guest g0: 192.0.2.2/24  2001:db8::2/64  fe80::2      default via 192.0.2.1 / 2001:db8::1

Services (one process in the host namespace, ``SERVICES``):

    tcp 0.0.0.0:8080   tcp [::]:2222 (dual stack)   tcp 127.0.0.1:5432
    tcp 192.0.2.1:9000 tcp [2001:db8::1]:9443
    udp 0.0.0.0:7 (echo)  udp 0.0.0.0:5353 (silent)

Link-local addresses are set by hand without DAD, so they are usable at once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

from tests.lab.netlab import GUESTFENCE, Lab, sh


SERVICES = r"""
import socket
specs = [
    (socket.AF_INET, socket.SOCK_STREAM, "0.0.0.0", 8080),
    (socket.AF_INET6, socket.SOCK_STREAM, "::", 2222),
    (socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1", 5432),
    (socket.AF_INET, socket.SOCK_STREAM, "192.0.2.1", 9000),
    (socket.AF_INET6, socket.SOCK_STREAM, "2001:db8::1", 9443),
    (socket.AF_INET, socket.SOCK_DGRAM, "0.0.0.0", 7),
    (socket.AF_INET, socket.SOCK_DGRAM, "0.0.0.0", 5353),
]
held = []
for family, kind, address, port in specs:
    s = socket.socket(family, kind)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind((address, port))
    if kind == socket.SOCK_STREAM:
        s.listen(64)
    held.append(s)
echo = held[5]
# Answer from the address the datagram was sent to, as a well-behaved
# multi-homed UDP service does (IP_PKTINFO), not from the route's choice.
IP_PKTINFO = 8
echo.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
print("ready", flush=True)
while True:
    data, ancillary, _, peer = echo.recvmsg(2048, 256)
    echo.sendmsg([b"echo:" + data], [a for a in ancillary if a[1] == IP_PKTINFO], 0, peer)
"""

REACHABLE_WITHOUT_RULES = {
    "tcp://192.0.2.1:8080", "tcp://198.51.100.1:8080",
    "tcp://192.0.2.1:2222", "tcp://198.51.100.1:2222", "tcp://[2001:db8::1]:2222", "tcp://[fe80::1]:2222",
    "tcp://192.0.2.1:9000", "tcp://[2001:db8::1]:9443",
    "udp://192.0.2.1:7", "udp://198.51.100.1:7",
}  # fmt: skip
GUEST_LOCAL = {
    "tcp://127.0.0.1:8080", "tcp://127.0.0.1:2222", "tcp://127.0.0.1:5432", "tcp://[::1]:2222",
    "udp://127.0.0.1:7", "udp://127.0.0.1:5353",
}  # fmt: skip
UDP_SILENT = {"udp://192.0.2.1:5353", "udp://198.51.100.1:5353"}


@dataclass(frozen=True)
class Scene:
    lab: Lab
    host: str
    guest: str

    def audit(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``guestfence audit --netns GUEST ARGS`` run in the host namespace."""
        return sh(GUESTFENCE, "audit", "--netns", self.guest, *args, netns=self.host, check=False, timeout=timeout)

    def audit_json(self, *args: str) -> tuple[int, dict]:
        done = self.audit("--json", *args)
        assert done.stderr == "", done.stderr
        return done.returncode, json.loads(done.stdout)

    def apply_nft(self, commands: list[dict], netns: str | None = None) -> None:
        """Load ``commands`` through guestfence.nftables.apply, in the host namespace by default."""
        code = (
            "import json, sys\n"
            "from guestfence.nftables.apply import apply_nft, open_nft\n"
            "apply_nft(open_nft(), json.load(sys.stdin), step='lab ruleset')\n"
        )
        sh(sys.executable, "-c", code, netns=netns or self.host, input=json.dumps(commands))

    def counters(self, netns: str, table: str) -> list[int]:
        """The packets of every rule counter of ``inet TABLE`` in ``netns``, in rule order."""
        code = (
            "import json, sys\n"
            "from guestfence.nftables.apply import list_ruleset, open_nft\n"
            "items = list_ruleset(open_nft(), {'table': {'family': 'inet', 'name': sys.argv[1]}})\n"
            "print(json.dumps([s['counter']['packets'] for i in items if 'rule' in i\n"
            "                  for s in i['rule']['expr'] if 'counter' in s]))\n"
        )
        return json.loads(sh(sys.executable, "-c", code, table, netns=netns).stdout)

def build_scene(lab: Lab) -> Scene:
    host, guest = lab.netns("gfah"), lab.netns("gfag")
    lab.veth(host, "h0", guest, "g0")
    for ns, dev, mine in ((host, "h0", "1"), (guest, "g0", "2")):
        sh("ip", "-6", "addr", "flush", "dev", dev, "scope", "link", netns=ns)
        lab.addr(ns, dev, f"fe80::{mine}/64")
        lab.addr(ns, dev, f"192.0.2.{mine}/24")
        lab.addr(ns, dev, f"2001:db8::{mine}/64")
    lab.addr(host, "lo", "198.51.100.1/32")
    sh("ip", "route", "add", "default", "via", "192.0.2.1", netns=guest)
    sh("ip", "-6", "route", "add", "default", "via", "2001:db8::1", netns=guest)
    services = lab.spawn([sys.executable, "-c", SERVICES], netns=host)
    assert services.stdout is not None
    if services.stdout.readline().strip() != b"ready":
        raise RuntimeError(f"services did not start: {services.stderr.read() if services.stderr else ''}")
    return Scene(lab=lab, host=host, guest=guest)


def grouped(report: dict, field: str) -> dict[str, set[str]]:
    """The services of an audit's JSON report, by the value of ``field`` ("probe", "verdict")."""
    found: dict[str, set[str]] = {}
    for f in report["findings"]:
        found.setdefault(f[field], set()).add(f["service"])
    return found
