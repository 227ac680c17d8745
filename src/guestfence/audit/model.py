"""Value types of the audit: what listens on the host, what a guest could aim
at, what a probe saw, and how that compares with a policy. Pure: no I/O.

The chain of values is::

    Listener (collect)  ->  Target (plan_targets)  ->  Observation (probe)
                                                    ->  Finding (compare)

A Target is one (protocol, host address, port) a guest could aim at; it
keeps the listeners behind it, so every later value can say which process
owns the service.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import final

from guestfence.policy.model import Address, Decision, Flow, Proto


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Process:
    pid: int
    name: str

    def __str__(self) -> str:
        return f"{self.name}[{self.pid}]"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Listener:
    """A listening TCP socket or a bound, unconnected UDP socket on the host.

    ``address`` is the bound address (``0.0.0.0``/``::`` for every address;
    an IPv4-mapped bind is kept as IPv4). ``v6only`` is False for a ``::``
    socket that also takes IPv4. ``device`` is the SO_BINDTODEVICE interface.
    """

    proto: Proto
    address: Address
    port: int
    v6only: bool = False
    device: str | None = None
    inode: int = 0
    owners: tuple[Process, ...] = ()

    def __post_init__(self) -> None:
        if self.proto is Proto.ICMP:
            raise ValueError("icmp has no listeners")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} out of range")

    @property
    def wildcard(self) -> bool:
        return self.address.is_unspecified

    @property
    def owned_by(self) -> str:
        return ", ".join(str(p) for p in self.owners) or "?"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """One destination a guest could aim at, and the listeners that serve it."""

    proto: Proto
    address: Address
    port: int
    listeners: tuple[Listener, ...] = ()

    @property
    def flow(self) -> Flow:
        return Flow(proto=self.proto, address=self.address, port=self.port)

    @property
    def owned_by(self) -> str:
        owners = sorted({p for lst in self.listeners for p in lst.owners}, key=lambda p: (p.name, p.pid))
        return ", ".join(str(p) for p in owners) or "?"

    def __str__(self) -> str:
        return str(self.flow)


class Status(enum.Enum):
    """What a probe saw. The text is what the reports print."""

    REACHABLE = "reachable"
    REFUSED = "refused"
    """TCP reset or ICMP port unreachable: closed, from the guest's side."""
    UNREACHABLE = "unreachable"
    """ICMP host/net unreachable or prohibited, or no route in the guest."""
    FILTERED = "filtered"
    """TCP: no answer at all within the time bound."""
    DROPPED = "dropped"
    """UDP: no answer, and a drop counter of table inet guestfence rose."""
    NO_ANSWER = "no answer (open|filtered)"
    """UDP: no answer and no drop counted; the service may have got it."""
    GUEST_LOCAL = "guest's own address"
    """The address is local inside the guest: packets never leave it."""

    @property
    def reachable(self) -> bool:
        return self is Status.REACHABLE

    @property
    def known(self) -> bool:
        """Whether the probe tells reachable from unreachable."""
        return self is not Status.NO_ANSWER


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    target: Target
    status: Status
    detail: str = ""


class Verdict(enum.Enum):
    """How an observation compares with the policy."""

    VIOLATION = "violation"
    """Reachable, and the policy denies it."""
    ALLOWED = "allowed"
    """Reachable, and the policy allows it."""
    BLOCKED = "blocked"
    """Not reachable, and the policy denies it."""
    MISSING = "allowed but unreachable"
    """The policy allows it, yet the guest cannot reach it."""
    UNKNOWN = "unknown"
    """The probe cannot tell (UDP without an answer)."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    observation: Observation
    decision: Decision
    verdict: Verdict

    @property
    def target(self) -> Target:
        return self.observation.target
