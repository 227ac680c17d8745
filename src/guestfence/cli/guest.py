"""``guestfence guest add|remove|list``, ``status``, ``restore``, ``flush``,
``apply FILE``: the VM-guest firewall. Parsing and presentation only.

Every changing command takes ``--dry-run`` (print what it would add,
change and remove; with ``--json`` the libnftables batch) and records what it applied in the
state directory (``--state-dir``, ``$GUESTFENCE_STATE_DIR``, or
/var/lib/guestfence; see guestfence.state). Run inside ``ip netns exec NS``
every command works on that namespace's ruleset and record.
"""

from __future__ import annotations

import argparse
import sys

from guestfence.cli.common import (
    HelpFormatter,
    add_policy_options,
    format_table,
    policy_from_args,
    print_json,
)
from guestfence.guests.firewall import StatusReport, member_to_json
from guestfence.guests.guest import COMMENT_HELP, parse_guest
from guestfence.operations import Outcome, add_guest, apply_file, flush, read_registry, read_status, remove_guest, restore
from guestfence.state import state_dir

ADD_EPILOG = """The guest reaches exactly what its policy allows: default deny, deny beats
allow. @gateway is the --gateway address(es), @host every host address.
Adding a guest of an existing name replaces it. Interfaces matching the
guest pattern (default vmtap*) that belong to no guest are dropped.

examples:
  guestfence guest add vm1 --iface vmtap-abcd --address 192.0.2.2/30 \\
      --gateway 192.0.2.1 --net-allow tcp://@gateway:8080
  guestfence guest add vm2 --iface vmtap-b --address 192.0.2.6/30 --address 2001:db8:2::2/64 \\
      --gateway 192.0.2.5 --policy policy.toml:web --masquerade
  guestfence guest add vm3 --iface vnet3 --bridge br0 --mac 02:00:00:00:00:03 \\
      --address 198.51.100.3/24 --gateway 198.51.100.1 --net-allow icmp://@gateway
  guestfence guest add vm1 ... --dry-run       # say what would change, change nothing
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    state = argparse.ArgumentParser(add_help=False, formatter_class=HelpFormatter)
    state.add_argument("--state-dir", metavar="DIR", help="where the applied state is recorded (default: /var/lib/guestfence)")
    changing = argparse.ArgumentParser(add_help=False, parents=[state], formatter_class=HelpFormatter)
    changing.add_argument("--dry-run", action="store_true", help="print what would change, change nothing (with --json: the nftables batch)")
    changing.add_argument("--json", action="store_true", help="print machine-readable JSON")
    reporting = argparse.ArgumentParser(add_help=False, parents=[state], formatter_class=HelpFormatter)
    reporting.add_argument("--json", action="store_true", help="print machine-readable JSON")

    guest = subparsers.add_parser(
        "guest",
        help="register VM guests with the nftables firewall",
        description="Add, remove and list VM guests; each reaches only what its policy allows.",
        epilog="examples:\n  guestfence guest add vm1 --iface vmtap-abcd --address 192.0.2.2/30 "
        "--gateway 192.0.2.1 --net-allow tcp://@gateway:8080\n  guestfence guest list\n  guestfence guest remove vm1\n",
        formatter_class=HelpFormatter,
    )
    actions = guest.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser(
        "add", parents=[changing], help="register a guest (or replace one)", epilog=ADD_EPILOG, formatter_class=HelpFormatter
    )
    add.add_argument("name", metavar="NAME", help="guest name: 1-32 letters, digits, '-' or '_'")
    add.add_argument("--iface", required=True, help="the guest's host-side interface (TAP or veth; macvtap is not covered)")
    add.add_argument("--address", action="append", required=True, metavar="CIDR", help="the guest's own address, e.g. 192.0.2.2/30 (repeatable)")
    add.add_argument("--gateway", action="append", default=[], metavar="ADDR", help="the host-side address @gateway stands for (repeatable)")
    add.add_argument("--mac", help="the guest's MAC: frames from any other are dropped")
    add.add_argument("--masquerade", action="store_true", help="masquerade the guest's traffic leaving through the host")
    add.add_argument("--bridge", metavar="BR", help="the bridge IFACE is a port of (needs --mac)")
    add.add_argument("--comment", default="", help=COMMENT_HELP)
    add.add_argument("--force", action="store_true",
                     help="register an interface the host itself uses (loopback, a default route, host addresses)")
    add_policy_options(add)
    add.set_defaults(func=run_add, needs_root=_unless_dry_run)

    remove = actions.add_parser("remove", parents=[changing], help="unregister a guest; its rules go", formatter_class=HelpFormatter,
                                epilog="example:\n  guestfence guest remove vm1\n")
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(func=run_remove, needs_root=_unless_dry_run)

    listing = actions.add_parser("list", parents=[reporting], help="registered guests, their policies and resolved names",
                                 formatter_class=HelpFormatter, epilog="examples:\n  guestfence guest list\n  guestfence guest list --json\n")
    listing.set_defaults(func=run_list)

    commands = (
        ("status", reporting, run_status, "per guest: rules, accepted/dropped packets, drift from the record",
         "Compare the live ruleset with the recorded state. Exits 1 when something drifted.",
         "  guestfence status\n  ip netns exec lab1 guestfence status --json\n"
         "  guestfence status --prometheus-textfile /var/lib/prometheus/node-exporter/guestfence.prom\n"),
        ("restore", changing, run_restore, "re-apply the recorded state (after a reboot)",
         "Rebuild the guestfence tables from the recorded state in one transaction; DNS names are resolved anew.",
         "  guestfence restore\n  guestfence restore --dry-run\n"),
        ("flush", changing, run_flush, "remove everything guestfence installed, nothing else",
         "Delete the guestfence tables. The record is kept: `guestfence restore` brings them back.",
         "  guestfence flush\n"),
        ("apply", changing, run_apply, "make the live state equal to a TOML file",
         "Apply the [[guest]] tables of FILE in one transaction: its guests are added or changed; registered "
         "guests the file does not name are kept, or removed with --prune. Prints what it adds, changes and removes.",
         "  guestfence apply guests.toml\n  guestfence apply --dry-run guests.toml\n"
         "  guestfence apply --prune guests.toml      # the file is the whole truth\n"),
    )  # fmt: skip
    for name, parent, func, summary, description, examples in commands:
        command = subparsers.add_parser(name, parents=[parent], help=summary, description=description,
                                        epilog="examples:\n" + examples, formatter_class=HelpFormatter)  # fmt: skip
        command.set_defaults(func=func, needs_root=True if name == "status" else _unless_dry_run)
        if name == "status":
            command.add_argument("--prometheus", action="store_true", help="print the metrics in Prometheus' text format")
            command.add_argument("--prometheus-textfile", metavar="PATH",
                                 help="write them atomically to PATH (node-exporter's textfile collector)")  # fmt: skip
        if name == "apply":
            command.add_argument("file", metavar="FILE", help="TOML file with [[guest]] tables (and [policy.NAME] they use)")
            command.add_argument("--prune", action="store_true", help="also remove the registered guests FILE does not name")


def _unless_dry_run(args: argparse.Namespace) -> bool:
    return not args.dry_run


def run_add(args: argparse.Namespace) -> int:
    guest = parse_guest(
        name=args.name,
        iface=args.iface,
        addresses=args.address,
        gateways=args.gateway,
        policy=policy_from_args(args),
        mac=args.mac,
        masquerade=args.masquerade,
        bridge=args.bridge,
        comment=args.comment,
    )
    outcome = add_guest(state_dir(args.state_dir), guest, dry_run=args.dry_run, force=args.force)
    _warn(outcome.warnings)
    member = outcome.member
    assert member is not None
    for name, why in sorted(member.unresolved.items()):
        _warn([f"{name} did not resolve ({why}); allow rules about it match nothing, deny rules everything"])
    if args.dry_run:
        return _print_dry_run(args, outcome, one_feature=True)
    if args.json:
        print_json({"added": member_to_json(member)})
    else:
        policy = guest.policy
        print(f"guest {guest.name} added on {guest.iface}: {len(policy.allow)} allow, {len(policy.deny)} deny rules, default {policy.default.value}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    outcome = remove_guest(state_dir(args.state_dir), args.name, dry_run=args.dry_run)
    _warn(outcome.warnings)
    if args.dry_run:
        return _print_dry_run(args, outcome, one_feature=True)
    if args.json:
        print_json({"removed": args.name})
    else:
        print(f"guest {args.name} removed")
    return 0


def run_list(args: argparse.Namespace) -> int:
    registry = read_registry(state_dir(args.state_dir))
    _warn(registry.problems())
    if args.json:
        print_json({"pattern": registry.settings.pattern, "guests": [member_to_json(m) for m in registry.members],
                    "problems": registry.problems()})  # fmt: skip
        return 0
    rows = [("NAME", "IFACE", "ADDRESSES", "GATEWAY", "POLICY", "RESOLVED")]
    for m in registry.members:
        g = m.guest
        policy = " ".join([f"default={g.policy.default.value}"] + [f"+{r}" for r in g.policy.allow] + [f"-{r}" for r in g.policy.deny])
        resolved = [f"{name}={','.join(sorted(str(a) for a in found))}" for name, found in sorted(m.names.items())]
        resolved += [f"{name}=(unresolved)" for name in sorted(m.unresolved)]
        iface = g.iface if g.bridge is None else f"{g.iface}@{g.bridge}"
        rows.append((g.name, iface, ",".join(str(a) for a in g.addresses), ",".join(str(a) for a in g.gateways) or "-",
                     policy, " ".join(resolved) or "-"))  # fmt: skip
    print(format_table(rows) if registry.members else "no guests registered")
    return 0


def run_status(args: argparse.Namespace) -> int:
    if args.prometheus or args.prometheus_textfile:
        from guestfence.metrics import collect_metrics, write_textfile
        from guestfence.prometheus import render as render_prometheus

        metrics = collect_metrics(state_dir(args.state_dir))
        if args.prometheus_textfile:
            from pathlib import Path

            write_textfile(render_prometheus(metrics), Path(args.prometheus_textfile))
        else:
            print(render_prometheus(metrics), end="")
        return 1 if metrics.drifted else 0
    report = read_status(state_dir(args.state_dir), with_lockdown=True)
    if args.json:
        print_json(report.to_json())
    else:
        print(format_status(report))
    return 1 if report.drifted else 0


def format_status(report: StatusReport) -> str:
    """The text ``status`` prints: one row per guest, then every difference on a line of its own."""
    rows = [("NAME", "IFACE", "RULES", "ACCEPTED", "DROPPED", "DRIFT")]
    for s in report.guests:
        rows.append((s.name, s.iface, str(s.rules), _count(s.accepted_packets), _count(s.dropped_packets),
                     f"{len(s.drift)} difference(s)" if s.drift else "none"))  # fmt: skip
    lines = [format_table(rows) if report.guests else "no guests registered"]
    lines += [f"drift: guest {s.name}: {d}" for s in report.guests for d in s.drift]
    lines += [f"drift: {d}" for d in report.drift]
    return "\n".join(lines)


def run_restore(args: argparse.Namespace) -> int:
    return _report(args, restore(state_dir(args.state_dir), dry_run=args.dry_run), "restored")


def run_flush(args: argparse.Namespace) -> int:
    return _report(args, flush(state_dir(args.state_dir), dry_run=args.dry_run), "flushed (the record is kept)")


def run_apply(args: argparse.Namespace) -> int:
    from guestfence.config import load_config  # TOML: only apply reads a file (start-up of guest add)

    config = load_config(args.file)
    outcome = apply_file(state_dir(args.state_dir), config, prune=args.prune, dry_run=args.dry_run)
    return _report(args, outcome, f"applied {args.file}")


def _report(args: argparse.Namespace, outcome: Outcome, verb: str) -> int:
    """Print what the command did (or would do); exit 2 when a part of it could not be done."""
    _warn(outcome.warnings)
    if args.dry_run:
        _print_dry_run(args, outcome)
    elif args.json:
        print_json({"done": {plan.key: plan.record for plan in outcome.plans}, "problems": list(outcome.problems)})
    else:
        for plan in outcome.plans:
            for change in plan.changes:
                print(f"{plan.key}: {change}")
        print(f"{verb}: " + "; ".join(plan.summary for plan in outcome.plans))
    for problem in outcome.problems:
        print(f"guestfence: not done: {problem}", file=sys.stderr)
    return 2 if outcome.problems else 0


def _print_dry_run(args: argparse.Namespace, outcome: Outcome, *, one_feature: bool = False) -> int:
    """--dry-run: the changes in words; with --json the batches behind them
    (keyed by feature, unless the command is about ``one_feature``)."""
    if args.json:
        print_json(outcome.plans[0].shown if one_feature else {plan.key: plan.shown for plan in outcome.plans})
        return 0
    for plan in outcome.plans:
        for change in plan.changes or ("no change",):
            print(f"would {change}" if plan.changes else f"{plan.key}: no change")
    return 0


def _warn(lines: object) -> None:
    for line in lines:  # type: ignore[attr-defined]
        print(f"guestfence: warning: {line}", file=sys.stderr)


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)
