"""Each hole of the old meaning of the policy, attacked from a guest, with a
control showing it open without guestfence, then closed.

The judge is the host: a table of the test's own (``tests.lab.test_differential``'s
judge) records, at priority 1000 of the host's input, forward and output
hooks, what arrived after guestfence had its say.
"""

from __future__ import annotations

import json
import select
import sys
import time
from pathlib import Path

import pytest

from tests.lab.netlab import GUESTFENCE, Lab, sh
from tests.lab.guests_lab import GuestLink, Scene
from tests.lab.test_differential import JUDGE, MCAST_GROUPS, NONCE, judge_ruleset

pytestmark = pytest.mark.lab


class Judge:
    """The host-side observer of one guest's link, and that guest's sender."""

    def __init__(self, scene: Scene, link: GuestLink) -> None:
        self.scene, self.link = scene, link
        self.host_mac = json.loads(sh("ip", "-j", "link", "show", link.iface, netns=scene.host).stdout)[0]["address"]
        sh("nft", "-f", "-", netns=scene.host, input=judge_ruleset(link.iface))
        for netns in (scene.host, link.netns):
            sh("sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647", netns=netns)
        for neighbour in (link.gateway4, link.gateway6, "2001:db8:1::"):
            sh("ip", "neigh", "replace", neighbour, "lladdr", self.host_mac, "dev", "eth0", "nud", "permanent", netns=link.netns)
        joined = scene.lab.spawn([sys.executable, "-m", "tests.lab.diffprobe", "join", link.iface, *MCAST_GROUPS], netns=scene.host)
        assert joined.stdout is not None
        ready, _, _ = select.select([joined.stdout], [], [], 10)
        assert ready and joined.stdout.readline().strip() == b"ready"

    def frame(self, dst: str, port: int, *, src: str | None = None, proto: str = "udp") -> dict[str, object]:
        source = src or (self.link.address4 if "." in dst else self.link.address6)
        return {"how": "frame", "iface": "eth0", "src_mac": self.link.mac, "dst_mac": self.host_mac,
                "src": source, "dst": dst, "port": port, "proto": proto, "nonce": NONCE}

    def arrived(self, probes: list[dict[str, object]]) -> set[tuple[str, str, int]]:
        """Send ``probes`` from the guest, then an end marker; what the host received."""
        host = self.scene.host
        sh("nft", "-f", "-", netns=host, input="".join(f"flush set inet {JUDGE} {s}\n" for s in ("seen4", "seen6", "ping4", "ping6"))
           + f"reset counter inet {JUDGE} marker\n")
        marker = self.frame(self.link.gateway6, 0, proto="ns")
        sh("taskset", "-c", "0", sys.executable, "-m", "tests.lab.diffprobe", json.dumps([*probes, marker]), netns=self.link.netns)
        deadline = time.monotonic() + 10
        while json.loads(sh("nft", "-j", "list", "counter", "inet", JUDGE, "marker", netns=host).stdout)["nftables"][1]["counter"]["packets"] == 0:
            assert time.monotonic() < deadline, "the end-of-round marker never arrived"
            time.sleep(0.02)
        return read_judge(host)


def read_judge(host: str) -> set[tuple[str, str, int]]:
    keys: set[tuple[str, str, int]] = set()
    for item in json.loads(sh("nft", "-j", "list", "table", "inet", JUDGE, netns=host).stdout)["nftables"]:
        for element in item.get("set", {}).get("elem", []):
            value = element["elem"]["val"] if isinstance(element, dict) and "elem" in element else element
            if isinstance(value, dict):
                address, proto, port = value["concat"]
                keys.add((proto, address, int(port)))
            else:
                keys.add(("icmp", value, 0))
    return keys


def sock(proto: str, address: str, port: int = 0, scope: str | None = None) -> dict[str, object]:
    return {"how": "socket", "proto": proto, "address": address, "port": port, "scope": scope}


HOST_RECEIVED = [  # (probe, the judge's key): what the old @host (fib type local only) let through
    (sock("udp", "255.255.255.255", 30001), ("udp", "255.255.255.255", 30001)),
    (sock("udp", "192.0.2.7", 30002), ("udp", "192.0.2.7", 30002)),  # the guest link's broadcast
    (sock("udp", "192.0.2.11", 30003), ("udp", "192.0.2.11", 30003)),  # another host link's broadcast
    (sock("udp", "224.0.0.251", 5353), ("udp", "224.0.0.251", 5353)),  # mDNS
    (sock("udp", "239.255.255.250", 1900), ("udp", "239.255.255.250", 1900)),  # SSDP
    (sock("udp", "ff02::fb", 5353, "eth0"), ("udp", "ff02::fb", 5353)),
    (sock("udp", "ff02::c", 1900, "eth0"), ("udp", "ff02::c", 1900)),
    (sock("icmp", "ff02::1", 0, "eth0"), ("icmp", "ff02::1", 0)),  # all nodes
    (sock("tcp", "2001:db8:1::", 30004), ("tcp", "2001:db8:1::", 30004)),  # subnet-router anycast
    (sock("udp", "2001:db8:2::", 30005), ("udp", "2001:db8:2::", 30005)),
]


