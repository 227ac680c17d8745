"""decide(policy, flow, context) -> Decision: the single source of truth.

Rules of the decision, in order; nothing else affects it:

1. The destination is unmapped first: ``::ffff:a.b.c.d`` is decided as
   ``a.b.c.d``, so the mapped form can neither bypass a rule nor escape one.
2. A rule matches a flow only if its protocol is the flow's protocol (a UDP
   rule never authorises TCP), its host matches the address, and, for TCP
   and UDP, the port lies in one of its ranges.
3. Any matching deny rule denies. Otherwise any matching allow rule allows.
   Otherwise the policy's default decides. Rule order never matters; when
   several rules match, the first in canonical (text) order is reported.
4. Hosts the context cannot answer (``@host`` with no ``is_local``,
   ``@gateway`` with no gateways, an unresolved DNS name) are decided
   closed: such a deny rule matches, such an allow rule does not.

Unix destinations (``decide_unix``) follow the same laws 3 and 4: any
matching ``unix://`` deny rule denies, otherwise any matching allow rule
allows, otherwise the default. A path rule matches the resolved path
exactly; a directory rule (``unix://DIR/*``) every path below DIR; ``@NAME``
the abstract name exactly; ``@*`` every abstract name; ``*`` everything.

Pure: no I/O here. ``context.is_local`` is the caller's function; the
backends pass a kernel route lookup, so ``@host`` follows address changes.
"""

from __future__ import annotations

from guestfence.policy.model import (
    Action,
    Address,
    AnyHost,
    Context,
    Decision,
    Flow,
    NameHost,
    NetHost,
    Policy,
    Rule,
    Symbol,
    SymbolHost,
    UnixFlow,
    UnixRule,
    UnixScope,
    unmap,
)

EMPTY_CONTEXT = Context()


def decide(policy: Policy, flow: Flow, context: Context = EMPTY_CONTEXT) -> Decision:
    address = unmap(flow.address)
    for rule in policy.deny:
        if _matches(rule, flow, address, context, unknown=True):
            return Decision(action=Action.DENY, rule=rule, reason=f"denied by {rule}")
    for rule in policy.allow:
        if _matches(rule, flow, address, context, unknown=False):
            return Decision(action=Action.ALLOW, rule=rule, reason=f"allowed by {rule}")
    verb = "allowed" if policy.default is Action.ALLOW else "denied"
    return Decision(action=policy.default, rule=None, reason=f"{verb} by default (no rule matched)")


def _matches(rule: Rule, flow: Flow, address: Address, context: Context, *, unknown: bool) -> bool:
    if rule.proto is not flow.proto:
        return False
    if rule.ports and not any(flow.port in r for r in rule.ports):
        return False
    return host_matches(rule.host, address, context, unknown=unknown)


def host_matches(host: object, address: Address, context: Context, *, unknown: bool) -> bool:
    """Whether ``host`` covers ``address``; ``unknown`` is the answer when
    the context cannot tell (True for deny rules, False for allow rules)."""
    match host:
        case AnyHost():
            return True
        case NetHost(network=network):
            return address.version == network.version and address in network
        case NameHost(name=name):
            resolved = context.names.get(name)
            return unknown if resolved is None else address in resolved
        case SymbolHost(symbol=Symbol.GATEWAY):
            return address in context.gateways if context.gateways else unknown
        case SymbolHost(symbol=Symbol.HOST):
            return unknown if context.is_local is None else context.is_local(address)
    raise TypeError(f"not a host: {host!r}")


def decide_unix(policy: Policy, flow: UnixFlow) -> Decision:
    for rule in policy.deny_unix:
        if unix_matches(rule, flow):
            return Decision(action=Action.DENY, rule=rule, reason=f"denied by {rule}")
    for rule in policy.allow_unix:
        if unix_matches(rule, flow):
            return Decision(action=Action.ALLOW, rule=rule, reason=f"allowed by {rule}")
    verb = "allowed" if policy.default is Action.ALLOW else "denied"
    return Decision(action=policy.default, rule=None, reason=f"{verb} by default (no rule matched)")


def unix_matches(rule: UnixRule, flow: UnixFlow) -> bool:
    match rule.scope:
        case UnixScope.ANY:
            return True
        case UnixScope.ANY_ABSTRACT:
            return flow.abstract is not None
        case UnixScope.ABSTRACT:
            return flow.abstract == rule.target
        case UnixScope.PATH:
            return flow.path == rule.target
        case UnixScope.TREE:
            return flow.path is not None and (rule.target == "/" or flow.path.startswith(rule.target + "/"))
    raise TypeError(f"not a unix rule scope: {rule.scope!r}")
