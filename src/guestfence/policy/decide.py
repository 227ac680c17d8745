"""decide(policy, flow, context) -> Decision: the single source of truth.

Rules of the decision, in order; nothing else affects it:

1. The destination is decided as the kernel delivers it (``as_delivered``):
   ``::ffff:a.b.c.d`` as ``a.b.c.d``, and the unspecified address
   (``0.0.0.0``, ``::``), which Linux delivers to loopback, as loopback. So
   neither a rule naming loopback (``127.0.0.0/8``, ``[::1]``) nor ``@host``
   can be bypassed, or mis-applied, through a form the kernel reinterprets.
2. A rule matches a flow only if its protocol is the flow's protocol (a UDP
   rule never authorises TCP), its host matches the address, and, for TCP
   and UDP, the port lies in one of its ranges.
3. ``@host`` is every address the host itself receives on: by form,
   loopback, multicast and the limited broadcast (``received_by_form``);
   otherwise what ``context.address_type`` says is local, broadcast,
   multicast or anycast (``HOST_RECEIVED``).
4. Any matching deny rule denies. Otherwise any matching allow rule allows.
   Otherwise the policy's default decides. Rule order never matters; when
   several rules match, the first in canonical (text) order is reported.
5. A flow the host translates (DNAT) is allowed only if both its
   destinations are (``decide_translated``).
6. Another registered guest's address (``context.guests``) is reached only
   through an allow rule naming an address (a CIDR, an address, a DNS
   name): ``*`` does not cover it and the default does not allow it
   (decided with the basis "another guest").
7. Hosts the context cannot answer (``@host`` for an address whose form
   does not tell and no ``address_type``, ``@gateway`` with no gateways, an
   unresolved DNS name) are decided closed: such a deny rule matches, such
   an allow rule does not.

Pure: no I/O here. ``context.address_type`` is the caller's function; the
backends pass a kernel route lookup, so ``@host`` follows address changes.
"""

from __future__ import annotations

from guestfence.errors import PolicyError
from guestfence.policy.model import (
    HOST_RECEIVED,
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
    as_delivered,
    received_by_form,
)

EMPTY_CONTEXT = Context()


def require_gateway(policy: Policy, gateways: frozenset[Address], *, hint: str) -> None:
    """Refuse a policy whose ``@gateway`` rules would mean nothing: with no
    gateway an allow about it matches nothing and a deny about it matches
    every destination of its protocol. Raises PolicyError ending in ``hint``."""
    if gateways:
        return
    rules = [str(r) for r in policy.rules if r.host == SymbolHost(Symbol.GATEWAY)]
    if rules:
        raise PolicyError(f"{', '.join(rules)}: @gateway needs a gateway address, and none is given ({hint})")
ANOTHER_GUEST = "another guest"
LINK_ESSENTIALS = ("neighbour discovery and MLD reports to the host, and the ICMP errors "
                   "(packet-too-big included) of connections the guest already has")
"""What every backend allows whatever the policy, because a link needs it to
work: ``explain`` names it, ``icmp://`` rules (ping) do not govern it."""


def decide(policy: Policy, flow: Flow, context: Context = EMPTY_CONTEXT) -> Decision:
    address = as_delivered(flow.address)
    seen = _as_seen(flow.address, address)
    for rule in policy.deny:
        if _matches(rule, flow, address, context, unknown=True):
            return Decision(action=Action.DENY, rule=rule, reason=f"denied by {rule}{seen}")
    other_guest = address in context.guests
    for rule in policy.allow:
        if other_guest and isinstance(rule.host, AnyHost):
            continue
        if _matches(rule, flow, address, context, unknown=False):
            return Decision(action=Action.ALLOW, rule=rule, reason=f"allowed by {rule}{seen}")
    if other_guest and policy.default is Action.ALLOW:
        return Decision(action=Action.DENY, rule=None, basis=ANOTHER_GUEST,
                        reason=f"denied: {address} is another guest's, reached only through a rule naming its address")
    verb = "allowed" if policy.default is Action.ALLOW else "denied"
    return Decision(action=policy.default, rule=None, reason=f"{verb} by default (no rule matched){seen}")


def decide_translated(policy: Policy, flow: Flow, delivered: Flow, context: Context = EMPTY_CONTEXT) -> Decision:
    """A flow the host translates (DNAT) to ``delivered``: allowed only if
    the policy allows both the destination the guest aimed at and the one it
    is delivered to; a denial says which of the two denied."""
    aimed = decide(policy, flow, context)
    if not aimed.allowed:
        return aimed
    after = decide(policy, delivered, context)
    if after.allowed:
        return Decision(action=Action.ALLOW, rule=aimed.rule, basis=aimed.basis,
                        reason=f"{aimed.reason}; delivered to {delivered}: {after.reason}")
    return Decision(action=Action.DENY, rule=after.rule, basis=after.basis,
                    reason=f"the host translates it to {delivered}: {after.reason}")


def _as_seen(aimed: Address, delivered: Address) -> str:
    return "" if aimed == delivered else f" ({aimed} is delivered to {delivered})"


def _matches(rule: Rule, flow: Flow, address: Address, context: Context, *, unknown: bool) -> bool:
    if rule.proto is not flow.proto:
        return False
    if rule.ports and not any(flow.port in r for r in rule.ports):
        return False
    return host_matches(rule.host, address, context, unknown=unknown)


def host_matches(host: object, address: Address, context: Context, *, unknown: bool) -> bool:
    """Whether ``host`` covers ``address`` (as delivered); ``unknown`` is the
    answer when the context cannot tell (True for deny rules, False for allow rules)."""
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
            return host_receives(address, context, unknown=unknown)
    raise TypeError(f"not a host: {host!r}")


def host_receives(address: Address, context: Context, *, unknown: bool = True) -> bool:
    """Whether the host itself receives ``address`` (as delivered): ``@host``."""
    if received_by_form(address):
        return True
    if context.address_type is None:
        return unknown
    return context.address_type(address) in HOST_RECEIVED