@pytest.fixture
def scene(lab: Lab, tmp_path: Path) -> Scene:
    """name: scene; scope: function; depends on lab. A host with guests g1 and g2."""
    made = Scene(lab, tmp_path / "state")
    made.add_guest("g1", 1)
    made.add_guest("g2", 2)
    return made


def test_deny_host_covers_broadcast_multicast_and_anycast(scene: Scene) -> None:
    g1 = scene.guests["g1"]
    judge = Judge(scene, g1)
    probes = [p for p, _ in HOST_RECEIVED]
    keys = {k for _, k in HOST_RECEIVED}
    assert judge.arrived(probes) == keys, "control: without guestfence the host receives all of them"
    scene.register(g1, "--default", "allow", "--net-deny", "@host", "--net-deny", "udp://@host:*", "--net-deny", "icmp://@host")
    assert judge.arrived(probes) == set()
    explained = scene.gf("explain", "--guest", "g1", "--json", "udp://255.255.255.255:1", "udp://224.0.0.251:5353", "tcp://[2001:db8:1::]:1")
    assert {a["verdict"] for a in json.loads(explained.stdout)} == {"deny"}


def test_ping_is_the_policys_and_the_link_still_works(scene: Scene) -> None:
    g1 = scene.guests["g1"]
    judge = Judge(scene, g1)
    pings = [sock("icmp", g1.gateway4), sock("icmp", g1.gateway6), sock("icmp", "198.51.100.7")]
    scene.register(g1, "--net-allow", "tcp://@gateway:8080", "--net-allow", "icmp://@gateway")
    assert judge.arrived(pings) == {("icmp", g1.gateway4, 0), ("icmp", g1.gateway6, 0)}
    scene.register(g1, "--default", "allow", "--net-deny", "icmp://@host")
    assert judge.arrived(pings) == set()
    # Neighbour discovery is a link essential: the guest resolves its gateway under any policy.
    sh("ip", "neigh", "del", g1.gateway6, "dev", "eth0", netns=g1.netns)
    scene.probe(g1.netns, [f"icmp://{g1.gateway6}"])  # denied, but the guest resolves the gateway first
    neighbours = sh("ip", "-6", "neigh", "show", g1.gateway6, "dev", "eth0", netns=g1.netns).stdout
    assert "lladdr" in neighbours and "FAILED" not in neighbours


def test_dnat_to_a_denied_host_service(scene: Scene) -> None:
    g1 = scene.guests["g1"]
    host = scene.host
    scene.lab.veth(host, "up0", scene.lab.netns("gfu"), "eth0")
    scene.lab.addr(host, "up0", "203.0.113.1/24")
    sh("nft", "-f", "-", netns=host, input="table ip hostnat {\n chain pre {\n type nat hook prerouting priority dstnat\n"
       " ip daddr 203.0.113.80 tcp dport 80 dnat to 198.51.100.7:22\n }\n}\n")
    forwarded = "tcp://203.0.113.80:80"
    assert scene.reachable(g1.netns, [forwarded]) == {forwarded}, "control: the DNAT reaches the host's port 22"
    scene.register(g1, "--net-allow", "tcp://203.0.113.0/24:*", "--net-deny", "tcp://@host:*")
    assert scene.reachable(g1.netns, [forwarded]) == set()
    answer = json.loads(scene.gf("explain", "--guest", "g1", "--json", "--dnat", f"{forwarded}=tcp://198.51.100.7:22", forwarded).stdout)
    assert answer[0]["verdict"] == "deny" and answer[0]["rule"] == "tcp://@host:*"
    scene.register(g1, "--net-allow", "tcp://203.0.113.0/24:*", "--net-allow", "tcp://198.51.100.7:22")
    assert scene.reachable(g1.netns, [forwarded]) == {forwarded}, "allowed where it is delivered too, it passes"


def test_other_guests_are_out_of_reach_of_star_and_default_allow(scene: Scene) -> None:
    g1, g2 = scene.guests["g1"], scene.guests["g2"]
    scene.listen(g2.netns, (7000,))
    target = [f"tcp://{g2.address4}:7000", f"tcp://[{g2.address6}]:7000"]
    assert scene.reachable(g1.netns, target, timeout=5) == set(target), "control: guests reach each other without guestfence"
    scene.register(g2, "--default", "deny")
    scene.register(g1, "--default", "allow", "--net-allow", "tcp://*:*")
    assert scene.reachable(g1.netns, target) == set()
    answers = json.loads(scene.gf("explain", "--guest", "g1", "--json", *target).stdout)
    assert [a["decided_by"] for a in answers] == ["deny (another guest)"] * 2
    scene.register(g1, "--net-allow", "tcp://192.0.2.8/30:7000", "--net-allow", "tcp://[2001:db8:2::]/64:7000")
    assert scene.reachable(g1.netns, target, timeout=5) == set(target)


