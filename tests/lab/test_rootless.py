"""Rootless stacks under the supervisor: slirp4netns gives a guest namespace
its network; the guest must not reach the host's own addresses, and must
still reach everything else.

Scene (all namespaces made here, documentation addresses only)::

    guest netns --tap0-- slirp4netns (in host netns) --h0/l0 veth-- lan netns
                                      host: 198.51.100.1, 2001:db8:1::1    lan: 198.51.100.2, 2001:db8:1::2
                                      listeners: *:HOST_PORT, 127.0.0.1:LOOP_PORT    listener: *:LAN_PORT
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.lab.netlab import GUESTFENCE, Lab, sh

pytestmark = pytest.mark.lab

HOST_PORT, LOOP_PORT, LAN_PORT = 2222, 2223, 2224
SLIRP_REFUSAL = "ENETUNREACH"
"""What the guest sees when guestfence refuses slirp4netns' connect: EACCES
becomes an ICMP unreachable (ECONNREFUSED would crash libslirp on IPv6)."""

LISTENER = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"hi")
    c.close()
"""

PROBE = """
import errno, socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=4)
    print("ok" if s.recv(2) == b"hi" else "no banner")
except OSError as e:
    print(errno.errorcode.get(e.errno, "timeout") if e.errno else "timeout")
"""


@dataclass
class Scene:
    lab: Lab
    host: str
    guest: str
    lan: str

    def probe(self, address: str, port: int) -> str:
        return sh("python3", "-c", PROBE, address, str(port), netns=self.guest, timeout=20).stdout.strip()

    def start_stack(self, *argv: str) -> subprocess.Popen[bytes]:
        proc = self.lab.spawn(argv, netns=self.host)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            routes = [sh("ip", f"-{v}", "route", "show", "default", netns=self.guest, check=False).stdout
                      for v in (4, 6)]
            if all("via" in r for r in routes):
                return proc
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"the stack did not configure the guest: {proc.stderr.read().decode() if proc.stderr else ''}")


def _listen(lab: Lab, netns: str, address: str, port: int) -> None:
    proc = lab.spawn(["python3", "-u", "-c", LISTENER, address, str(port)], netns=netns)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"


@pytest.fixture
def scene(lab: Lab) -> Iterator[Scene]:
    host, guest, lan = lab.netns("gfrh"), lab.netns("gfrg"), lab.netns("gfrl")
    lab.veth(host, "h0", lan, "l0")
    for netns, dev, v4, v6 in ((host, "h0", "198.51.100.1/24", "2001:db8:1::1/64"),
                               (lan, "l0", "198.51.100.2/24", "2001:db8:1::2/64")):
        lab.addr(netns, dev, v4)
        lab.addr(netns, dev, v6)
    sh("ip", "route", "add", "default", "via", "198.51.100.2", netns=host)
    sh("ip", "-6", "route", "add", "default", "via", "2001:db8:1::2", netns=host)
    sh("sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0", netns=guest)
    _listen(lab, host, "::", HOST_PORT)
    _listen(lab, host, "127.0.0.1", LOOP_PORT)
    _listen(lab, lan, "::", LAN_PORT)
    yield Scene(lab, host, guest, lan)




def _guarded(scene: Scene, log: Path, *extra: str) -> None:
    scene.start_stack(GUESTFENCE, "rootless", "slirp4netns", "--netns", f"/run/netns/{scene.guest}",
                      "--log", str(log), "--json-log", *extra, "--", "--enable-ipv6")


def test_without_guestfence_the_guest_reaches_host_services(scene: Scene) -> None:
    scene.start_stack("slirp4netns", "--configure", "--mtu=65520", "--enable-ipv6", "--netns-type=path",
                      f"/run/netns/{scene.guest}", "tap0")
    assert scene.probe("198.51.100.1", HOST_PORT) == "ok"
    assert scene.probe("2001:db8:1::1", HOST_PORT) == "ok"
    assert scene.probe("10.0.2.2", LOOP_PORT) == "ok"


