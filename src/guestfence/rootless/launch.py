"""``guestfence rootless`` start to finish: which stack command, under which
policy, enforced how. The CLI parses arguments, calls these and prints.

- ``prepare_launch`` checks everything that can be checked before anything
  runs (the policy, the users, passt's socket) and, in nft mode, resolves the
  policy's DNS names once and compiles the rules (``compile_owner`` is pure:
  it gets the addresses as data). It changes nothing, so ``--dry-run`` shows
  what it returns.
- ``run_nft`` installs the rules for the stack's user, runs the stack and
  removes them when it ends (if guestfence is killed they stay: closed).
- ``sandbox_for`` builds the seccomp supervisor for sandbox mode.
"""

from __future__ import annotations

import enum
import os
import pwd
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, final

from guestfence.errors import HostError, PolicyError
from guestfence.nftables.apply import apply_nft, open_nft
from guestfence.policy.decide import require_gateway
from guestfence.policy.grammar import parse_destination
from guestfence.policy.model import Action, Flow, Policy
from guestfence.resolve import resolve_names
from guestfence.rootless.guard import host_guard
from guestfence.rootless.nftmode import compile_owner, compile_release
from guestfence.rootless.preflight import check_socket
from guestfence.rootless.stacks import Stack, StackCommand, guest_view, passt_command, slirp4netns_command
from guestfence.sandbox import Denial, Sandbox


class Mode(enum.Enum):
    SANDBOX = "sandbox"  # the seccomp supervisor, rootless
    NFT = "nft"  # rules in the output hook for the stack's user; needs root


@final
@dataclass(frozen=True, kw_only=True)
class Launch:
    """What will run, as what, under which policy; ``rules`` (nft mode) are
    the nftables commands for the stack's user ``uid``."""

    command: StackCommand
    argv: tuple[str, ...]
    policy: Policy
    mode: Mode
    user: str | None = None
    uid: int | None = None
    as_user: str | None = None
    rules: tuple[Any, ...] = ()
    unresolved: Mapping[str, str] = field(default_factory=dict, hash=False)

    def shown(self) -> dict[str, Any]:
        """What ``--dry-run`` prints."""
        if self.mode is Mode.NFT:
            return {"command": list(self.argv), "nftables": list(self.rules)}
        return {"command": list(self.argv), "default": self.policy.default.value,
                "allow": [str(r) for r in self.policy.allow], "deny": [str(r) for r in self.policy.deny]}  # fmt: skip


def prepare_launch(
    stack: Stack, *, target: str, tap: str, netns: str | None, extra: Sequence[str], chosen: Policy,
    explicit_default: bool, mode: Mode, user: str | None, as_user: str | None,
) -> Launch:  # fmt: skip
    """Check and build the launch (see the module header); raises PolicyError."""
    command = _stack_command(stack, target=target, tap=tap, netns=netns, extra=extra)
    require_gateway(chosen, frozenset(), hint="a rootless stack has no gateway of its own: use @host or addresses")
    policy = host_guard(chosen, default=chosen.default if explicit_default else Action.ALLOW)
    stack_user = user if mode is Mode.NFT else as_user
    option = "--user" if mode is Mode.NFT else "--as-user"
    check_socket(extra, None if stack_user is None else _user(stack_user, option))
    if mode is Mode.SANDBOX:
        return Launch(command=command, argv=_as_user(command.argv, as_user), policy=policy, mode=mode, as_user=as_user)
    if user is None:
        raise PolicyError("--mode nft needs --user NAME: the dedicated user the stack runs as")
    if as_user is not None:
        raise PolicyError("--as-user is for --mode sandbox; in nft mode the stack runs as --user")
    uid = _user(user, "--user").pw_uid
    if uid == 0:
        raise PolicyError("--user root would filter every root socket of the host; use a dedicated user")
    resolution = resolve_names(policy.names())
    argv = _as_user(command.argv, user, "--user") if os.geteuid() == 0 else command.argv
    return Launch(command=command, argv=argv, policy=policy, mode=mode, user=user, uid=uid,
                  rules=tuple(compile_owner(uid, policy, resolution.addresses)),
                  unresolved=dict(resolution.failures))  # fmt: skip


def run_nft(launch: Launch, run: Callable[[Sequence[str]], int]) -> int:
    """Install the rules for ``launch.user``, ``run`` the stack's argv, remove the rules; returns its status."""
    assert launch.mode is Mode.NFT and launch.uid is not None
    if os.geteuid() != 0:
        raise HostError("--mode nft loads nftables rules and needs root (CAP_NET_ADMIN)")
    nft = open_nft()
    apply_nft(nft, list(launch.rules), step=f"rules for user {launch.user}")
    try:
        return run(launch.argv)
    finally:
        apply_nft(nft, compile_release(launch.uid), step=f"removing the rules for user {launch.user}")


def sandbox_for(launch: Launch, *, deny_errno: str | None, on_denied: Callable[[Denial], None] | None) -> Sandbox:
    """The supervisor for sandbox mode; refuses (HostError) a stack it could not read."""
    stack = launch.command.stack
    if stack.needs_ptrace_capability and os.geteuid() != 0:
        raise HostError(
            f"{stack.value} makes itself non-dumpable in a user namespace of its own, so a supervisor "
            f"without CAP_SYS_PTRACE cannot read its calls; run guestfence as root with --as-user USER, "
            f"or use the nftables mode (docs/rootless.md)"
        )
    # A root stack needs its capabilities (setns, tap configuration); with
    # --as-user, setpriv needs only CAP_SETUID/SETGID, which the sandbox keeps.
    return Sandbox(launch.policy, deny_errno=deny_errno or stack.deny_errno, on_denied=on_denied,
                   keep_caps=launch.as_user is None)  # fmt: skip


def seen_by_guest(command: StackCommand, destination: str) -> str | None:
    """A denied destination (``proto://addr:port``) as the guest aimed at it (None: unknown)."""
    flow = parse_destination(destination)
    address = guest_view(command, flow.address)
    return None if address is None else str(Flow(proto=flow.proto, address=address, port=flow.port))


def _stack_command(stack: Stack, *, target: str, tap: str, netns: str | None, extra: Sequence[str]) -> StackCommand:
    if stack is Stack.SLIRP4NETNS:
        return slirp4netns_command(netns or target, tap, extra)
    if target or netns:
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
