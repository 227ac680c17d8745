"""The ``guestfence`` command: argument parsing and presentation only.

This package is the only code that prints for the user or chooses an exit
status. Each command module has ``register(subparsers)``, which adds its
parser and sets ``func(args) -> int`` on it.

Start-up: only the chosen command's module is imported (COMMANDS maps each
command to its module and one-line help, which ``guestfence --help``
lists without importing any). pyroute2, libnftables and libseccomp alone
cost over 100 ms; ``check`` and ``explain`` need none of them. Keep
command modules free of import-time work, and import what only one
action needs inside it.

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
import functools
import importlib
import os
import sys
from collections.abc import Sequence

from guestfence.errors import ApplyError, GuestfenceError, HostError, PlanError, PolicyError

# command -> (module in this package that registers it, its help in the
# command list). tests/unit/test_cli.py checks the help against the modules'.
COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("policy_cmds", "validate a policy file and print it normalised"),
    "explain": ("policy_cmds", "say which verdict a policy gives each destination, and why"),
    "demo": ("demo", "show guestfence at work on a built-in example"),
    "guest": ("guest", "register VM guests with the nftables firewall"),
    "status": ("guest", "per guest: rules, accepted/dropped packets, drift from the record"),
    "restore": ("guest", "re-apply the recorded state (after a reboot)"),
    "flush": ("guest", "remove everything guestfence installed, nothing else"),
    "apply": ("guest", "make the live state equal to a TOML file"),
    "lockdown": ("lockdown", "stop the host stack from processing anything on guest-only interfaces"),
    "run": ("run", "run a command with its network destinations decided by the policy"),
    "rootless": ("rootless", "run slirp4netns, passt or pasta so its guest cannot reach the host's own addresses"),
    "audit": ("audit", "probe, from a guest's side, which host services it can reach"),
}

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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the hand-written layout of descriptions and examples. Finds the
    terminal's width as argparse does, without importing shutil (and bz2,
    lzma) for it: argparse makes a formatter for every argument added."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, _columns() - 2 if width is None else width)


@functools.cache
def _columns() -> int:
    """$COLUMNS, else the width of the terminal on stdout, else 80 (as shutil.get_terminal_size)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def command_module(name: str):  # -> module
    """The module that registers command ``name`` (imported now)."""
    return importlib.import_module(f"guestfence.cli.{COMMANDS[name][0]}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser. A known ``command``: its module registers its own parsers,
    and no other command is there (argparse makes a parser for each, a
    millisecond of the start-up every command pays). Else every command is a
    bare entry in the command list (``--help``, and the error naming them)."""
    parser = argparse.ArgumentParser(
        prog="guestfence",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--version", action=_VersionAction, help="show the installed version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    if command in COMMANDS:
        command_module(command).register(subparsers)  # all of its module's commands (check and explain)
    else:
        for name, (_, summary) in COMMANDS.items():
            subparsers.add_parser(name, help=summary, add_help=False)
    return parser


def chosen_command(words: Sequence[str]) -> str | None:
    """The command word: the first that is not an option (the top-level
    options take no value)."""
    return next((word for word in words if not word.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" belongs to the command guestfence runs
    # (run, rootless), whatever it looks like: argparse never sees it.
    head, tail = (words[: words.index("--")], words[words.index("--") + 1 :]) if "--" in words else (words, None)
    parser = build_parser(chosen_command(head))
    if argv is None:
        # The process's own command (the `guestfence` script): what is
        # imported by now lives as long as the process, so the cyclic
        # collector need not walk it again at each collection the command's
        # work triggers (guest add with 1000 guests: 3% of its CPU).
        import gc

        gc.freeze()
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
            import traceback

            traceback.print_exc()
        print(f"guestfence: {err}" if "\n" not in str(err) else str(err), file=sys.stderr)
        return next((code for cls, code in EXIT_CODES if isinstance(err, cls)), 1)
    except KeyboardInterrupt:
        print("guestfence: interrupted", file=sys.stderr)
        return 130


class _VersionAction(argparse.Action):
    """--version, looked up only when asked: importlib.metadata scans the
    installed distributions, tens of milliseconds every command would pay."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"guestfence {_version()}")
        parser.exit()


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
