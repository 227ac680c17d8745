"""``guestfence check`` and ``guestfence explain``: the policy core, no enforcement."""

from __future__ import annotations

import argparse
import ipaddress
import sys

from guestfence.cli.common import (
    POLICY_HELP,
    HelpFormatter,
    add_policy_options,
    format_table,
    policy_from_args,
    print_json,
)
from guestfence.config import format_config, load_config
from guestfence.errors import PolicyError, RuleSyntaxError, raise_collected
from guestfence.netinfo import lookup_is_local
from guestfence.policy.decide import decide, decide_unix
from guestfence.policy.grammar import UNIX_SCHEME, parse_destination, parse_unix_destination
from guestfence.policy.model import Context, Flow, Policy, UnixFlow
from guestfence.resolve import resolve_names

CHECK_EPILOG = """\
Prints the policies in canonical form (valid TOML) and exits 0. On errors,
prints one message per problem with file:line:column, the offending text
and what was expected, and exits 2.

examples:
  guestfence check policy.toml
  guestfence check --json policy.toml
"""

EXPLAIN_EPILOG = POLICY_HELP + """
destinations:
  tcp://192.0.2.1:22   udp://[2001:db8::1]:53   icmp://203.0.113.9   192.0.2.1:443 (tcp)

@host is answered by this machine's routing table (is the address local
here, now?); @gateway by --gateway. DNS names in rules are resolved once
unless --no-resolve; a name that does not resolve is decided closed.
A unix destination (unix:///run/docker.sock, unix://@name) is decided by
its path as written; the sandbox decides on the path the guest's name
resolves to (symlinks followed).

examples:
  guestfence explain --policy policy.toml tcp://192.0.2.1:22 udp://192.0.2.1:53
  guestfence explain --net-allow tcp://@gateway:8080 --gateway 192.0.2.1 tcp://192.0.2.1:8080
  guestfence explain --default allow --net-deny '@host:*' --json tcp://127.0.0.1:22
  guestfence explain --default allow --net-deny @host unix:///run/docker.sock
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    check = subparsers.add_parser(
        "check",
        help="validate a policy file and print it normalised",
        description="Validate a TOML policy file and print its policies in canonical form.",
        epilog=CHECK_EPILOG,
        formatter_class=HelpFormatter,
    )
    check.add_argument("file", metavar="FILE", help="TOML policy file")
    check.add_argument("--json", action="store_true", help="print the policies as JSON")
    check.set_defaults(func=run_check)

    explain = subparsers.add_parser(
        "explain",
        help="say which verdict a policy gives each destination, and why",
        description="For each destination, print the verdict and the rule (or default) that decided it.",
        epilog=EXPLAIN_EPILOG,
        formatter_class=HelpFormatter,
    )
    add_policy_options(explain)
    explain.add_argument("destinations", metavar="DEST", nargs="+", help="e.g. tcp://192.0.2.1:22, unix:///run/docker.sock")
    explain.add_argument(
        "--gateway", metavar="ADDR", action="append", default=[], help="the address @gateway stands for (repeatable)"
    )
    explain.add_argument("--no-resolve", action="store_true", help="do not resolve DNS names in rules")
    explain.add_argument("--json", action="store_true", help="print machine-readable JSON")
    explain.set_defaults(func=run_explain)


def run_check(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    if args.json:
        print_json(
            {
                "source": config.source,
                "policies": [policy_json(name, policy) for name, policy in config.policies.items()],
            }
        )
    else:
        print(format_config(config), end="")
    return 0


def policy_json(name: str | None, policy: Policy) -> dict[str, object]:
    return {
        "name": name,
        "default": policy.default.value,
        "allow": [str(r) for r in policy.allow + policy.allow_unix],
        "deny": [str(r) for r in policy.deny + policy.deny_unix],
    }


def run_explain(args: argparse.Namespace) -> int:
    policy = policy_from_args(args)
    flows = _parse_destinations(args.destinations)
    gateways = _parse_gateways(args.gateway)
    names = {}
    if policy.names() and not args.no_resolve:
        resolution = resolve_names(policy.names())
        names = dict(resolution.addresses)
        for name, why in resolution.failures.items():
            print(f"guestfence: warning: {name} did not resolve ({why}); decided closed", file=sys.stderr)
    context = Context(gateways=gateways, is_local=lookup_is_local, names=names)
    decisions = [
        (flow, decide_unix(policy, flow) if isinstance(flow, UnixFlow) else decide(policy, flow, context))
        for flow in flows
    ]
    if args.json:
        print_json(
            [
                {
                    "destination": str(flow),
                    "verdict": d.action.value,
                    "rule": None if d.rule is None else str(d.rule),
                    "decided_by": d.decided_by,
                    "reason": d.reason,
                }
                for flow, d in decisions
            ]
        )
    else:
        rows = [("DESTINATION", "VERDICT", "DECIDED BY")]
        rows += [(str(flow), d.action.value, d.decided_by) for flow, d in decisions]
        print(format_table(rows))
    return 0


def _parse_destinations(texts: list[str]) -> list[Flow | UnixFlow]:
    flows: list[Flow | UnixFlow] = []
    errors = []
    for text in texts:
        try:
            flows.append(parse_unix_destination(text) if text.startswith(UNIX_SCHEME) else parse_destination(text))
        except RuleSyntaxError as e:
            errors.append(e.located(source="destination", line=None, offset=1))
    raise_collected(errors)
    return flows


def _parse_gateways(texts: list[str]) -> frozenset:
    gateways = set()
    for text in texts:
        try:
            gateways.add(ipaddress.ip_address(text))
        except ValueError:
            raise PolicyError(f"--gateway {text!r} is not an IP address") from None
    return frozenset(gateways)
