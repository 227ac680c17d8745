"""Options and output helpers shared by several commands."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from typing import TYPE_CHECKING, Any

from guestfence.cli import HelpFormatter
from guestfence.errors import PolicyError
from guestfence.policy.model import parse_policy
from guestfence.policy.model import Address, Policy, Symbol, SymbolHost, unmap

if TYPE_CHECKING:  # only the commands that start a process need subprocess (cli/__init__: start-up)
    import subprocess


def add_policy_options(parser: argparse.ArgumentParser, *, default: str = "deny") -> None:
    """The policy options, listed once; ``default`` is what applies without --default."""
    group = parser.add_argument_group("policy", "combine freely: the rules are united, --default wins")
    group.add_argument("--policy", metavar="FILE[:NAME]", help="TOML policy file, optionally one named policy in it")
    group.add_argument("--net-allow", metavar="RULE", action="append", default=[], help="allow RULE (repeatable)")
    group.add_argument("--net-deny", metavar="RULE", action="append", default=[], help="deny RULE (repeatable)")
    group.add_argument("--default", choices=("allow", "deny"), help=f"verdict when no rule matches (default: {default})")


def policy_from_args(args: argparse.Namespace) -> Policy:
    """The policy the options describe. Raises PolicyError."""
    base = Policy()
    if args.policy:
        from guestfence.config import load_policy  # TOML: only for --policy (start-up of guest add)

        base = load_policy(args.policy)
    extra = parse_policy(allow=args.net_allow, deny=args.net_deny, default=args.default or base.default.value)
    return Policy.of(
        default=extra.default,
        allow=base.allow + base.allow_unix + extra.allow + extra.allow_unix,
        deny=base.deny + base.deny_unix + extra.deny + extra.deny_unix,
    )


def parse_gateways(texts: list[str]) -> frozenset[Address]:
    """``--gateway`` values. Raises PolicyError naming the bad one."""
    gateways = set()
    for text in texts:
        try:
            gateways.add(unmap(ipaddress.ip_address(text)))
        except ValueError:
            raise PolicyError(f"--gateway {text!r} is not an IP address (expected e.g. 192.0.2.1 or 2001:db8::1)") from None
    return frozenset(gateways)
def warn_gateway_undefined(policy: Policy, where: str) -> None:
    """@gateway with no gateway defined is decided closed; say so instead of staying silent."""
    for rule in policy.rules:
        if isinstance(rule.host, SymbolHost) and rule.host.symbol is Symbol.GATEWAY:
            effect = "matches nothing" if rule in policy.allow else "matches every destination of its protocol and ports"
            print(f"guestfence: warning: {rule} uses @gateway, which {where}; this rule {effect}", file=sys.stderr)


def print_json(value: Any) -> None:
    import json

    json.dump(value, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def format_table(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns, two spaces apart."""
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def wait_forwarding_signals(proc: subprocess.Popen[Any]) -> int:
    """Wait for the command guestfence started, passing on SIGINT, SIGTERM and
    SIGHUP; its exit status, or 128+N if it died of signal N, as a shell says."""
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda sig, _frame: proc.send_signal(sig))
    status = proc.wait()
    return 128 - status if status < 0 else status
