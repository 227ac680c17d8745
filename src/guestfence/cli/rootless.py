"""``guestfence rootless``: run slirp4netns, passt or pasta kept off the host's own addresses."""

from __future__ import annotations

import argparse
import os
import pwd
import subprocess

from guestfence.cli.common import (
    HelpFormatter,
    add_policy_options,
    policy_from_args,
    print_json,
    wait_forwarding_signals,
)
from guestfence.cli.run import denial_logger, open_log, run_sandboxed
from guestfence.errors import HostError, PolicyError
from guestfence.policy.grammar import parse_destination
from guestfence.policy.model import Action, Flow, Policy
from guestfence.nft.apply import apply_nft, open_nft
from guestfence.resolve import resolve_names
from guestfence.policy.decide import require_gateway
from guestfence.rootless.guard import host_guard
from guestfence.rootless.nftmode import compile_owner, compile_release
from guestfence.rootless.preflight import check_socket
from guestfence.rootless.stacks import Stack, StackCommand, guest_view, passt_command, slirp4netns_command
from guestfence.sandbox import Sandbox
from guestfence.sandbox.verdict import DENY_ERRNOS

EPILOG = """The stack runs under guestfence's seccomp supervisor with the policy
"default allow, deny @host" (every protocol), plus your rules. Deny beats
allow, so an allow on @host (--net-allow tcp://@host:8080) is honoured by
denying only the *rest* of the host. @host is decided by a route lookup at
each connect: every address the host owns, loopback included, now -- an
address added while the guest runs is refused from its first connection.

slirp4netns works fully rootless. passt and pasta move into a user namespace
of their own and make themselves non-dumpable, so only a supervisor with
CAP_SYS_PTRACE can read their calls: run guestfence as root with
--as-user USER (the stack runs as USER), or use the nftables mode of
docs/rootless.md.

A stack run as root keeps its capabilities: it needs CAP_SYS_ADMIN to join
the guest's namespace and CAP_NET_ADMIN to configure its tap, and with
them could take over the supervisor. --as-user runs it as USER, without.

examples:
  guestfence rootless slirp4netns 4242                         # PID of a process in the guest netns
  guestfence rootless slirp4netns --netns /run/user/1000/netns/ctr tap0 -- --disable-host-loopback
  guestfence rootless slirp4netns 4242 --net-allow 'tcp://@host:8080' --log -
  sudo guestfence rootless pasta --as-user alice -- --config-net -- podman-like-cmd
  guestfence rootless passt --dry-run -- --vhost-user --socket /tmp/passt-vm

  sudo guestfence rootless slirp4netns 4242 --mode nft --user slirp   # zero overhead, rules per user

Everything after "--" is passed to the stack unchanged.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rootless",
        help="run slirp4netns, passt or pasta so its guest cannot reach the host's own addresses",
        description="Run a userspace network stack under the seccomp supervisor, denying the host's own addresses.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("stack", choices=[s.value for s in Stack], help="the network stack to run")
    parser.add_argument("target", nargs="?", default="", metavar="PID",
                        help="slirp4netns: PID of a process in the guest's network namespace")
    parser.add_argument("tap", nargs="?", default="tap0", metavar="TAPNAME", help="slirp4netns: tap name (tap0)")
    parser.add_argument("--netns", metavar="PATH", help="slirp4netns: the guest's netns as a path instead of a PID")
    add_policy_options(parser, default="allow, with every host address denied")
    parser.add_argument("--mode", choices=("sandbox", "nft"), default="sandbox",
                        help="sandbox: the seccomp supervisor (rootless); nft: rules in the output hook for --user, "
                             "no supervisor in the data path (needs root)")
    parser.add_argument("--user", metavar="NAME",
                        help="nft mode: the dedicated user the stack runs as, whose sockets the rules match")
    parser.add_argument("--as-user", metavar="USER",
                        help="run the stack as USER while the supervisor keeps root (needed for passt/pasta)")
    parser.add_argument("--log", metavar="FILE|-", help="log every denied attempt to FILE (- for stderr)")
    parser.add_argument("--json-log", action="store_true", help="log one JSON object per line")
    parser.add_argument("--deny-errno", choices=tuple(DENY_ERRNOS),
                        help="errno of a refused connect (default: EACCES for slirp4netns, whose libslirp crashes "
                             "on an immediate IPv6 ECONNREFUSED; ECONNREFUSED for passt and pasta)")
    parser.add_argument("--dry-run", action="store_true", help="print the command and policy; run nothing")
    parser.set_defaults(func=run_rootless)


def run_rootless(args: argparse.Namespace) -> int:
    stack = Stack(args.stack)
    extra = args.passthrough or []
    command = _stack_command(stack, args, extra)
    chosen = policy_from_args(args)
    require_gateway(chosen, frozenset(), hint="a rootless stack has no gateway of its own: use @host or addresses")
    policy = host_guard(chosen, default=chosen.default if args.default or args.policy else Action.ALLOW)
    stack_user = args.user if args.mode == "nft" else args.as_user
    check_socket(extra, None if stack_user is None else _user(stack_user, "--user" if args.mode == "nft" else "--as-user"))
    if args.mode == "nft":
        return _run_nft(command, policy, args)
    argv = _as_user(command.argv, args.as_user)
    if args.dry_run:
        print_json({"command": list(argv), "default": policy.default.value,
                    "allow": [str(r) for r in policy.allow], "deny": [str(r) for r in policy.deny]})
        return 0
    if stack.needs_ptrace_capability and os.geteuid() != 0:
        raise HostError(
            f"{stack.value} makes itself non-dumpable in a user namespace of its own, so a supervisor "
            f"without CAP_SYS_PTRACE cannot read its calls; run guestfence as root with --as-user USER, "
            f"or use the nftables mode (docs/rootless.md)"
        )
    return _supervise(argv, policy, command, args)


def _stack_command(stack: Stack, args: argparse.Namespace, extra: list[str]) -> StackCommand:
    if stack is Stack.SLIRP4NETNS:
        return slirp4netns_command(args.netns or args.target, args.tap, extra)
    if args.target or args.netns:
        raise PolicyError(f"{stack.value} takes no PID or --netns here; pass its own options after --")
    return passt_command(stack, extra)


def _as_user(argv: tuple[str, ...], user: str | None, option: str = "--as-user") -> tuple[str, ...]:
    if user is None:
        return argv
    entry = _user(user, option)
    if os.geteuid() != 0:
        raise PolicyError(f"{option} needs guestfence to run as root")
    return ("setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups", "--", *argv)


def _user(name: str, option: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise PolicyError(f"{option} {name!r}: no such user") from None


def _run_nft(command: StackCommand, policy: Policy, args: argparse.Namespace) -> int:
    """Rules for the user's sockets, then the stack as that user; the rules
    go when the stack ends (if guestfence is killed they stay: closed)."""
    if args.user is None:
        raise PolicyError("--mode nft needs --user NAME: the dedicated user the stack runs as")
    if args.as_user is not None:
        raise PolicyError("--as-user is for --mode sandbox; in nft mode the stack runs as --user")
    uid = _user(args.user, "--user").pw_uid
    if uid == 0:
        raise PolicyError("--user root would filter every root socket of the host; use a dedicated user")
    resolution = resolve_names(policy.names())
    rules = compile_owner(uid, policy, resolution.addresses)
    argv = _as_user(command.argv, args.user, "--user") if os.geteuid() == 0 else command.argv
    if args.dry_run:
        print_json({"command": list(argv), "nftables": rules})
        return 0
    if os.geteuid() != 0:
        raise HostError("--mode nft loads nftables rules and needs root (CAP_NET_ADMIN)")
    nft = open_nft()
    apply_nft(nft, rules, step=f"rules for user {args.user}")
    try:
        return wait_forwarding_signals(subprocess.Popen(list(argv)))
    finally:
        apply_nft(nft, compile_release(uid), step=f"removing the rules for user {args.user}")


def _supervise(argv: tuple[str, ...], policy: Policy, command: StackCommand, args: argparse.Namespace) -> int:
    log = open_log(args.log)

    def seen_by_guest(destination: str) -> str | None:
        flow = parse_destination(destination)
        address = guest_view(command, flow.address)
        return None if address is None else str(Flow(proto=flow.proto, address=address, port=flow.port))

    on_denied = None if log is None else denial_logger(log, as_json=args.json_log, guest_view=seen_by_guest)
    deny_errno = args.deny_errno or command.stack.deny_errno
    # A root stack needs its capabilities (setns, tap configuration); with
    # --as-user, setpriv needs only CAP_SETUID/SETGID, which the sandbox keeps.
    sandbox = Sandbox(policy, deny_errno=deny_errno, on_denied=on_denied, keep_caps=args.as_user is None)
    return run_sandboxed(sandbox, argv, verbose=False)
