"""host_guard(policy) -> Policy: the policy a rootless stack runs under. Pure.

A stack's job is to reach everything but the host, so the guard is
``default allow`` plus a deny of ``@host`` in every protocol. Deny beats
allow in guestfence, so an allow such as ``tcp://@host:8080`` would be
shadowed by a plain ``deny @host``; the guard instead denies the *rest* of
the host: ``tcp://@host:1-8079,8081-65535``. Every other rule of the
user's policy is kept as written, and the user's own default wins when one
was given.
"""

from __future__ import annotations

from guestfence.policy.model import (
    ANY_PORT,
    Action,
    Policy,
    PortRange,
    Proto,
    Rule,
    Symbol,
    SymbolHost,
    canonical_rules,
    merge_ports,
)

HOST = SymbolHost(Symbol.HOST)


def host_guard(policy: Policy, *, default: Action = Action.ALLOW) -> Policy:
    host_allows = [r for r in policy.allow if r.host == HOST]
    guards = []
    for proto in Proto:
        allowed = [p for r in host_allows if r.proto is proto for p in (r.ports or (ANY_PORT,))]
        rest = complement(merge_ports(allowed))
        if not rest:
            continue
        if rest == [PortRange(FIRST_PORT, ANY_PORT.hi)]:
            rest = [ANY_PORT]
        guards.append(Rule(proto=proto, host=HOST, ports=tuple(rest) if proto.has_ports else ()))
    return Policy(
        default=default,
        allow=policy.allow,
        deny=tuple(canonical_rules(policy.deny + tuple(guards))),
    )


FIRST_PORT = 1
"""Port 0 carries nothing (the kernel refuses a TCP connect or UDP send to
it), and a rule cannot name it, so the rest of the host starts at 1."""


def complement(ranges: list[PortRange]) -> list[PortRange]:
    """The ports 1-65535 outside ``ranges`` (sorted and merged)."""
    if ranges == [ANY_PORT]:
        return []
    rest, start = [], FIRST_PORT
    for r in ranges:
        if r.lo > start:
            rest.append(PortRange(start, r.lo - 1))
        start = max(start, r.hi + 1)
    if start <= ANY_PORT.hi:
        rest.append(PortRange(start, ANY_PORT.hi))
    return rest
