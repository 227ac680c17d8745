"""``guestfence rootless``: run slirp4netns, passt or pasta kept off the host's own addresses."""

from __future__ import annotations

import argparse
import subprocess
import sys

from guestfence.cli.common import (
    HelpFormatter,
    add_policy_options,
    policy_from_args,
    print_json,
    wait_forwarding_signals,
)
from guestfence.cli.run import denial_logger, open_log, run_sandboxed
from guestfence.rootless.launch import Mode, prepare_launch, run_nft, sandbox_for, seen_by_guest
from guestfence.rootless.stacks import Stack
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
    parser.add_argument("--mode", choices=[m.value for m in Mode], default="sandbox",
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
    launch = prepare_launch(
        Stack(args.stack), target=args.target, tap=args.tap, netns=args.netns, extra=args.passthrough or [],
        chosen=policy_from_args(args), explicit_default=bool(args.default or args.policy), mode=Mode(args.mode),
        user=args.user, as_user=args.as_user,
    )  # fmt: skip
    for name, why in sorted(launch.unresolved.items()):
        print(f"guestfence: warning: {name} did not resolve ({why}); decided closed", file=sys.stderr)
    if args.dry_run:
        print_json(launch.shown())
        return 0
    if launch.mode is Mode.NFT:
        return run_nft(launch, lambda argv: wait_forwarding_signals(subprocess.Popen(list(argv))))
    log = open_log(args.log)
    on_denied = None if log is None else denial_logger(
        log, as_json=args.json_log, guest_view=lambda destination: seen_by_guest(launch.command, destination))
    sandbox = sandbox_for(launch, deny_errno=args.deny_errno, on_denied=on_denied)
    return run_sandboxed(sandbox, launch.argv, verbose=False)