def test_source_unspecified_only_for_dad_and_mld(scene: Scene) -> None:
    g1 = scene.guests["g1"]
    judge = Judge(scene, g1)
    spoofed = [judge.frame(g1.gateway6, 30010, src="::"), judge.frame(g1.gateway6, 30011, src="2001:db8:1::99"),
               judge.frame(g1.gateway4, 30012, src="192.0.2.99")]
    keys = {("udp", g1.gateway6, 30010), ("udp", g1.gateway6, 30011), ("udp", g1.gateway4, 30012)}
    assert judge.arrived(spoofed) == keys, "control: the host takes them without guestfence"
    scene.register(g1, "--default", "allow")
    assert judge.arrived(spoofed) == set()


def test_martian_destination_is_dropped_whatever_the_sysctls(scene: Scene) -> None:
    """With route_localnet the host takes a frame aimed at 127.0.0.1 from a
    link; the shared screen chain drops it even for a guest allowed everything."""
    g1 = scene.guests["g1"]
    for scope in ("all", g1.iface):
        sh("sysctl", "-qw", f"net.ipv4.conf.{scope}.route_localnet=1", netns=scene.host)
    judge = Judge(scene, g1)
    martian = [judge.frame("127.0.0.1", 30020)]
    assert judge.arrived(martian) == {("udp", "127.0.0.1", 30020)}, "control: the host takes it without guestfence"
    scene.register(g1, "--default", "allow", "--net-allow", "udp://127.0.0.0/8:*")
    assert judge.arrived(martian) == set()
    assert judge.arrived([judge.frame(g1.gateway4, 30021)]) == {("udp", g1.gateway4, 30021)}, "its other traffic passes"


def test_guest_add_refuses_a_gateway_its_link_does_not_hold(scene: Scene) -> None:
    g1 = scene.guests["g1"]
    done = scene.gf("guest", "add", "g1", "--iface", g1.iface, "--address", f"{g1.address4}/30",
                    "--gateway", "192.0.2.1", "--net-allow", "tcp://@gateway:8080", check=False)
    assert done.returncode == 2 and f"gateway 192.0.2.1 is not an address of {g1.iface}" in done.stderr
    later = scene.gf("guest", "add", "g9", "--iface", "vmtap-notyet", "--address", "192.0.2.50/30",
                     "--gateway", "192.0.2.49", "--net-allow", "tcp://@gateway:8080")
    assert "does not exist yet" in later.stderr


def test_run_keeps_host_forms_away(scene: Scene) -> None:
    """``run --default allow --net-deny @host``: nothing the kernel delivers to
    the host leaves the process, whatever form names it."""
    host = scene.host
    g1 = scene.guests["g1"]
    Judge(scene, g1)
    sh("ip", "route", "add", "default", "dev", g1.iface, netns=host)
    sh("nft", "add", "rule", "inet", JUDGE, "output", "jump", "judge", netns=host)
    forms = [("tcp", "0.0.0.0", 31001, "127.0.0.1"), ("tcp", "::", 31002, "::1"), ("tcp", "::ffff:127.0.0.1", 31003, "127.0.0.1"),
             ("udp", "127.255.255.255", 31004, None), ("udp", "255.255.255.255", 31005, None),
             ("udp", "224.0.0.251", 5353, None), ("tcp", "127.9.9.9", 31006, None), ("udp", "192.0.2.7", 31007, None)]
    probes = [sock(proto, address, port) for proto, address, port, _ in forms]
    keys = {(proto, seen or address, port) for proto, address, port, seen in forms}

    def sent(*policy: str) -> set[tuple[str, str, int]]:
        sh("nft", "flush", "set", "inet", JUDGE, "seen4", netns=host)
        sh("nft", "flush", "set", "inet", JUDGE, "seen6", netns=host)
        sh(GUESTFENCE, "run", *policy, "--", sys.executable, "-m", "tests.lab.diffprobe", json.dumps(probes), netns=host)
        return read_judge(host) & keys  # not the host's own answers (RSTs to the probe's ports)

    assert sent("--default", "allow") == keys, "control: run without a deny lets every form out"
    assert sent("--default", "allow", "--net-deny", "@host", "--net-deny", "udp://@host:*") == set()
    loopback = ("--default", "allow", "--net-deny", "tcp://127.0.0.0/8:*", "--net-deny", "tcp://[::1]:*")
    assert {k for k in sent(*loopback) if k[0] == "tcp"} == set(), "rules naming loopback catch 0.0.0.0, :: and mapped"


