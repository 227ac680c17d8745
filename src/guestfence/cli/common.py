"""Options and output helpers shared by several commands."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from typing import Any

from guestfence.config import load_policy
from guestfence.policy.grammar import parse_policy
from guestfence.policy.model import Policy

POLICY_HELP = """\
policy options (combine freely: the rules are united, --default wins):
  --policy FILE[:NAME]   a TOML policy file, or its [policy.NAME]
  --net-allow RULE       allow RULE (repeatable)
  --net-deny RULE        deny RULE (repeatable)
  --default allow|deny   the verdict when no rule matches (default: deny)
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the hand-written layout of descriptions and examples."""


def add_policy_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("policy")
    group.add_argument("--policy", metavar="FILE[:NAME]", help="TOML policy file, optionally one named policy in it")
    group.add_argument("--net-allow", metavar="RULE", action="append", default=[], help="allow RULE (repeatable)")
    group.add_argument("--net-deny", metavar="RULE", action="append", default=[], help="deny RULE (repeatable)")
    group.add_argument("--default", choices=("allow", "deny"), help="verdict when no rule matches (default: deny)")


def policy_from_args(args: argparse.Namespace) -> Policy:
    """The policy the options describe. Raises PolicyError."""
    base = load_policy(args.policy) if args.policy else Policy()
    extra = parse_policy(allow=args.net_allow, deny=args.net_deny, default=args.default or base.default.value)
    return Policy.of(
        default=extra.default,
        allow=base.allow + base.allow_unix + extra.allow + extra.allow_unix,
        deny=base.deny + base.deny_unix + extra.deny + extra.deny_unix,
    )


def print_json(value: Any) -> None:
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
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda sig, _frame: proc.send_signal(sig))
    status = proc.wait()
    return 128 - status if status < 0 else status
