"""``guestfence audit``: which host services can a guest actually reach?"""

from __future__ import annotations

import argparse
import sys

from guestfence.audit.probe import DEFAULT_PARALLEL, DEFAULT_TIMEOUT
from guestfence.audit.report import format_report_table, format_summary, render_html, report_json
from guestfence.audit.session import collect_audit
from guestfence.cli.common import HelpFormatter, add_policy_options, format_table, policy_from_args, print_json
from guestfence.errors import HostError

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
    given = bool(args.policy or args.net_allow or args.net_deny or args.default)
    audit = collect_audit(
        netns=None if args.sandbox else args.netns,
        policy=policy_from_args(args) if given or not args.guest else None,
        guest=args.guest, state_dir=args.state_dir,
        udp=args.udp, timeout=args.timeout, resolve=not args.no_resolve,
    )  # fmt: skip
    for name, why in sorted(audit.unresolved.items()):
        print(f"guestfence: warning: {name} did not resolve ({why}); decided closed", file=sys.stderr)
    report = audit.report
    if args.html:
        _write(args.html, render_html(report))
    if args.json:
        print_json(report_json(report))
    else:
        if report.findings:
            print(format_table(format_report_table(report)))
        print(format_summary(report))
    return 1 if report.violations else 0


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

