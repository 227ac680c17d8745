"""``guestfence check`` and ``guestfence explain``: the policy core, no enforcement."""

from __future__ import annotations

import argparse
import sys

from guestfence.cli.common import (
    HelpFormatter,
    add_policy_options,
    format_table,
    parse_gateways,
    policy_from_args,
    print_json,
    warn_gateway_undefined,
)
from guestfence.errors import PolicyError, RuleSyntaxError, raise_collected
from guestfence.policy.decide import LINK_ESSENTIALS, decide, decide_translated, decide_unix
from guestfence.policy.grammar import UNIX_SCHEME, parse_destination, parse_unix_destination
from guestfence.policy.model import Address, AddressType, Context, Decision, Flow, Policy, Proto, UnixFlow
from guestfence.resolve import resolve_names

CHECK_EPILOG = """\
Prints the policies in canonical form (valid TOML) and exits 0. On errors,
prints one message per problem with file:line:column, the offending text
and what was expected, and exits 2.

examples:
  guestfence check policy.toml
  guestfence check --json policy.toml
"""

EXPLAIN_EPILOG = """destinations:
  tcp://192.0.2.1:22   udp://[2001:db8::1]:53   icmp://203.0.113.9   192.0.2.1:443 (tcp)

@host is every address this machine receives on, answered by its routing
table now: its own addresses, all of loopback (0.0.0.0 and :: are delivered
there), broadcast, multicast and anycast. @gateway is --gateway. DNS names
in rules are resolved once unless --no-resolve; a name that does not
resolve is decided closed. ICMP destinations are ping (echo); what a link
needs (neighbour discovery, MLD, ICMP errors of existing connections) is
always allowed.

--guest NAME answers as the guests' firewall does for that registered
guest: its policy and gateways, the addresses its names resolved to,
other guests reached only through rules naming their addresses, and
loopback or unspecified destinations dropped by the kernel as martians.

A unix destination (unix:///run/docker.sock, unix://@name) is decided by
the unix:// rules on its path as written; the sandbox decides on the path
the guest's name resolves to (symlinks followed).

examples:
  guestfence explain --policy policy.toml tcp://192.0.2.1:22 udp://192.0.2.1:53
  guestfence explain --net-allow tcp://@gateway:8080 --gateway 192.0.2.1 tcp://192.0.2.1:8080
  guestfence explain --default allow --net-deny '@host:*' --json tcp://127.0.0.1:22
  guestfence explain --guest vm1 --dnat tcp://203.0.113.80:80=tcp://192.0.2.1:22 tcp://203.0.113.80:80
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
    explain.add_argument("destinations", metavar="DEST", nargs="+", help="e.g. tcp://192.0.2.1:22")
    explain.add_argument(
        "--gateway", metavar="ADDR", action="append", default=[], help="the address @gateway stands for (repeatable)"
    )
    explain.add_argument("--guest", metavar="NAME",
                         help="decide as the firewall does for registered guest NAME (its policy, gateways, other guests)")
    explain.add_argument("--state-dir", metavar="DIR", help="where guests are recorded, with --guest (default: /var/lib/guestfence)")
    explain.add_argument("--dnat", metavar="AIMED=DELIVERED", action="append", default=[],
                         help="the host translates destination AIMED to DELIVERED: decide both (repeatable)")
    explain.add_argument("--no-resolve", action="store_true", help="do not resolve DNS names in rules")
    explain.add_argument("--json", action="store_true", help="print machine-readable JSON")
    explain.set_defaults(func=run_explain)


def run_check(args: argparse.Namespace) -> int:
    from guestfence.config import format_config, load_config  # TOML: for check and --policy only (start-up of explain)

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
    flows = _parse_destinations(args.destinations)
    translations = _parse_translations(args.dnat)
    essentials: dict[Flow | UnixFlow, tuple[str, ...]] = {}
    if args.guest:
        decisions = _explain_guest(args, flows, translations)
        from guestfence.guests.explain import link_essentials  # the guests' firewall: loaded for --guest only

        essentials = {flow: link_essentials(flow) for flow, _ in decisions if isinstance(flow, Flow)}
    else:
        decisions = _explain_policy(args, flows, translations)
    if args.json:
        print_json(
            [
                {
                    "destination": str(flow),
                    **({"delivered_to": str(translations[flow])} if flow in translations else {}),
                    "verdict": d.action.value,
                    "rule": None if d.rule is None else str(d.rule),
                    "decided_by": d.decided_by,
                    "reason": d.reason,
                    **({"link_essentials": list(essentials[flow])} if flow in essentials else {}),
                }
                for flow, d in decisions
            ]
        )
    else:
        rows = [("DESTINATION", "VERDICT", "DECIDED BY")]
        rows += [(str(flow), d.action.value, d.decided_by) for flow, d in decisions]
        print(format_table(rows))
        for aimed, delivered in translations.items():
            print(f"({aimed}: the host translates it to {delivered}; allowed only if both are)")
        if any(isinstance(flow, Flow) and flow.proto is Proto.ICMP for flow in flows):
            print(f"(icmp is ping, decided by icmp:// rules; link essentials are allowed whatever the policy: {LINK_ESSENTIALS})")
    return 0


def _address_type(address: Address) -> AddressType:
    """The kernel's route type of ``address``, imported only when a rule asks
    (the sandbox package loads libseccomp; explain mostly needs none of it)."""
    from guestfence.sandbox.route import address_type

    return address_type(address)


def _parse_translations(texts: list[str]) -> dict[Flow, Flow]:
    """``--dnat AIMED=DELIVERED`` values. Raises PolicyError."""
    translations = {}
    for text in texts:
        aimed_text, sep, delivered_text = text.partition("=")
        if not sep:
            raise PolicyError(f"--dnat {text!r}: expected AIMED=DELIVERED, e.g. tcp://203.0.113.80:80=tcp://192.0.2.1:8080")
        aimed, delivered = _parse_destinations([aimed_text, delivered_text])
        if not isinstance(aimed, Flow) or not isinstance(delivered, Flow):
            raise PolicyError(f"--dnat {text!r}: a translation is between network destinations, not unix sockets")
        if aimed.proto is not delivered.proto:
            raise PolicyError(f"--dnat {text!r}: both sides must have the same protocol")
        translations[aimed] = delivered
    return translations


def _explain_policy(args: argparse.Namespace, flows: list[Flow | UnixFlow],
                    translations: dict[Flow, Flow]) -> list[tuple[Flow | UnixFlow, Decision]]:
    policy = policy_from_args(args)
    gateways = parse_gateways(args.gateway)
    if not gateways:
        warn_gateway_undefined(policy, "is not defined without --gateway")
    names = {}
    if policy.names() and not args.no_resolve:
        resolution = resolve_names(policy.names())
        names = dict(resolution.addresses)
        for name, why in resolution.failures.items():
            print(f"guestfence: warning: {name} did not resolve ({why}); decided closed", file=sys.stderr)
    context = Context(gateways=gateways, address_type=_address_type, names=names)
    return [(flow, decide_unix(policy, flow) if isinstance(flow, UnixFlow)
             else decide(policy, flow, context) if flow not in translations
             else decide_translated(policy, flow, translations[flow], context)) for flow in flows]


def _explain_guest(args: argparse.Namespace, flows: list[Flow | UnixFlow],
                   translations: dict[Flow, Flow]) -> list[tuple[Flow | UnixFlow, Decision]]:
    """As the guests' firewall decides for the registered guest ``args.guest``."""
    if any(isinstance(flow, UnixFlow) for flow in flows):
        raise PolicyError("--guest: a VM or container guest has no way to the host's unix sockets; "
                          "unix destinations are decided for the process sandbox (without --guest)")
    from guestfence.guests.explain import explain_registered
    from guestfence.state import state_dir

    given = [o for o, v in (("--policy", args.policy), ("--net-allow", args.net_allow), ("--net-deny", args.net_deny),
                            ("--default", args.default), ("--gateway", args.gateway)) if v]
    if given:
        raise PolicyError(f"--guest takes the registered guest's policy and gateways; {', '.join(given)} cannot be given with it")
    network = [flow for flow in flows if isinstance(flow, Flow)]
    return list(explain_registered(state_dir(args.state_dir), args.guest, network, _address_type, translations))


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
