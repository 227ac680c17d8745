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
  second dispatch after destination NAT does;
- ``link_essentials`` names what the firewall accepts on the guest's link
  whatever the policy says, read from the compiler's own sets
  (``compile.CONSTANT_SETS``), so ``explain`` never contradicts the kernel.

``explain_registered`` reads the record (I/O) and answers for a guest by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from guestfence.errors import PolicyError
from guestfence.guests.compile import CONSTANT_SETS, MARTIAN_DESTINATIONS
from guestfence.guests.firewall import GUESTS_KEY, Registered, Registry, registry_from_json
from guestfence.guests.names import INET, LINK_ICMPV6
from guestfence.policy.decide import decide, decide_translated
from guestfence.policy.model import Action, Address, AddressType, Context, Decision, Flow
from guestfence.state import StateStore

MARTIAN = "martian"
_ESTABLISHED = ("ct state established,related: the replies and ICMP errors (packet-too-big included) "
                "of connections the guest already has")  # fmt: skip


def link_essentials(flow: Flow) -> tuple[str, ...]:
    """What the guest's link is allowed whatever the policy, next to ``flow``
    (which the policy alone decides): the ICMPv6 types of neighbour
    discovery and MLD to the host (IPv6 flows), and connection tracking's
    established and related packets."""
    essentials = [_ESTABLISHED]
    if flow.address.version == 6:
        types = ", ".join(CONSTANT_SETS[(INET, LINK_ICMPV6)][1])
        essentials.insert(0, f"icmpv6 type {{{types}}} to the host: neighbour discovery and MLD")
    return tuple(essentials)


def explain_registered(
    directory: str, name: str, flows: Sequence[Flow], address_type: Callable[[Address], AddressType],
    translations: Mapping[Flow, Flow],
) -> list[tuple[Flow, Decision]]:  # fmt: skip
    """Each flow decided as the firewall decides it for registered guest ``name``. Raises PolicyError."""
    with StateStore(directory, read_only=True) as store:
        registry = registry_from_json(store.section(GUESTS_KEY), where=str(store.path))
    member = registry.find(name)
    if member is None:
        known = ", ".join(g.name for g in registry.guests()) or "none"
        raise PolicyError(f"--guest {name!r} is not a registered guest (registered: {known})")
    context = guest_context(member, registry, address_type)
    return [(flow, explain_guest(member, flow, context, dnat=translations.get(flow))) for flow in flows]


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
