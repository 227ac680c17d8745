"""``guestfence demo``: the policy core at work on a built-in policy."""

from __future__ import annotations

import argparse
import ipaddress

from guestfence.cli.common import HelpFormatter, format_table
from guestfence.config import format_policy, parse_config
from guestfence.policy.decide import decide
from guestfence.policy.grammar import parse_destination
from guestfence.policy.model import Context

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
        description="Parse a built-in policy and explain what it decides for a handful of destinations.",
        epilog="example:\n  guestfence demo\n",
        formatter_class=HelpFormatter,
    )
    parser.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    policy = parse_config(DEMO_POLICY, source="<demo>").policy(None)
    print("A built-in policy, as written:\n")
    print("    " + DEMO_POLICY.replace("\n", "\n    ").rstrip())
    print("\n...and normalised (what `guestfence check` prints):\n")
    print("    " + format_policy(policy).replace("\n", "\n    ").rstrip())
    context = Context(gateways=frozenset({DEMO_GATEWAY}), is_local=DEMO_HOST_ADDRESSES.__contains__)
    print(f"\nWhat it decides, with @gateway = {DEMO_GATEWAY}:\n")
    rows = [("DESTINATION", "VERDICT", "DECIDED BY")]
    for text in DEMO_DESTINATIONS:
        decision = decide(policy, parse_destination(text), context)
        rows.append((text, decision.action.value, decision.decided_by))
    print(format_table(rows))
    print("\nNote udp://192.0.2.1:8080: a TCP rule never authorises UDP; and the mapped")
    print("address [::ffff:192.0.2.1] is decided as 192.0.2.1, so it cannot slip past the deny.")
    return 0
