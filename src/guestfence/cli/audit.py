"""``guestfence audit``: which host services can a guest actually reach?"""

from __future__ import annotations

import argparse
import sys
import time

from guestfence.audit.collect import collect_listeners, plan_targets
from guestfence.audit.compare import audit_context, compare
from guestfence.audit.counters import open_counters
from guestfence.audit.probe import DEFAULT_PARALLEL, DEFAULT_TIMEOUT, probe_netns
from guestfence.audit.report import AuditReport, format_report_table, format_summary, render_html, report_json
from guestfence.audit.sandboxed import probe_sandboxed
from guestfence.audit.unixsock import UnixFinding, collect_unix_listeners, compare_unix, probe_unix_sandboxed
from guestfence.cli.common import HelpFormatter, add_policy_options, format_table, policy_from_args, print_json
from guestfence.errors import HostError, PolicyError
from guestfence.netinfo import collect_host_addresses
from guestfence.nft.firewall import Registered
from guestfence.operations import read_registry
from guestfence.policy.model import Address, Policy
from guestfence.resolve import resolve_names
from guestfence.state import state_dir

AUDIT_EPILOG = """Run it in the host's network namespace. It lists every listening TCP socket
(and, with --udp, every bound UDP socket) there, with its owning process,
and tries each one on each host address from inside the guest's namespace,
in parallel, within --timeout seconds per batch. Nothing is sent anywhere
but the host's own addresses.

With --sandbox the probes run in a child sandboxed under the policy (the
host's own namespace: loopback is the host's), so the audit shows whether
the sandbox lets through exactly what the policy allows. It also lists the
host's unix listeners (/proc/net/unix: listening sockets, and datagram
receivers such as /dev/log, by path or abstract name) and connects to each
from the sandbox, next to the TCP/UDP services.

In the policy, @host is every host address found and @gateway the guest's
default gateway as the guest sees it (a sandbox has none), or, with --guest,
that registered guest's gateway. Without any policy option the policy is
the --guest's own, else "default deny": every reachable service is a
violation.

Probe results: reachable; refused (TCP reset, ICMP port unreachable);
unreachable (ICMP unreachable, no route); filtered (TCP, no answer);
dropped (UDP, a drop counter of table inet guestfence rose); no answer
(open|filtered) (UDP, nothing says it was dropped); guest's own address
(the guest owns it too, e.g. 127.0.0.1: the probe never left the guest).

Exit status: 1 if any reachable service is denied by the policy, else 0.

examples:
  guestfence audit --netns guest1
  guestfence audit --netns guest1 --policy policy.toml:vm --udp --html report.html
  guestfence audit --netns vm1-ns --guest vm1 --udp      # vm1's registered policy
  ip netns exec hostns guestfence audit --netns guest1 --net-allow tcp://@gateway:8080 --json
  guestfence audit --sandbox --net-allow tcp://127.0.0.1:5432
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    audit = subparsers.add_parser(
        "audit",
        help="probe, from a guest's side, which host services it can reach",
        description="Probe from inside a guest's network namespace which host services answer, "
        "and compare with a policy.",
        epilog=AUDIT_EPILOG,
        formatter_class=HelpFormatter,
    )
    where = audit.add_mutually_exclusive_group(required=True)
    where.add_argument("--netns", metavar="NS", help="probe from this network namespace (name or path)")
    where.add_argument(
        "--sandbox", action="store_true", help="probe from a child sandboxed (seccomp) under the policy"
    )
    add_policy_options(audit)
    audit.add_argument(
        "--guest", metavar="NAME",
        help="a registered VM guest (guestfence guest add): @gateway is its gateway, and without "
        "policy options its policy is the one compared",
    )
    audit.add_argument("--state-dir", metavar="DIR", help="where guests are recorded (default: /var/lib/guestfence)")
    audit.add_argument("--udp", action="store_true", help="probe bound UDP sockets too")
    audit.add_argument("--json", action="store_true", help="print machine-readable JSON")
    audit.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report to FILE")
    audit.add_argument(
        "--timeout", metavar="SECONDS", type=_seconds, default=DEFAULT_TIMEOUT,
        help=f"how long to wait for answers, per batch of {DEFAULT_PARALLEL} probes (default {DEFAULT_TIMEOUT})",
    )  # fmt: skip
    audit.add_argument("--no-resolve", action="store_true", help="do not resolve DNS names in rules")
    audit.set_defaults(func=run_audit, needs_root=lambda args: not args.sandbox)


def run_audit(args: argparse.Namespace) -> int:
    registered = _registered(args.guest, args.state_dir) if args.guest else None
    if registered is not None and not _policy_given(args):
        policy, names = registered.guest.policy, dict(registered.names)
    else:
        policy = policy_from_args(args)
        names = {} if args.no_resolve else _resolve(policy)
    host_addresses = collect_host_addresses()
    targets = plan_targets(collect_listeners(udp=args.udp), host_addresses)
    unix_findings: tuple[UnixFinding, ...] = ()
    if args.sandbox:
        probed = probe_sandboxed(targets, policy, timeout=args.timeout)
        unix_observed = probe_unix_sandboxed(collect_unix_listeners(), policy, timeout=args.timeout)
        unix_findings = compare_unix(policy, unix_observed)
    else:
        probed = probe_netns(targets, args.netns, timeout=args.timeout, nft=open_counters() if args.udp else None)
    seen_gateways = registered.guest.gateways if registered is not None else probed.view.gateways
    gateways = tuple(sorted(seen_gateways, key=_address_key))
    context = audit_context(host_addresses=host_addresses, gateways=gateways, names=names)
    report = AuditReport(
        guest="sandbox" if args.sandbox else f"netns {args.netns}",
        policy=policy,
        host_addresses=host_addresses,
        gateways=gateways,
        findings=compare(policy, probed.observations, context),
        generated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        udp=args.udp,
        unix_findings=unix_findings,
    )
    if args.html:
        _write(args.html, render_html(report))
    if args.json:
        print_json(report_json(report))
    else:
        if report.findings:
            print(format_table(format_report_table(report)))
        print(format_summary(report))
    return 1 if report.violations else 0


def _registered(name: str, directory: str | None) -> Registered:
    registry = read_registry(state_dir(directory))
    found = registry.find(name)
    if found is None:
        known = ", ".join(g.name for g in registry.guests()) or "none"
        raise PolicyError(f"no registered guest {name!r} (registered: {known})")
    return found


def _policy_given(args: argparse.Namespace) -> bool:
    return bool(args.policy or args.net_allow or args.net_deny or args.default)


def _resolve(policy: Policy) -> dict[str, frozenset[Address]]:
    if not policy.names():
        return {}
    resolution = resolve_names(policy.names())
    for name, why in resolution.failures.items():
        print(f"guestfence: warning: {name} did not resolve ({why}); decided closed", file=sys.stderr)
    return dict(resolution.addresses)


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as out:
            out.write(text)
    except OSError as exc:
        raise HostError(f"cannot write the HTML report to {path}: {exc.strerror}") from exc


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds between 0 and 60")
    return value


def _address_key(address: Address) -> tuple[int, int]:
    return address.version, int(address)
