"""``guestfence guest add|remove|list``, ``status``, ``restore``, ``flush``,
``apply FILE``: the VM-guest firewall. Parsing and presentation only.

Every changing command takes ``--dry-run`` (print the libnftables JSON
batch it would apply, change nothing) and records what it applied in the
state directory (``--state-dir``, ``$GUESTFENCE_STATE_DIR``, or
/var/lib/guestfence; see guestfence.state). Run inside ``ip netns exec NS``
every command works on that namespace's ruleset and record.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from guestfence.cli.common import (
    POLICY_HELP,
    HelpFormatter,
    add_policy_options,
    format_table,
    policy_from_args,
    print_json,
)
from guestfence.config import load_config
from guestfence.lockdown.feature import LOCKDOWN
from guestfence.nft.firewall import (
    GUESTS,
    GUESTS_KEY,
    Registered,
    Registry,
    apply_plan,
    member_to_json,
    collect_live,
    compare_status,
    check_gateways_owned,
    plan_add,
    plan_json,
    plan_remove,
    registry_from_json,
)
from guestfence.nft.guest import parse_guest
from guestfence.rootless.feature import ROOTLESS
from guestfence.state import Feature, FeaturePlan, StateStore, state_dir

# What `apply FILE`, `restore` and `flush` take care of, in this order. Each
# feature owns one key of the state file (guestfence.state.Feature); a new
# one (interface lockdown) is added here and nowhere else.
FEATURES: tuple[Feature, ...] = (GUESTS, LOCKDOWN, ROOTLESS)

ADD_EPILOG = POLICY_HELP + """
The guest reaches exactly what its policy allows: default deny, deny beats
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
  guestfence guest add vm1 ... --dry-run       # print the transaction, change nothing
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument("--state-dir", metavar="DIR", help="where the applied state is recorded (default: /var/lib/guestfence)")
    changing = argparse.ArgumentParser(add_help=False, parents=[state])
    changing.add_argument("--dry-run", action="store_true", help="print the nftables transaction, change nothing")
    changing.add_argument("--json", action="store_true", help="print machine-readable JSON")
    reporting = argparse.ArgumentParser(add_help=False, parents=[state])
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
    add.add_argument("--iface", required=True, help="the guest's host-side interface (TAP, veth, macvtap)")
    add.add_argument("--address", action="append", required=True, metavar="CIDR", help="the guest's own address, e.g. 192.0.2.2/30 (repeatable)")
    add.add_argument("--gateway", action="append", default=[], metavar="ADDR", help="the host-side address @gateway stands for (repeatable)")
    add.add_argument("--mac", help="the guest's MAC: frames from any other are dropped")
    add.add_argument("--masquerade", action="store_true", help="masquerade the guest's traffic leaving through the host")
    add.add_argument("--bridge", metavar="BR", help="the bridge IFACE is a port of (needs --mac)")
    add.add_argument("--comment", default="", help="free text shown in the ruleset")
    add_policy_options(add)
    add.set_defaults(func=run_add)

    remove = actions.add_parser("remove", parents=[changing], help="unregister a guest; its rules go", formatter_class=HelpFormatter,
                                epilog="example:\n  guestfence guest remove vm1\n")
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(func=run_remove)

    listing = actions.add_parser("list", parents=[reporting], help="registered guests, their policies and resolved names",
                                 formatter_class=HelpFormatter, epilog="examples:\n  guestfence guest list\n  guestfence guest list --json\n")
    listing.set_defaults(func=run_list)

    commands = (
        ("status", reporting, run_status, "per guest: rules, accepted/dropped packets, drift from the record",
         "Compare the live ruleset with the recorded state. Exits 1 when something drifted.",
         "  guestfence status\n  ip netns exec lab1 guestfence status --json\n"),
        ("restore", changing, run_restore, "re-apply the recorded state (after a reboot)",
         "Rebuild the guestfence tables from the recorded state in one transaction; DNS names are resolved anew.",
         "  guestfence restore\n  guestfence restore --dry-run\n"),
        ("flush", changing, run_flush, "remove everything guestfence installed, nothing else",
         "Delete the guestfence tables. The record is kept: `guestfence restore` brings them back.",
         "  guestfence flush\n"),
        ("apply", changing, run_apply, "make the live state equal to a TOML file",
         "Apply the [[guest]] tables of FILE: guests are added, changed and removed in one transaction.",
         "  guestfence apply guests.toml\n  guestfence apply --dry-run guests.toml\n"),
    )  # fmt: skip
    for name, parent, func, summary, description, examples in commands:
        command = subparsers.add_parser(name, parents=[parent], help=summary, description=description,
                                        epilog="examples:\n" + examples, formatter_class=HelpFormatter)  # fmt: skip
        command.set_defaults(func=func)
        if name == "apply":
            command.add_argument("file", metavar="FILE", help="TOML file with [[guest]] tables (and [policy.NAME] they use)")


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
    unchecked = check_gateways_owned(guest)
    if unchecked:
        print(f"guestfence: warning: {unchecked}", file=sys.stderr)
    with StateStore(state_dir(args.state_dir)) as store:
        plan, registry = plan_add(_registry(store), guest)
        member = registry.find(guest.name)
        assert member is not None
        _warn_unresolved(member)
        if args.dry_run:
            print_json(plan_json(plan))
            return 0
        apply_plan(plan)
        store.write_section(GUESTS_KEY, registry.to_json())
    if args.json:
        print_json({"added": member_to_json(member)})
    else:
        print(f"guest {guest.name} added on {guest.iface}: {len(guest.policy.allow)} allow, {len(guest.policy.deny)} deny rules, default {guest.policy.default.value}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    with StateStore(state_dir(args.state_dir)) as store:
        plan, registry = plan_remove(_registry(store), args.name)
        if args.dry_run:
            print_json(plan_json(plan))
            return 0
        apply_plan(plan)
        store.write_section(GUESTS_KEY, registry.to_json())
    if args.json:
        print_json({"removed": args.name})
    else:
        print(f"guest {args.name} removed")
    return 0


def run_list(args: argparse.Namespace) -> int:
    with StateStore(state_dir(args.state_dir)) as store:
        registry = _registry(store)
    if args.json:
        print_json({"pattern": registry.settings.pattern, "guests": [member_to_json(m) for m in registry.members]})
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
    with StateStore(state_dir(args.state_dir)) as store:
        section = store.section(GUESTS_KEY)
    registry = registry_from_json(section, where=str(store.path))
    statuses, general = compare_status(registry, collect_live(), recorded=section is not None)
    drifted = bool(general) or any(s.drift for s in statuses)
    if args.json:
        print_json(
            {
                "drift": general,
                "guests": [
                    {"name": s.name, "iface": s.iface, "rules": s.rules, "accepted": s.accepted, "dropped": s.dropped, "drift": list(s.drift)}
                    for s in statuses
                ],
            }
        )
        return 1 if drifted else 0
    rows = [("NAME", "IFACE", "RULES", "ACCEPTED", "DROPPED", "DRIFT")]
    for s in statuses:
        rows.append((s.name, s.iface, str(s.rules), _count(s.accepted), _count(s.dropped), "; ".join(s.drift) or "none"))
    print(format_table(rows) if statuses else "no guests registered")
    for line in general:
        print(f"drift: {line}")
    return 1 if drifted else 0


def run_restore(args: argparse.Namespace) -> int:
    return _run_features(args, lambda feature, recorded: feature.plan_restore(recorded), "restored")


def run_flush(args: argparse.Namespace) -> int:
    return _run_features(args, lambda feature, recorded: feature.plan_flush(recorded), "flushed (the record is kept)")


def run_apply(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    return _run_features(args, lambda feature, recorded: feature.plan_apply(config, recorded), f"applied {args.file}")


def _run_features(args: argparse.Namespace, make_plan: Any, verb: str) -> int:
    """Plan every feature first (so bad input changes nothing), then apply and record each."""
    with StateStore(state_dir(args.state_dir)) as store:
        plans: list[tuple[Feature, FeaturePlan]] = [(f, make_plan(f, store.section(f.key))) for f in FEATURES]
        if args.dry_run:
            print_json({plan.key: plan.shown for _, plan in plans})
            return 0
        for feature, plan in plans:
            feature.apply(plan)
            if plan.record is not None:
                store.write_section(plan.key, plan.record)
    if args.json:
        print_json({plan.key: plan.record for _, plan in plans})
    else:
        print(f"{verb}: " + "; ".join(plan.summary for _, plan in plans))
    return 0


def _registry(store: StateStore) -> Registry:
    return registry_from_json(store.section(GUESTS_KEY), where=str(store.path))


def _warn_unresolved(member: Registered) -> None:
    for name, why in sorted(member.unresolved.items()):
        print(f"guestfence: warning: {name} did not resolve ({why}); allow rules about it match nothing, deny rules everything",
              file=sys.stderr)  # fmt: skip


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)
