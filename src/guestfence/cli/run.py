"""``guestfence run``: run a command under the policy, enforced by the seccomp supervisor.

What the user sees of refused attempts: a one-line summary on exit (count,
first destinations, the deciding rule; ``--quiet`` turns it off), one line
per attempt with ``--verbose`` or ``--log``, each with a UTC timestamp and
the command's name; a refused DNS lookup while the policy names hosts is
called out with the rule that would allow it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from guestfence.cli.common import (
    HelpFormatter,
    add_policy_options,
    parse_gateways,
    policy_from_args,
    wait_forwarding_signals,
)
from guestfence.errors import PolicyError
from guestfence.policy.model import Policy
from guestfence.sandbox import Denial, Sandbox
from guestfence.sandbox.verdict import DENY_ERRNOS

RUN_EPILOG = """Every connect and send of the command, its threads and its children is
decided by the policy, per protocol (a UDP rule never authorises TCP; ICMP
rules govern the kernel ping socket). A refused call fails with
ECONNREFUSED (or --deny-errno). Raw and packet sockets and io_uring are
refused outright. @host is every address this host receives on (its own,
all of loopback, 0.0.0.0 and :: which Linux delivers to loopback, broadcast,
multicast, anycast), answered by a route lookup at each decision. @gateway
rules need --gateway ADDR. ICMP rules govern ping (the kernel ping socket).
DNS names in rules are resolved once, at start (--verbose shows them).

The exit status is the command's own (128+N if it died of signal N);
2, 3 are guestfence's own usage and host errors, before the command ran.

examples:
  guestfence run --net-allow api.example.com:443 --net-allow udp://192.0.2.53:53 -- curl https://api.example.com
  guestfence run --default allow --net-deny '@host' -- ./agent
  guestfence run --policy policy.toml:web --log - --json-log -- python3 job.py
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser(
        "run",
        help="run a command with its network destinations decided by the policy",
        description="Run CMD ARGS... in a seccomp sandbox that decides each network destination by the policy.",
        epilog=RUN_EPILOG,
        formatter_class=HelpFormatter,
    )
    add_policy_options(run)
    run.add_argument("--log", metavar="FILE|-", help="log every denied attempt to FILE (- for stderr)")
    run.add_argument("--gateway", metavar="ADDR", action="append", default=[],
                     help="the address @gateway stands for (repeatable); @gateway rules need it")
    run.add_argument("--json-log", action="store_true", help="log one JSON object per line (to stderr without --log)")
    run.add_argument("--verbose", action="store_true",
                     help="log every denied attempt to stderr and print what DNS names in rules resolved to")
    run.add_argument("--quiet", action="store_true", help="no summary of refused attempts on exit")
    run.add_argument("--deny-errno", choices=tuple(DENY_ERRNOS), default="ECONNREFUSED",
                     help="errno of a refused call (default: ECONNREFUSED)")
    run.add_argument("--keep-caps", action="store_true",
                     help="let a root command keep every capability; with CAP_SYS_PTRACE or CAP_SYS_ADMIN it can "
                          "take the listener from guestfence and answer its own calls: trusted commands only "
                          "(default: a root command runs without the capabilities that reach guestfence or "
                          "go around the network stack)")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS", help="the command to run")
    run.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    command = args.command if args.passthrough is None else args.command + args.passthrough
    if not command:
        raise PolicyError("no command given (usage: guestfence run [options] -- CMD ARGS...)")
    policy = policy_from_args(args)
    log = open_log(args.log if args.log or not (args.verbose or args.json_log) else "-")
    name = os.path.basename(command[0])
    tally = DenialTally()
    loggers = [tally.add] + ([] if log is None else [denial_logger(log, as_json=args.json_log, command=name)])
    sandbox = Sandbox(policy, deny_errno=args.deny_errno, keep_caps=args.keep_caps, gateways=parse_gateways(args.gateway),
                      on_denied=lambda denial: [f(denial) for f in loggers])
    status = run_sandboxed(sandbox, command, verbose=args.verbose)
    if not args.quiet:
        for line in tally.summary(policy, command=name):
            print(line, file=sys.stderr)
    return status


class DenialTally:
    """Counts refused attempts and keeps the first few, for the summary on exit."""

    KEPT = 3

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.first: list[Denial] = []
        self.dns: list[Denial] = []

    def add(self, denial: Denial) -> None:
        with self._lock:
            self.count += 1
            if len(self.first) < self.KEPT and denial.destination not in {d.destination for d in self.first}:
                self.first.append(denial)
            if denial.destination.startswith(("udp://", "tcp://")) and denial.destination.endswith(":53") and len(self.dns) < self.KEPT:
                self.dns.append(denial)

    def summary(self, policy: Policy, *, command: str) -> list[str]:
        """The lines to print on exit; none when nothing was refused."""
        if not self.count:
            return []
        shown = ", ".join(f"{d.destination}" for d in self.first) + (", ..." if self.count > len(self.first) else "")
        lines = [f"guestfence[{command}]: refused {self.count} attempt(s): {shown} ({self.first[0].decided_by});"
                 " --verbose logs each, --quiet hides this"]  # fmt: skip
        if self.dns and policy.names():
            names = ", ".join(sorted(policy.names()))
            resolver = self.dns[0].destination
            lines.append(f"guestfence[{command}]: a DNS lookup to {resolver} was refused while the policy names hosts "
                         f"({names}); allow it with --net-allow {resolver}")  # fmt: skip
        return lines


def run_sandboxed(sandbox: Sandbox, command: Sequence[str], *, verbose: bool) -> int:
    """Say what the policy's names resolved to (failures always, the rest with
    ``verbose``), run ``command`` in ``sandbox`` and return its exit status."""
    for name, why in sorted(sandbox.resolution.failures.items()):
        print(f"guestfence: warning: {name} did not resolve ({why}); decided closed", file=sys.stderr)
    if verbose:
        for name, addresses in sorted(sandbox.resolution.addresses.items()):
            shown = ", ".join(str(a) for a in sorted(addresses, key=lambda a: (a.version, a)))
            print(f"guestfence: {name} -> {shown}", file=sys.stderr)
    return wait_forwarding_signals(sandbox.popen(command))


def open_log(target: str | None) -> TextIO | None:
    if target is None:
        return None
    if target == "-":
        return sys.stderr
    try:
        return open(target, "a", buffering=1, encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"--log {target!r}: {exc.strerror}") from exc


def denial_logger(log: TextIO, *, as_json: bool, guest_view: Callable[[str], str | None] | None = None,
                  command: str = "guestfence"):  # fmt: skip
    """A Denial callback writing one line per denial, with a UTC timestamp and
    the command's name; ``guest_view`` names the destination as the guest
    saw it, where a wrapped stack translated it."""
    lock = threading.Lock()

    def write(denial: Denial) -> None:
        seen = None if guest_view is None else guest_view(denial.destination)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if as_json:
            record = {"time": stamp, "command": command, "event": "denied", "pid": denial.pid, "syscall": denial.syscall,
                      "protocol": denial.protocol, "destination": denial.destination,
                      "decided_by": denial.decided_by}
            if guest_view is not None:
                record["guest_destination"] = seen
            line = json.dumps(record)
        else:
            as_seen = f" (guest aimed at {seen})" if seen is not None and seen != denial.destination else ""
            line = (f"{stamp} guestfence[{command}]: denied {denial.syscall} {denial.destination}{as_seen} (pid {denial.pid}): "
                    f"{denial.decided_by}")
        with lock:
            log.write(line + "\n")
            log.flush()

    return write
