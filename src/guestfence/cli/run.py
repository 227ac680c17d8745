"""``guestfence run``: run a command under the policy, enforced by the seccomp supervisor."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TextIO

from guestfence.cli.common import (
    POLICY_HELP,
    HelpFormatter,
    add_policy_options,
    parse_gateways,
    policy_from_args,
    wait_forwarding_signals,
)
from guestfence.errors import PolicyError
from guestfence.sandbox import Denial, Sandbox
from guestfence.sandbox.verdict import DENY_ERRNOS

RUN_EPILOG = POLICY_HELP + """
Every connect and send of the command, its threads and its children is
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
    run.add_argument("--json-log", action="store_true", help="log one JSON object per line")
    run.add_argument("--verbose", action="store_true", help="print the addresses DNS names in rules resolved to")
    run.add_argument("--gateway", metavar="ADDR", action="append", default=[],
                     help="the address @gateway stands for (repeatable); @gateway rules need it")
    run.add_argument("--deny-errno", choices=tuple(DENY_ERRNOS), default="ECONNREFUSED",
                     help="errno of a refused call (default: ECONNREFUSED)")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS", help="the command to run")
    run.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    command = args.command if args.passthrough is None else args.command + args.passthrough
    if not command:
        raise PolicyError("no command given (usage: guestfence run [options] -- CMD ARGS...)")
    policy = policy_from_args(args)
    log = open_log(args.log)
    sandbox = Sandbox(policy, deny_errno=args.deny_errno, gateways=parse_gateways(args.gateway),
                      on_denied=None if log is None else denial_logger(log, as_json=args.json_log))
    return run_sandboxed(sandbox, command, verbose=args.verbose)


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


def denial_logger(log: TextIO, *, as_json: bool, guest_view: Callable[[str], str | None] | None = None):
    """A Denial callback writing one line per denial; ``guest_view`` names the
    destination as the guest saw it, where a wrapped stack translated it."""
    lock = threading.Lock()

    def write(denial: Denial) -> None:
        seen = None if guest_view is None else guest_view(denial.destination)
        if as_json:
            record = {"event": "denied", "pid": denial.pid, "syscall": denial.syscall,
                      "protocol": denial.protocol, "destination": denial.destination,
                      "decided_by": denial.decided_by}
            if guest_view is not None:
                record["guest_destination"] = seen
            line = json.dumps(record)
        else:
            as_seen = f" (guest aimed at {seen})" if seen is not None and seen != denial.destination else ""
            line = (f"guestfence: denied {denial.syscall} {denial.destination}{as_seen} (pid {denial.pid}): "
                    f"{denial.decided_by}")
        with lock:
            log.write(line + "\n")
            log.flush()

    return write
