"""The ``guestfence`` command: argument parsing and presentation only.

This package is the only code that prints for the user or chooses an exit
status. Each command module has ``register(subparsers)``, which adds its
parser and sets ``func(args) -> int`` on it.

Exit statuses:
    0  success
    1  the command ran and found what it reports on (audit violations, status drift)
    2  bad input: usage, policy syntax, a plan this backend cannot express
    3  the host lacks something (library, kernel feature, privilege: "run as root")
    4  applying failed; the previous state was kept
  130  interrupted
  141  the reader of our output went away (``| head``), as a shell reports SIGPIPE

A command that needs CAP_NET_ADMIN sets ``needs_root`` on its parser (True,
or a function of its arguments); it is checked before the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from guestfence.cli import audit, demo, guest, lockdown, policy_cmds, rootless, run
from guestfence.errors import ApplyError, GuestfenceError, HostError, PlanError, PolicyError

COMMANDS = (policy_cmds, demo, guest, lockdown, run, rootless, audit)

EXIT_CODES: tuple[tuple[type[GuestfenceError], int], ...] = (
    (PolicyError, 2),
    (PlanError, 2),
    (HostError, 3),
    (ApplyError, 4),
)

DESCRIPTION = """\
Keep guests -- virtual machines and sandboxed processes -- away from the host
they run on: default deny from guest to host, explicit per-protocol allow
rules, one policy language.

Rules:  [tcp|udp|icmp://]HOST[:PORTS]      (no scheme means tcp)
  HOST  192.0.2.1  192.0.2.0/24  [2001:db8::1]  [2001:db8::]/32
        api.example.com  *  @host (every host address)  @gateway
  PORTS 22  8000-8100  80,443  *            (icmp takes none)
Deny beats allow, allow beats the default; rule order never matters.
"""

EPILOG = """\
examples:
  guestfence check policy.toml
  guestfence explain --net-allow tcp://@gateway:8080 --gateway 192.0.2.1 tcp://192.0.2.1:22
  guestfence demo

Run 'guestfence COMMAND --help' for each command's options and examples.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guestfence",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--version", action="version", version=f"guestfence {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" belongs to the command guestfence runs
    # (run, rootless), whatever it looks like: argparse never sees it.
    head, tail = (words[: words.index("--")], words[words.index("--") + 1 :]) if "--" in words else (words, None)
    args = parser.parse_args(head)
    args.passthrough = tail
    try:
        _check_privilege(args)
        status = int(args.func(args))
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        # Nothing more can be written; say nothing more, not even at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except GuestfenceError as err:
        if args.debug:
            traceback.print_exc()
        print(f"guestfence: {err}" if "\n" not in str(err) else str(err), file=sys.stderr)
        return next((code for cls, code in EXIT_CODES if isinstance(err, cls)), 1)
    except KeyboardInterrupt:
        print("guestfence: interrupted", file=sys.stderr)
        return 130


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("guestfence")
    except PackageNotFoundError:
        return "(not installed)"


CAP_NET_ADMIN = 12


def _check_privilege(args: argparse.Namespace) -> None:
    needs = getattr(args, "needs_root", False)
    if callable(needs):
        needs = needs(args)
    if needs and not has_net_admin():
        command = " ".join(word for word in (args.command, getattr(args, "action", None)) if word)
        raise HostError(f"{command} needs CAP_NET_ADMIN: run as root")


def has_net_admin() -> bool:
    """Whether this process holds CAP_NET_ADMIN (root has it; so has root of a user namespace)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0
