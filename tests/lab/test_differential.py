"""The differential test: explain, the guests' firewall and the sandbox give
one answer for every (policy, flow).

One lab, built once: a host namespace with two registered guests behind
vmtap veths (g1 probes, g2 is "another guest"), a host address on a third
link and on loopback, one added after g1 was registered, a link-local
address, an upstream link (forwarded destinations) and the host's own DNAT
of two forwarded destinations (one to a host service, one elsewhere).

For each generated policy, in rounds:

1. ``guest add g1`` with the policy; ``explain --guest g1 --json`` for every
   flow (with the host's ``--dnat`` translations); g1 sends every flow at
   once (``tests.lab.diffprobe``: sockets, and whole frames for what only a
   VM can put on its wire); the judge is the host: nft sets filled at
   priority 1000 of its input and forward hooks (after guestfence and
   after destination NAT) record what arrived. Reading waits for an
   end-of-round neighbour solicitation, which every policy lets through.
2. ``explain --json`` (no guest) for the process flows, and the same flows
   sent by a process under ``guestfence run``; the judge records what left
   the process at priority 1000 of the host's output hook.

Every disagreement is listed with its policy and flow, and fails the test.
"""

from __future__ import annotations

import json
import random
import select
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.lab.netlab import GUESTFENCE, Lab, sh
from tests.lab.guests_lab import GuestLink, Scene

pytestmark = pytest.mark.lab

JUDGE = "gfjudge"
NONCE = 0x67666470
HOST_LO = ("198.51.100.7", "2001:db8:ff::7")
LATE = ("198.51.100.99", "2001:db8:fe::9")
UPSTREAM = ("203.0.113.1/24", "2001:db8:cc::1/64")
MCAST_GROUPS = ("224.0.0.251", "239.255.255.250", "ff02::fb", "ff02::c")
DNAT = {
    "tcp://203.0.113.80:80": "tcp://198.51.100.7:2222",  # a forwarded destination delivered to a host service
    "tcp://[2001:db8:cc::80]:80": "tcp://[2001:db8:ff::7]:2222",
    "tcp://203.0.113.81:80": "tcp://203.0.113.51:2281",  # translated elsewhere
}


@dataclass(frozen=True)
class Probe:
    """One flow: how explain names it, how it is sent, and the judge's key
    for it (the destination it is delivered to, as the host's nft sees it)."""

    dest: str
    key: tuple[str, str, int]
    how: str = "socket"
    scope: str | None = None
    delivered: str | None = None


def _split(dest: str) -> tuple[str, str, int]:
    proto, rest = dest.split("://")
    if proto == "icmp":
        return proto, rest.strip("[]"), 0
    host, _, port = rest.rpartition(":")
    return proto, host.strip("[]"), int(port)


class Ports:
    """A port of its own for every TCP/UDP flow, so the judge's keys never collide."""

    def __init__(self) -> None:
        self.next = 20001

    def take(self) -> int:
        self.next += 1
        return self.next - 1


def guest_flows(g1: GuestLink, g2: GuestLink) -> list[Probe]:
    ports = Ports()
    probes: list[Probe] = []

    def add(proto: str, address: str, *, scope: str | None = None, how: str = "socket", key_address: str | None = None) -> None:
        shown = f"[{address}]" if ":" in address else address
        port = 0 if proto == "icmp" else ports.take()
        dest = f"{proto}://{shown}" + ("" if proto == "icmp" else f":{port}")
        probes.append(Probe(dest=dest, key=(proto, key_address or address, port), how=how, scope=scope))

    for address in (g1.gateway4, g1.gateway6, g2.gateway4, HOST_LO[0], HOST_LO[1], LATE[0], LATE[1], "fe80::1"):
        scope = "eth0" if address.startswith("fe80") else None
        for proto in ("tcp", "udp", "icmp"):
            add(proto, address, scope=scope)
    for address in ("255.255.255.255", "192.0.2.7", "192.0.2.11", "224.0.0.251", "239.255.255.250", "ff02::fb", "ff02::c"):
        add("udp", address, scope="eth0" if ":" in address else None)
    for address in ("192.0.2.11", "224.0.0.1", "ff02::1"):
        add("icmp", address, scope="eth0" if ":" in address else None)
    for address in ("2001:db8:1::", "2001:db8:2::"):  # subnet-router anycast of host links
        for proto in ("tcp", "udp", "icmp"):
            add(proto, address)
    for address in (g2.address4, g2.address6, "203.0.113.50", "2001:db8:cc::50"):  # another guest; forwarded
        for proto in ("tcp", "udp", "icmp"):
            add(proto, address)
    for address in ("127.0.0.1", "127.255.255.255", "0.0.0.0", "::1", "::"):  # only a VM's own frames carry these
        add("udp", address, how="frame")
    for aimed, delivered in DNAT.items():
        probes.append(Probe(dest=aimed, key=_split(delivered), delivered=delivered))
    return probes


