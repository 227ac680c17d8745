"""What the guests' firewall decides for one flow of a registered guest. Pure.

``guestfence explain --guest NAME`` answers with ``explain_guest``, so that
it answers as the kernel does for that guest:

- the guest's context: its gateways, the addresses its rules' DNS names
  resolved to when it was applied, the addresses of every registered guest
  (``Context.guests``: ``*`` and the default do not reach them), and the
  host's live address types (the caller's ``address_type``);
- a destination no packet arriving on a link may have (unspecified,
  loopback, IPv4-mapped: ``compile.MARTIAN_DESTINATIONS``) is denied with
  the basis "martian": the firewall drops it before any rule, whatever the
  policy says (``decide`` itself reads ``0.0.0.0`` as loopback, which is
  what a local process's connect means, and a mapped address as IPv4);
- a flow the host translates (``dnat``) is decided for the destination the
  guest aimed at and for the one it is delivered to, as the firewall's
  second dispatch after destination NAT does.
"""

from __future__ import annotations

from collections.abc import Callable

from guestfence.nft.compile import MARTIAN_DESTINATIONS
from guestfence.nft.firewall import Registered, Registry
from guestfence.policy.decide import decide, decide_translated
from guestfence.policy.model import Action, Address, AddressType, Context, Decision, Flow

MARTIAN = "martian"


def guest_context(member: Registered, registry: Registry, address_type: Callable[[Address], AddressType]) -> Context:
    guests = frozenset(a.ip for m in registry.members for a in m.guest.addresses)
    return Context(gateways=frozenset(member.guest.gateways), address_type=address_type,
                   names=dict(member.names), guests=guests)


def explain_guest(member: Registered, flow: Flow, context: Context, *, dnat: Flow | None = None) -> Decision:
    if any(flow.address in net for net in MARTIAN_DESTINATIONS if net.version == flow.address.version):
        return Decision(action=Action.DENY, rule=None, basis=MARTIAN,
                        reason=f"denied: no packet arriving on a link may be aimed at {flow.address} (dropped before any rule)")
    if dnat is None:
        return decide(member.guest.policy, flow, context)
    return decide_translated(member.guest.policy, flow, dnat, context)