def test_host_addresses_are_refused_and_the_lan_is_reached(scene: Scene, tmp_path: Path) -> None:
    log = tmp_path / "denied.jsonl"
    _guarded(scene, log)
    assert scene.probe("198.51.100.1", HOST_PORT) == SLIRP_REFUSAL
    assert scene.probe("2001:db8:1::1", HOST_PORT) == SLIRP_REFUSAL
    assert scene.probe("10.0.2.2", LOOP_PORT) == SLIRP_REFUSAL
    assert scene.probe("198.51.100.2", LAN_PORT) == "ok"
    assert scene.probe("2001:db8:1::2", LAN_PORT) == "ok"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    seen = {(r["destination"], r["guest_destination"]) for r in records}
    assert (f"tcp://127.0.0.1:{LOOP_PORT}", f"tcp://10.0.2.2:{LOOP_PORT}") in seen
    assert (f"tcp://198.51.100.1:{HOST_PORT}", f"tcp://198.51.100.1:{HOST_PORT}") in seen
    assert (f"tcp://[2001:db8:1::1]:{HOST_PORT}", f"tcp://[2001:db8:1::1]:{HOST_PORT}") in seen
    assert all(r["decided_by"].startswith("deny tcp://@host") for r in records)


def test_an_allowed_host_port_is_carved_out_of_the_deny(scene: Scene, tmp_path: Path) -> None:
    _guarded(scene, tmp_path / "log", "--net-allow", f"tcp://@host:{LOOP_PORT}")
    assert scene.probe("10.0.2.2", LOOP_PORT) == "ok"
    assert scene.probe("198.51.100.1", HOST_PORT) == SLIRP_REFUSAL


def test_addresses_are_followed_as_they_come_and_go(scene: Scene, tmp_path: Path) -> None:
    _guarded(scene, tmp_path / "log")
    sh("ip", "addr", "add", "203.0.113.7/32", "dev", "l0", netns=scene.lan)
    assert scene.probe("203.0.113.7", LAN_PORT) == "ok"
    sh("ip", "addr", "add", "203.0.113.7/32", "dev", "lo", netns=scene.host)
    assert scene.probe("203.0.113.7", HOST_PORT) == SLIRP_REFUSAL
    assert scene.probe("203.0.113.7", LAN_PORT) == SLIRP_REFUSAL
    sh("ip", "addr", "del", "203.0.113.7/32", "dev", "lo", netns=scene.host)
    assert scene.probe("203.0.113.7", LAN_PORT) == "ok"


@pytest.fixture
def nobody_tree() -> Iterator[Path]:
    """guestfence and pyroute2 copied where user nobody can read them: the
    checkout may sit under a directory only root can enter."""
    import pyroute2

    import guestfence

    tree = Path(tempfile.mkdtemp(prefix="gf-rootless-", dir="/tmp"))
    try:
        for package in (guestfence, pyroute2):
            source = Path(package.__file__).parent
            shutil.copytree(source, tree / source.name, ignore=shutil.ignore_patterns("__pycache__"))
        for path in (tree, *tree.rglob("*")):
            path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)  # the sandbox launcher
        yield tree
    finally:
        shutil.rmtree(tree)


ROOTLESS_RUN = """
set -e
unshare -Urn sh -c 'ip link set lo up; exec sleep 60' &
GUEST=$!
sleep 0.5
/usr/bin/python3 -c 'import sys; from guestfence.cli import main; sys.exit(main())' \\
    rootless slirp4netns "$GUEST" --log - &
STACK=$!
for i in $(seq 50); do
    nsenter -t "$GUEST" -U -n --preserve-credentials ip -4 route | grep -q default && break
    sleep 0.2
done
for target in "198.51.100.1 $HOST_PORT" "10.0.2.2 $LOOP_PORT" "198.51.100.2 $LAN_PORT"; do
    nsenter -t "$GUEST" -U -n --preserve-credentials python3 -c "$PROBE" $target
done
kill "$STACK" "$GUEST"
"""


def test_fully_rootless_supervisor_and_stack(scene: Scene, nobody_tree: Path) -> None:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(nobody_tree), "PROBE": PROBE,
           "HOST_PORT": str(HOST_PORT), "LOOP_PORT": str(LOOP_PORT), "LAN_PORT": str(LAN_PORT)}
    result = subprocess.run(
        ["ip", "netns", "exec", scene.host, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         "sh", "-c", ROOTLESS_RUN],
        capture_output=True, text=True, timeout=60, env=env, cwd="/",
    )
    assert result.stdout.split() == [SLIRP_REFUSAL, SLIRP_REFUSAL, "ok"], result.stderr