def process_flows(g1: GuestLink, g2: GuestLink) -> list[Probe]:
    """What a process in the host's namespace can aim at; keys are where the kernel delivers."""
    ports = Ports()
    probes: list[Probe] = []

    def add(proto: str, address: str, key_address: str | None = None, scope: str | None = None) -> None:
        shown = f"[{address}]" if ":" in address else address
        port = 0 if proto == "icmp" else ports.take()
        dest = f"{proto}://{shown}" + ("" if proto == "icmp" else f":{port}")
        probes.append(Probe(dest=dest, key=(proto, key_address or address, port), scope=scope))

    for address in (g1.gateway4, g1.gateway6, HOST_LO[0], HOST_LO[1], "127.0.0.1", "::1", "2001:db8:1::",
                    g2.address4, "203.0.113.50", "2001:db8:cc::50"):
        for proto in ("tcp", "udp", "icmp"):
            add(proto, address)
    for proto in ("tcp", "udp"):
        add(proto, "fe80::1", scope=g1.iface)
        add(proto, "0.0.0.0", key_address="127.0.0.1")
        add(proto, "::", key_address="::1")
        add(proto, "::ffff:127.0.0.1", key_address="127.0.0.1")
        add(proto, "127.9.9.9")
    for address in ("255.255.255.255", "127.255.255.255", "192.0.2.7", "224.0.0.251", "239.255.255.250"):
        add("udp", address)
    add("udp", "ff02::fb", scope=g1.iface)
    return probes


ATOMS = [
    "tcp://@host:*", "udp://@host:*", "icmp://@host", "@host", "tcp://@gateway:*", "icmp://@gateway",
    "udp://@gateway:*", "tcp://*:*", "udp://*:*", "icmp://*", "tcp://203.0.113.0/24:*",
    "tcp://[2001:db8:cc::]/64:*", "tcp://192.0.2.8/30:*", "icmp://192.0.2.8/30", "udp://[2001:db8:2::]/64:*",
    "tcp://127.0.0.0/8:*", "udp://[::1]:*", "udp://127.0.0.0/8:*", "tcp://198.51.100.7:2222",
    "tcp://203.0.113.51:2281", "udp://224.0.0.0/4:*", "udp://[ff00::]/8:*", "icmp://[ff00::]/8",
    "udp://192.0.2.4/30:*", "tcp://198.51.100.0/24:20001-20020", "udp://*:20010-20040",
]  # fmt: skip
FIXED = [
    ("allow", (), ("@host", "udp://@host:*", "icmp://@host")),  # the "default allow, deny @host"
    ("deny", ("tcp://@gateway:8080", "icmp://@gateway"), ()),  # the demo's
    ("allow", (), ()),
    ("deny", ("tcp://*:*", "udp://*:*", "icmp://*"), ()),
    ("allow", (), ("tcp://127.0.0.0/8:*", "tcp://[::1]:*", "udp://127.0.0.0/8:*", "udp://[::1]:*")),
    ("deny", ("tcp://203.0.113.0/24:*", "tcp://[2001:db8:cc::]/64:*"), ()),
]
RANDOM_POLICIES = 8


def policies() -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    chooser = random.Random(10)
    made = list(FIXED)
    for _ in range(RANDOM_POLICIES):
        made.append((chooser.choice(("allow", "deny")), tuple(chooser.sample(ATOMS, chooser.randint(0, 5))),
                     tuple(chooser.sample(ATOMS, chooser.randint(0, 3)))))
    return made


def policy_args(default: str, allow: tuple[str, ...], deny: tuple[str, ...]) -> list[str]:
    return ["--default", default, *(a for r in allow for a in ("--net-allow", r)), *(a for r in deny for a in ("--net-deny", r))]


def judge_ruleset(iface: str) -> str:
    judge = """
        meta nfproto ipv4 meta l4proto { tcp, udp } add @seen4 { ip daddr . meta l4proto . th dport }
        meta nfproto ipv6 meta l4proto { tcp, udp } add @seen6 { ip6 daddr . meta l4proto . th dport }
        icmp type echo-request add @ping4 { ip daddr }
        icmpv6 type echo-request add @ping6 { ip6 daddr }
    """
    return f"""
table inet {JUDGE} {{
  set seen4 {{ type ipv4_addr . inet_proto . inet_service; flags dynamic; }}
  set seen6 {{ type ipv6_addr . inet_proto . inet_service; flags dynamic; }}
  set ping4 {{ type ipv4_addr; flags dynamic; }}
  set ping6 {{ type ipv6_addr; flags dynamic; }}
  counter marker {{ }}
  chain judge {{ {judge} }}
  chain input {{ type filter hook input priority 1000; policy accept;
    iifname "{iface}" icmpv6 type nd-neighbor-solicit @th,32,32 {NONCE} counter name marker
    iifname "{iface}" jump judge
  }}
  chain forward {{ type filter hook forward priority 1000; policy accept;
    iifname "{iface}" jump judge
  }}
  chain output {{ type filter hook output priority 1000; policy accept; }}
}}
"""