def test_rootless_nft_mode_keeps_host_forms_away(lab: Lab, tmp_path: Path) -> None:
    """The stack user's sockets under ``rootless --mode nft``: every form the
    host receives is refused in the output hook (``fib daddr type @to_host``)."""
    host, lan = lab.netns("gfh"), lab.netns("gfl")
    lab.veth(host, "lan0", lan, "eth0")
    lab.addr(host, "lan0", "198.51.100.1/24")
    lab.addr(host, "lan0", "2001:db8:5::1/64")
    sh("ip", "route", "add", "default", "dev", "lan0", netns=host)
    sh("nft", "-f", "-", netns=host, input=judge_ruleset("lan0"))
    sh("nft", "add", "rule", "inet", JUDGE, "output", "meta", "skuid", "65534", "jump", "judge", netns=host)
    forms = [("tcp", "0.0.0.0", 31001, "127.0.0.1"), ("tcp", "::", 31002, "::1"), ("udp", "127.255.255.255", 31003, None),
             ("udp", "255.255.255.255", 31004, None), ("udp", "198.51.100.255", 31005, None),
             ("udp", "224.0.0.251", 5353, None), ("tcp", "198.51.100.1", 31006, None), ("tcp", "2001:db8:5::", 31007, None)]
    probes = [sock(proto, address, port) for proto, address, port, _ in forms] + [sock("udp", "ff02::fb", 5353, "lan0")]
    keys = {(proto, seen or address, port) for proto, address, port, seen in forms} | {("udp", "ff02::fb", 5353)}
    sh("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", netns=host)  # subnet-router anycast exists on routers

    def sent() -> set[tuple[str, str, int]]:
        sh("nft", "flush", "set", "inet", JUDGE, "seen4", netns=host)
        sh("nft", "flush", "set", "inet", JUDGE, "seen6", netns=host)
        sh("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "tests.lab.diffprobe",
           json.dumps(probes), netns=host)
        return read_judge(host) & keys

    assert sent() == keys, "control: without guestfence the stack's user sends to every form"
    plan = json.loads(sh(GUESTFENCE, "rootless", "slirp4netns", "42", "--mode", "nft", "--user", "nobody", "--dry-run",
                         netns=host).stdout)
    sh("/usr/bin/python3", "-c", "import json,sys,nftables; n=nftables.Nftables(); "
       "rc,_,err=n.json_cmd({'nftables': json.loads(sys.argv[1])}); sys.exit(rc and err)",
       json.dumps(plan["nftables"]), netns=host)
    assert sent() == set()


BOUND_THEN_UNSPECIFIED = """
import socket, sys
family, bound, unspecified, port = socket.AF_INET if "." in sys.argv[1] else socket.AF_INET6, sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(family)
s.bind((bound, 0))
try:
    s.connect((unspecified, port))
    print("reached", s.getpeername()[0])
except OSError as e:
    print("refused", e.errno)
"""


@pytest.mark.parametrize(("bound", "unspecified"), [("192.0.2.5", "0.0.0.0"), ("::ffff:192.0.2.5", "::ffff:0.0.0.0")])
def test_run_executes_an_unspecified_destination_as_the_loopback_it_decided(lab: Lab, bound: str, unspecified: str) -> None:
    """The kernel sends a connect to 0.0.0.0 (or ::) to the socket's bound
    address, not to loopback: a process allowed only loopback binds a host
    address, aims at 0.0.0.0 and reaches a service bound to that address.
    The sandbox executes the loopback address it decided, whatever the bind.
    (IPv6 ``::`` goes to ::1 whatever the bind; its mapped form is IPv4's.)"""
    host = lab.netns("gfh")
    lab.veth(host, "d0", lab.netns("gfl"), "eth0")
    lab.addr(host, "d0", "192.0.2.5/24")
    listener = lab.spawn([sys.executable, "-c", "import socket,signal\nl=socket.socket()\n"
                          "l.bind(('192.0.2.5', 47001)); l.listen(5); print('ready', flush=True); signal.pause()"], netns=host)
    assert listener.stdout is not None
    ready, _, _ = select.select([listener.stdout], [], [], 10)
    assert ready and listener.stdout.readline().strip() == b"ready"
    probe = [sys.executable, "-c", BOUND_THEN_UNSPECIFIED, bound, unspecified, "47001"]
    assert sh(*probe, netns=host).stdout.strip().endswith("192.0.2.5"), "control: the kernel delivers it to the bound address"
    done = sh(GUESTFENCE, "run", "--quiet", "--net-allow", "tcp://127.0.0.1:47001", "--", *probe, netns=host)
    assert done.stdout.strip().startswith("refused"), done.stdout