def test_passt_is_refused_up_front_without_ptrace_capability(nobody_tree: Path) -> None:
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c",
         "import sys; from guestfence.cli import main; sys.exit(main())", "rootless", "pasta", "--", "true"],
        capture_output=True, text=True, timeout=30, env={"PATH": os.environ["PATH"], "PYTHONPATH": str(nobody_tree)},
        cwd="/",
    )
    assert result.returncode == 3
    assert "CAP_SYS_PTRACE" in result.stderr and "--as-user" in result.stderr


PASTA_GUEST = """
for target in "198.51.100.1 $HOST_PORT" "198.51.100.2 $LAN_PORT"; do
    python3 -c "$PROBE" $target
done
"""


def _pasta_as_nobody(scene: Scene, *launcher: str) -> list[str]:
    """The pasta guest's probe results; ``launcher`` runs pasta, ending where its options begin."""
    env = {**os.environ, "PROBE": PROBE, "HOST_PORT": str(HOST_PORT), "LAN_PORT": str(LAN_PORT)}
    result = subprocess.run(
        ["ip", "netns", "exec", scene.host, *launcher, "--config-net", "-a", "192.0.2.100", "-n", "24",
         "-g", "192.0.2.2", "--", "sh", "-c", PASTA_GUEST],
        capture_output=True, text=True, timeout=60, env=env, cwd="/",
    )
    return result.stdout.split()


def test_without_guestfence_a_pasta_guest_reaches_host_services(scene: Scene) -> None:
    assert _pasta_as_nobody(scene, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "pasta", "-f") == [
        "ok", "ok"]


def test_pasta_with_a_root_supervisor_runs_as_the_user(scene: Scene) -> None:
    assert _pasta_as_nobody(scene, GUESTFENCE, "rootless", "pasta", "--as-user", "nobody", "--") == [
        "ECONNREFUSED", "ok"]


def _nft_tables(netns: str) -> str:
    return sh("nft", "list", "tables", netns=netns).stdout


def test_nft_mode_filters_the_stack_users_sockets_in_the_kernel(scene: Scene) -> None:
    seen = _pasta_as_nobody(scene, GUESTFENCE, "rootless", "pasta", "--mode", "nft", "--user", "nobody", "--")
    # pasta (2023-03) answers a refused connect by leaving the guest's SYN
    # unanswered: the guest times out rather than seeing a reset.
    assert seen in (["timeout", "ok"], ["ECONNREFUSED", "ok"])
    listed = sh("nft", "list", "table", "inet", "guestfence_rootless", netns=scene.host).stdout
    assert "owner.65534" not in listed and "65534" not in listed


def test_nft_mode_rules_follow_new_host_addresses_and_flush_removes_them(scene: Scene, tmp_path: Path) -> None:
    plan = json.loads(sh(GUESTFENCE, "rootless", "slirp4netns", "42", "--mode", "nft", "--user", "nobody",
                         "--dry-run", netns=scene.host).stdout)
    rules = plan["nftables"]
    sh("/usr/bin/python3", "-c", "import json,sys,nftables; n=nftables.Nftables(); "
       "rc,_,err=n.json_cmd({'nftables': json.loads(sys.argv[1])}); sys.exit(rc and err)",
       json.dumps(rules), netns=scene.host)
    probe_as_nobody = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", PROBE)
    assert sh(*probe_as_nobody, "198.51.100.2", str(LAN_PORT), netns=scene.host).stdout.strip() == "ok"
    sh("ip", "addr", "add", "203.0.113.9/32", "dev", "lo", netns=scene.host)
    assert sh(*probe_as_nobody, "203.0.113.9", str(HOST_PORT), netns=scene.host).stdout.strip() == "ECONNREFUSED"
    assert sh("python3", "-c", PROBE, "203.0.113.9", str(HOST_PORT), netns=scene.host).stdout.strip() == "ok"
    assert "guestfence_rootless" in _nft_tables(scene.host)
    sh(GUESTFENCE, "flush", "--state-dir", str(tmp_path), netns=scene.host)
    assert "guestfence_rootless" not in _nft_tables(scene.host)