RESET = "".join(f"flush set inet {JUDGE} {s}\n" for s in ("seen4", "seen6", "ping4", "ping6")) + f"reset counter inet {JUDGE} marker\n"


class Differential:
    def __init__(self, scene: Scene, g1: GuestLink, g2: GuestLink) -> None:
        self.scene, self.g1, self.g2 = scene, g1, g2
        self.host = scene.host
        self.host_mac = json.loads(sh("ip", "-j", "link", "show", g1.iface, netns=self.host).stdout)[0]["address"]
        self.disagreements: list[str] = []
        self.pairs = 0

    def nft(self, script: str) -> None:
        sh("nft", "-f", "-", netns=self.host, input=script)

    def seen(self) -> set[tuple[str, str, int]]:
        """Every key the judge's sets hold, read in one listing."""
        keys: set[tuple[str, str, int]] = set()
        listed = json.loads(sh("nft", "-j", "list", "table", "inet", JUDGE, netns=self.host).stdout)["nftables"]
        for item in listed:
            for element in item.get("set", {}).get("elem", []):
                value = element["elem"]["val"] if isinstance(element, dict) and "elem" in element else element
                if isinstance(value, dict) and "concat" in value:
                    address, proto, port = value["concat"]
                    keys.add((proto, address, int(port)))
                else:
                    keys.add(("icmp", value, 0))
        return keys

    def marker(self) -> int:
        listed = json.loads(sh("nft", "-j", "list", "counter", "inet", JUDGE, "marker", netns=self.host).stdout)
        return int(listed["nftables"][1]["counter"]["packets"])

    def explain(self, probes: list[Probe], *options: str) -> Callable[[], dict[str, dict[str, str]]]:
        """Start ``explain --json`` for ``probes``; the returned function waits for its answers.
        Started early, it runs while the round's packets fly (the host has 2 cores)."""
        dnat = [a for p in probes if p.delivered for a in ("--dnat", f"{p.dest}={p.delivered}")]
        argv = ["ip", "netns", "exec", self.host, GUESTFENCE, "explain", "--json", *options, *dnat,
                *(p.dest for p in probes), "--state-dir", str(self.scene.state_dir)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def answers() -> dict[str, dict[str, str]]:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"explain {' '.join(options)} exited {proc.returncode}: {err}"
            return {answer["destination"]: answer for answer in json.loads(out)}

        return answers

    def wire(self, probe: Probe) -> dict[str, object]:
        proto, address, port = _split(probe.dest)
        if probe.how == "frame":
            source = self.g1.address4 if "." in address else self.g1.address6
            return {"how": "frame", "iface": "eth0", "src_mac": self.g1.mac, "dst_mac": self.host_mac,
                    "src": source, "dst": address, "port": port, "proto": "udp"}
        return {"how": "socket", "proto": proto, "address": address, "port": port, "scope": probe.scope}

    def compare(self, label: str, probes: list[Probe], answers: dict[str, dict[str, str]], seen: set[tuple[str, str, int]]) -> None:
        for probe in probes:
            self.pairs += 1
            answer = answers[_canonical(probe.dest)]
            arrived = probe.key in seen
            if arrived != (answer["verdict"] == "allow"):
                self.disagreements.append(f"{label}: {probe.dest}: explain says {answer['verdict']} "
                                          f"({answer['decided_by']}), the kernel {'delivered' if arrived else 'did not deliver'} it")

    def guest_round(self, label: str, args: list[str], probes: list[Probe]) -> None:
        g1 = self.g1
        self.scene.gf("guest", "add", "g1", "--iface", g1.iface, "--address", f"{g1.address4}/30",
                      "--address", f"{g1.address6}/64", "--gateway", g1.gateway4, "--gateway", g1.gateway6, *args)
        answers = self.explain(probes, "--guest", "g1")
        self.nft(RESET)
        marker = {"how": "frame", "iface": "eth0", "src_mac": g1.mac, "dst_mac": self.host_mac, "src": g1.address6,
                  "dst": g1.gateway6, "port": 0, "proto": "ns", "nonce": NONCE}
        wire = [self.wire(p) for p in probes] + [marker]
        # One CPU: every frame enters the host's backlog queue in the order sent, the marker last.
        sh("taskset", "-c", "0", sys.executable, "-m", "tests.lab.diffprobe", json.dumps(wire), netns=g1.netns)
        deadline = time.monotonic() + 10
        while self.marker() == 0:
            assert time.monotonic() < deadline, "the end-of-round marker never arrived"
            time.sleep(0.02)
        self.compare(f"guest g1 under {label}", probes, answers(), self.seen())

    def process_round(self, label: str, args: list[str], probes: list[Probe],
                      answers: Callable[[], dict[str, dict[str, str]]]) -> None:
        self.nft(RESET + f"add rule inet {JUDGE} output jump judge\n")
        try:
            wire = [self.wire(p) for p in probes]
            sh(GUESTFENCE, "run", "--quiet", *args, "--gateway", self.g1.gateway4, "--gateway", self.g1.gateway6, "--",
               sys.executable, "-m", "tests.lab.diffprobe", json.dumps(wire), netns=self.host)
            seen = self.seen()
        finally:
            self.nft(f"flush chain inet {JUDGE} output\n")
        self.compare(f"guestfence run under {label}", probes, answers(), seen)


def _canonical(dest: str) -> str:
    """How explain prints a destination (mapped addresses unmapped)."""
    return dest.replace("[::ffff:127.0.0.1]", "127.0.0.1")


def test_explain_the_firewall_and_the_sandbox_agree_on_every_flow(lab: Lab, tmp_path: Path) -> None:
    started = time.monotonic()
    scene = Scene(lab, tmp_path / "state")
    host = scene.host
    g1, g2 = scene.add_guest("g1", 1), scene.add_guest("g2", 2)
    for netns in (host, g1.netns):  # ping sockets, as unprivileged ping uses
        sh("sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647", netns=netns)
    sh("ip", "addr", "add", "fe80::1/64", "dev", g1.iface, "nodad", netns=host)
    lab.veth(host, "up0", lab.netns("gfu"), "eth0")  # an upstream link; nothing answers there
    for cidr in UPSTREAM:
        lab.addr(host, "up0", cidr)
    sh("ip", "route", "add", "default", "dev", "up0", netns=host)
    sh("ip", "-6", "route", "add", "default", "dev", "up0", netns=host)
    rules = "".join(f"{'ip' if '.' in _split(a)[1] else 'ip6'} daddr {_split(a)[1]} tcp dport {_split(a)[2]} "
                    f"dnat to {_nat_target(d)}\n" for a, d in DNAT.items())
    sh("nft", "-f", "-", netns=host, input=f"table inet hostnat {{\n chain pre {{\n type nat hook prerouting priority dstnat\n{rules} }}\n}}\n")
    joined = lab.spawn([sys.executable, "-m", "tests.lab.diffprobe", "join", g1.iface, *MCAST_GROUPS], netns=host)
    assert joined.stdout is not None
    ready, _, _ = select.select([joined.stdout], [], [], 10)
    assert ready and joined.stdout.readline().strip() == b"ready"
    for link in (g1,):  # the guest knows its gateway's MAC, as after any exchange; no resolution inside a round
        mac = json.loads(sh("ip", "-j", "link", "show", link.iface, netns=host).stdout)[0]["address"]
        for neighbour in (link.gateway4, link.gateway6, "fe80::1", "2001:db8:1::"):
            sh("ip", "neigh", "replace", neighbour, "lladdr", mac, "dev", "eth0", "nud", "permanent", netns=link.netns)
    scene.register(g2, "--default", "deny")
    differential = Differential(scene, g1, g2)
    differential.nft(judge_ruleset(g1.iface))
    guest_probes, process_probes = guest_flows(g1, g2), process_flows(g1, g2)
    for index, (default, allow, deny) in enumerate(policies()):
        label = f"policy {index} (default {default}; allow {', '.join(allow) or '-'}; deny {', '.join(deny) or '-'})"
        args = policy_args(default, allow, deny)
        if index == 0:
            scene.gf("guest", "add", "g1", "--iface", g1.iface, "--address", f"{g1.address4}/30",
                     "--address", f"{g1.address6}/64", "--gateway", g1.gateway4, "--gateway", g1.gateway6, *args)
            for address in LATE:  # added after the guest was registered
                lab.addr(host, "lo", address + ("/32" if "." in address else "/128"))
        process_answers = differential.explain(process_probes, *args, "--gateway", g1.gateway4, "--gateway", g1.gateway6)
        differential.guest_round(label, args, guest_probes)
        differential.process_round(label, args, process_probes, process_answers)
    sh("nft", "delete", "table", "inet", JUDGE, netns=host)
    elapsed = time.monotonic() - started
    print(f"differential: {len(policies())} policies, {len(guest_probes)} guest flows, {len(process_probes)} process flows, "
          f"{differential.pairs} (policy, flow) pairs in {elapsed:.1f} s")
    assert not differential.disagreements, "\n".join(differential.disagreements)


def _nat_target(delivered: str) -> str:
    _proto, address, port = _split(delivered)
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
