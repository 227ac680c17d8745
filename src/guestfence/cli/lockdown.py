"""``guestfence lockdown``: make interfaces dumb pipes to guests. Parsing and presentation only."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import NoReturn

from guestfence.cli.common import HelpFormatter, format_table, print_json
from guestfence.integrations.registry import reap
from guestfence.lockdown.feature import LOCKDOWN_KEY, interrupted, recorded_state
from guestfence.lockdown.links import collect_links, link_events
from guestfence.lockdown.pattern import parse_patterns
from guestfence.lockdown.plan import HOOKS, LockdownPlan
from guestfence.lockdown.report import collect_report, hook_label, report_to_json
from guestfence.lockdown.watch import LinkWatcher
from guestfence.nftables.apply import open_nft
from guestfence.operations import Outcome, lockdown_add, lockdown_remove
from guestfence.privilege import require_net_admin
from guestfence.state import StateStore, state_dir

DESCRIPTION = """\
Make interfaces dumb pipes to guests: the host's own stack processes nothing
that arrives on them (IPv4, IPv6, ARP), while the guests behind them (a
macvtap/macvlan, a bridge) keep all their traffic. Rules match interface
names, so they are in force before the interface exists; macvlan/macvtap
devices stacked on a locked interface are locked down with it (a macvtap
no process holds open passes frames to the host). Per-interface sysctls
are set now for existing interfaces and by `lockdown watch` for new ones.
`lockdown watch` also removes the guests QEMU's script, the libvirt hook or
the CNI plugin registered once their interface is gone (their teardown did
not run), so an interface re-created under that name is unregistered.
The patterns are recorded with the rest of guestfence's state, so `guestfence
restore`, `flush` and `apply FILE` ([lockdown] interfaces = [...]) include them.
"""

EPILOG = """\
patterns: an interface name, or a prefix followed by '*' (nftables wildcard)

examples:
  guestfence lockdown add eth0.1 'vlan*' vmtap-abcd
  guestfence lockdown add 'vlan*' --dry-run
  guestfence lockdown remove 'vlan*'
  guestfence lockdown list --json
  guestfence lockdown watch          # long-running; see docs/lockdown.md for a systemd unit
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lockdown",
        help="stop the host stack from processing anything on guest-only interfaces",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where guestfence records what it applied (default: $GUESTFENCE_STATE_DIR or /var/lib/guestfence)",
    )
    commands = parser.add_subparsers(dest="lockdown_command", metavar="ACTION", required=True)

    add = commands.add_parser("add", parents=[common], help="lock down interfaces matching PATTERNs",
                              description="Lock down every interface matching a PATTERN, now and when it appears.",
                              epilog=EPILOG, formatter_class=HelpFormatter)  # fmt: skip
    add.add_argument("patterns", metavar="PATTERN", nargs="+")
    add.add_argument("--force", action="store_true",
                     help="allow a pattern matching lo, a default-route interface or a registered guest's interface")
    add.add_argument("--dry-run", action="store_true", help="print the plan (rules and sysctls); change nothing")
    add.set_defaults(func=run_add)

    remove = commands.add_parser("remove", parents=[common], help="undo what add did for PATTERNs",
                                 description="Remove PATTERNs' rules and write back the sysctl values add replaced.",
                                 epilog=EPILOG, formatter_class=HelpFormatter)  # fmt: skip
    remove.add_argument("patterns", metavar="PATTERN", nargs="+")
    remove.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    remove.set_defaults(func=run_remove)

    show = commands.add_parser("list", parents=[common], help="rules in force, sysctls set, drop counters",
                               description="Show each pattern's rules and drop counters, and the sysctls set.",
                               formatter_class=HelpFormatter)  # fmt: skip
    show.add_argument("--json", action="store_true", help="print machine-readable JSON")
    show.set_defaults(func=run_list)

    watch = commands.add_parser("watch", parents=[common], help="set sysctls on matching interfaces as they appear; remove guests whose interface went",
                                description="Apply the per-interface sysctls to every matching interface that "
                                            "appears, in the netlink event that announces it; remove the guests QEMU's "
                                            "script, the libvirt hook or the CNI plugin registered whose interface is gone "
                                            "or is another one now (at start and on every link event). Runs until stopped.",
                                formatter_class=HelpFormatter)  # fmt: skip
    watch.set_defaults(func=run_watch)


def run_add(args: argparse.Namespace) -> int:
    added = parse_patterns(args.patterns)
    if not args.dry_run:
        require_net_admin("lockdown add")
    return _report(args, lockdown_add(state_dir(args.state_dir), added, dry_run=args.dry_run, force=args.force))


def run_remove(args: argparse.Namespace) -> int:
    removed = parse_patterns(args.patterns)
    if not args.dry_run:
        require_net_admin("lockdown remove")
    return _report(args, lockdown_remove(state_dir(args.state_dir), removed, dry_run=args.dry_run))


def _report(args: argparse.Namespace, outcome: Outcome) -> int:
    (feature_plan,) = outcome.plans
    plan: LockdownPlan = feature_plan.work[0]
    if args.dry_run:
        print_json(feature_plan.shown)
        if not plan.harden:
            print("guestfence: no existing interface matches; `lockdown watch` sets the sysctls when one appears",
                  file=sys.stderr)  # fmt: skip
        return 0
    print("locked down: " + (", ".join(str(p) for p in plan.patterns) or "nothing"))
    stacked = {link.key for link in plan.stacked}
    for link_steps in plan.harden:
        link = link_steps.link
        how = f" (a {link.kind} on a locked interface)" if link.key in stacked else ""
        print(f"  {link.name}{how}: sysctls set")
        for why in link_steps.kept:
            print(f"  {link.name}: {why}")
    if plan.patterns and not plan.harden:
        print("  no interface matches yet: the rules already hold; `lockdown watch` sets the sysctls when one appears")
    for change in plan.revert:
        print(f"  {change.step.interface}: {change.step.name} back to {change.old}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    require_net_admin("lockdown list")
    with StateStore(state_dir(args.state_dir), read_only=True) as store:
        recorded = store.section(LOCKDOWN_KEY)
    nft = open_nft()
    report = collect_report(recorded_state(recorded), nft, collect_links())
    crash = interrupted(recorded, nft)
    if args.json:
        print_json({**report_to_json(report), "interrupted": crash})
        return 0
    for line in crash:
        print(f"interrupted: {line}")
    if not report.patterns:
        print("no interface is locked down")
    else:
        header = ("PATTERN", "IN FORCE", "INTERFACES", "DROPPED PACKETS (" + ", ".join(hook_label(h) for h in HOOKS) + ")")
        rows = [header] + [
            (str(p.pattern), "yes" if p.in_force else "NO (run lockdown add again)", ",".join(p.interfaces) or "-",
             " / ".join(str(h.packets) for h in p.hooks))
            for p in report.patterns
        ]  # fmt: skip
        print(format_table(rows))
        stacked = ", ".join(report.stacked) or "none now"
        print(f"\nstacked macvlan/macvtap devices locked down with their lower device: {stacked}")
        print("every macvtap, by kind: dropped packets " + " / ".join(
            f"{h.hook}: {h.packets}" for h in report.stacked_rules if h.hook.endswith("macvtap")))
    sysctl_rows = [
        (i.interface if i.present else f"{i.interface} (gone)", s.name, s.set, s.old, s.now or "-")
        for i in report.interfaces
        for s in i.sysctls
    ]
    if sysctl_rows:
        print()
        print(format_table([("INTERFACE", "SYSCTL", "SET", "OLD", "NOW"), *sysctl_rows]))
    return 0


def run_watch(args: argparse.Namespace) -> int:
    require_net_admin("lockdown watch")
    signal.signal(signal.SIGTERM, _exit_quietly)
    directory = state_dir(args.state_dir)
    say = lambda line: print(line, flush=True)  # noqa: E731
    warn = lambda line: print(f"guestfence: warning: {line}", file=sys.stderr, flush=True)  # noqa: E731
    watcher = LinkWatcher(directory, open_nft(), say=say, warn=warn)

    def on_event(kind: str, link: Link) -> None:
        reap(directory, say, warn)  # first: a dead guest's rules must not wait for the sysctls
        watcher.on_event(kind, link)

    with link_events() as run_events:
        reap(directory, say, warn)
        watcher.scan()
        print(f"watching for new interfaces (state in {directory})", flush=True)
        run_events(on_event)
    return 0


def _exit_quietly(signum: int, frame: object) -> NoReturn:
    raise SystemExit(0)
