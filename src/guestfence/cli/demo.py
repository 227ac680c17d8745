"""``guestfence demo``: the policy core at work on a built-in policy, then
the VM-guest firewall at work in a lab of its own (guestfence.demolab):
what a guest reaches before guestfence, the guest registered, what it
reaches after, and the ruleset applied. The machine's own ruleset is never
touched; the lab is removed at the end, on errors and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

from guestfence.cli.common import HelpFormatter, format_table
from guestfence.demolab import DemoLab, run
from guestfence.config import format_policy, parse_config
from guestfence.policy.decide import decide
from guestfence.policy.grammar import parse_destination
from guestfence.policy.model import Context, local_types

DEMO_POLICY = """\
# A VM guest may reach its gateway's API port and ping; nothing else on the host.
default = "deny"
allow = ["tcp://@gateway:8080", "icmp://@gateway", "udp://[2001:db8::53]:53"]
deny = ["tcp://192.0.2.0/24:22"]
"""
DEMO_GATEWAY = ipaddress.ip_address("192.0.2.1")
DEMO_HOST_ADDRESSES = frozenset({DEMO_GATEWAY, ipaddress.ip_address("198.51.100.7")})
DEMO_DESTINATIONS = (
    "tcp://192.0.2.1:8080",
    "tcp://192.0.2.1:22",
    "udp://192.0.2.1:8080",
    "icmp://192.0.2.1",
    "tcp://[::ffff:192.0.2.1]:22",
    "udp://[2001:db8::53]:53",
    "tcp://198.51.100.7:5432",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="show guestfence at work on a built-in example",
        description="Explain a built-in policy, then (as root) build a two-namespace lab with a VM guest on a\n"
        "vmtap- interface and show what the guest reaches before and after `guestfence guest add`.",
        epilog="examples:\n  guestfence demo\n  guestfence demo --no-lab     # the policy part only, no root needed\n",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--no-lab", action="store_true", help="skip the network-namespace part")
    parser.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    policy = parse_config(DEMO_POLICY, source="<demo>").policy(None)
    print("A built-in policy, as written:\n")
    print("    " + DEMO_POLICY.replace("\n", "\n    ").rstrip())
    print("\n...and normalised (what `guestfence check` prints):\n")
    print("    " + format_policy(policy).replace("\n", "\n    ").rstrip())
    context = Context(gateways=frozenset({DEMO_GATEWAY}), address_type=local_types(DEMO_HOST_ADDRESSES))
    print(f"\nWhat it decides, with @gateway = {DEMO_GATEWAY}:\n")
    rows = [("DESTINATION", "VERDICT", "DECIDED BY")]
    for text in DEMO_DESTINATIONS:
        decision = decide(policy, parse_destination(text), context)
        rows.append((text, decision.action.value, decision.decided_by))
    print(format_table(rows))
    print("\nNote udp://192.0.2.1:8080: a TCP rule never authorises UDP; and the mapped")
    print("address [::ffff:192.0.2.1] is decided as 192.0.2.1, so it cannot slip past the deny.")
    if args.no_lab:
        return 0
    if os.geteuid() != 0:
        print("\n(The VM-guest part builds network namespaces and needs root: run `sudo make demo`.)")
        return 0
    return run_lab_demo()


LAB_TCP = {22: "ssh", 5432: "postgres", 8080: "the VM's API"}
LAB_UDP = {53: "dns"}
LAB_POLICY = ("--net-allow", "tcp://@gateway:8080", "--net-allow", "icmp://@gateway")


def run_lab_demo() -> int:
    lab = DemoLab()
    state = Path(tempfile.mkdtemp(prefix="guestfence-demo-"))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        print("\n=== A VM guest on a TAP-like link ===\n")
        print(f"Building a lab: namespace {lab.host} (the host) and {lab.guest} (the VM),")
        print(f"joined by {lab.iface} <-> eth0; the host listens on every address it has:")
        print("  " + ", ".join(f"tcp {p} ({what})" for p, what in LAB_TCP.items()) + ", " + ", ".join(f"udp {p} ({what})" for p, what in LAB_UDP.items()))
        lab.build(tuple(LAB_TCP), tuple(LAB_UDP))
        targets = _lab_targets(lab)
        before = lab.probe(targets)
        command = ["guest", "add", "vm1", "--iface", lab.iface, "--address", DemoLab.GUEST_LINK[0], "--address", DemoLab.GUEST_LINK[1],
                   "--gateway", DemoLab.HOST_LINK[0].split("/")[0], "--gateway", DemoLab.HOST_LINK[1].split("/")[0], *LAB_POLICY]  # fmt: skip
        print("\nRegistering the guest, inside the host namespace:\n")
        print(f"  ip netns exec {lab.host} guestfence " + " ".join(command))
        guestfence = _guestfence_command()
        print("  -> " + run([*guestfence, *command, "--state-dir", str(state)], netns=lab.host).stdout.strip())
        after = lab.probe(targets)
        print("\nWhat the VM reaches (real connections from its namespace):\n")
        rows = [("DESTINATION", "SERVICE", "BEFORE", "AFTER")]
        for target in targets:
            rows.append((target, _service(target), _reached(before[target]), _reached(after[target])))
        print(format_table(rows))
        print("\nPing is the policy's like any flow: allowed to the gateway (icmp://@gateway), not to")
        print("198.51.100.7. Everything else is dropped, on every host address, including 198.51.100.7")
        print("which the policy never named; neighbour discovery and the ICMP errors of the guest's own")
        print("connections pass whatever the policy, because the link needs them.")
        print("\nThe ruleset guestfence applied (nft list table inet guestfence):\n")
        print(run(["nft", "list", "table", "inet", "guestfence"], netns=lab.host).stdout.rstrip())
        print("\nguestfence status:\n")
        print(run([*guestfence, "status", "--state-dir", str(state)], netns=lab.host, check=False).stdout.rstrip())
    finally:
        signal.signal(signal.SIGTERM, previous)
        lab.close()
        shutil.rmtree(state, ignore_errors=True)
        print("\nLab removed.")
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _guestfence_command() -> list[str]:
    return [sys.executable, "-c", "import sys; from guestfence.cli import main; sys.exit(main())"]


def _lab_targets(lab: DemoLab) -> list[str]:
    gateway4, gateway6 = (c.split("/")[0] for c in DemoLab.HOST_LINK)
    extra = DemoLab.HOST_EXTRA.split("/")[0]
    targets = [f"tcp://{gateway4}:{p}" for p in LAB_TCP] + [f"udp://{gateway4}:{p}" for p in LAB_UDP]
    targets += [f"tcp://[{gateway6}]:{p}" for p in (22, 8080)] + [f"tcp://{extra}:{p}" for p in (22, 5432)]
    return targets + [f"icmp://{gateway4}", f"icmp://{extra}"]


def _service(target: str) -> str:
    scheme, _, rest = target.partition("://")
    if scheme == "icmp":
        return "ping"
    port = int(rest.rpartition(":")[2])
    return (LAB_TCP if scheme == "tcp" else LAB_UDP).get(port, "")


def _reached(ok: bool) -> str:
    return "reached" if ok else "blocked"
