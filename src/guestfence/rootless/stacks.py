"""The userspace stacks guestfence wraps: their command lines and how they map addresses. Pure.

A stack opens sockets on the host, as the host user, for its guest. Two
facts about each decide how guestfence can watch it (docs/rootless.md):

- which host destination stands for which guest destination: slirp4netns
  hands 10.0.2.2 to the host's 127.0.0.1 (unless --disable-host-loopback),
  passt and pasta hand their gateway address to the host's loopback (unless
  --no-map-gw), so a denial logged as 127.0.0.1 is what the guest sent to
  its gateway;
- whether a supervisor without privileges can read its calls: slirp4netns
  stays an ordinary process of the user, so a rootless supervisor works;
  passt and pasta move into a user namespace of their own, keep
  capabilities there and make themselves non-dumpable, so the kernel lets
  only a supervisor with CAP_SYS_PTRACE copy their sockets. Rootless, they
  are refused up front rather than left to fail on their first connect.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import final

from guestfence.errors import PolicyError
from guestfence.policy.model import Address

SLIRP_HOST_LOOPBACK = ipaddress.ip_address("10.0.2.2")


class Stack(enum.Enum):
    SLIRP4NETNS = "slirp4netns"
    PASST = "passt"
    PASTA = "pasta"

    @property
    def needs_ptrace_capability(self) -> bool:
        return self is not Stack.SLIRP4NETNS

    @property
    def deny_errno(self) -> str:
        """How a refused connect is answered to the stack. libslirp 4.7.0 (in
        slirp4netns 1.2.0) dereferences NULL when an IPv6 connect fails at
        once with ECONNREFUSED (its reset path); with EACCES it sends the
        guest an ICMP unreachable and lives on."""
        return "EACCES" if self is Stack.SLIRP4NETNS else "ECONNREFUSED"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class StackCommand:
    """The stack's argv and the guest-side address its host loopback appears as (if known)."""

    stack: Stack
    argv: tuple[str, ...]
    loopback_seen_as: Address | None


def slirp4netns_command(target: str, tap: str, extra: Sequence[str]) -> StackCommand:
    """``slirp4netns --configure --mtu=65520 [EXTRA] TARGET TAP``; TARGET is a PID or a netns path."""
    if not target:
        raise PolicyError("slirp4netns needs the PID of a process in the guest's namespace, or --netns PATH")
    netns_type = [] if target.isdigit() else ["--netns-type=path"]
    argv = ("slirp4netns", "--configure", "--mtu=65520", *netns_type, *extra, target, tap)
    seen = None if "--disable-host-loopback" in extra else SLIRP_HOST_LOOPBACK
    return StackCommand(stack=Stack.SLIRP4NETNS, argv=argv, loopback_seen_as=seen)


def passt_command(stack: Stack, extra: Sequence[str]) -> StackCommand:
    """``passt -f [EXTRA]`` or ``pasta -f [EXTRA]``: in the foreground, so the
    supervisor serves it for as long as it runs."""
    foreground = [] if {"-f", "--foreground"} & set(extra) else ["-f"]
    # passt and pasta give the guest the host's own gateway address, which
    # only the running stack knows: their loopback mapping is left unnamed.
    return StackCommand(stack=stack, argv=(stack.value, *foreground, *extra), loopback_seen_as=None)


def guest_view(command: StackCommand, host_destination: Address) -> Address | None:
    """The address the guest aimed at: the host's own, except where the
    stack maps the host's loopback to a guest-side address (None: unknown)."""
    if not host_destination.is_loopback:
        return host_destination
    return command.loopback_seen_as
