"""Lockdown patterns -> LockdownPlan: nftables commands and sysctl steps. Pure: no I/O.

Where the host's stack can still get a frame that arrives on a guest-only
interface, in the order ``__netif_receive_skb_core`` runs (kernel 6.x):

1. AF_PACKET taps (``ptype_all``). Not the stack; packet sockets see every
   frame and no hook comes before them (docs/lockdown.md).
2. tc ingress, then the **netdev ingress** hook. Not used: it runs *before*
   the rx_handler, so a drop there also cuts off the guest behind a
   macvlan/macvtap (the lab test checks this).
3. The **rx_handler** of a device with an upper device:
   - bridge port: every frame is consumed; what is meant for the host
     (broadcast, multicast, the bridge's MAC) leaves through the bridge
     family's **input** hook with ``iifname`` = the port, then enters the
     stack on the bridge device. Link-local 01:80:c2:00:00:0X frames are
     handed back and go up on the port itself (step 4).
   - macvlan/macvtap lower device: unicast is consumed (passthru: all of it,
     to the guest). Broadcast and multicast are cloned to the guests *and*
     passed on to step 4: the leak the issue is about.
4. The protocol handlers of the device itself: ``ip_rcv``/``ipv6_rcv`` ->
   the **inet prerouting** hook; ``arp_rcv`` -> the **arp input** hook. A
   standalone TAP or veth (no rx_handler) gets here with every frame.

So each pattern gets a drop rule at inet prerouting, arp input and bridge
input, all matching the *input* interface by name: none of them sees the
guest's own copies (those are re-received on the macvlan/macvtap device,
usually in another namespace, or forwarded by the bridge), so the guest
keeps its traffic. A fourth rule at inet output stops the host's own stack
from sending on the interface (IPv6 DAD, router solicitations, MLD) in the
moment between a link's creation and the watcher's sysctl writes.

Rules match by name (``iifname "vlan*"``), so they are in force before the
interface exists. Sysctls exist only per existing interface: the plan lists
steps for the links it is given, and the link watcher applies the same steps
to a link that appears later (``plan_link``).

Devices stacked on a locked link are covered too. A macvlan/macvtap device
re-receives its lower device's frames under its own name, and a macvtap
that no process holds open (before QEMU starts, after it exits) passes
them to the host stack. nftables cannot match "the lower device", so:

- every **macvtap** is matched by kind (``meta iifkind "macvtap"``, and
  ``oifkind`` at output), in force before any macvtap exists. The host
  stack receives on a macvtap only while no process holds it open (with a
  reader, tap_handle_frame hands every frame to the reader), so this drop
  never takes a frame from a guest;
- every macvlan/macvtap whose lower device (IFLA_LINK, same namespace) is
  covered by a pattern goes into the ``stacked`` set (interface indexes),
  filled by this plan for existing ones and by the watcher for new ones,
  and gets the same sysctls as a matched link.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, final

from guestfence.errors import PlanError
from guestfence.lockdown.pattern import InterfacePattern
from guestfence.lockdown.state import InterfaceRecord, LockdownState, SysctlChange, SysctlStep
from guestfence.nftables import build as b
from guestfence.nftables.apply import Command

TABLE = "guestfence_lockdown"
OURS = b.Table(TABLE)
# Before defragmentation (-400) and conntrack (-200): a dropped packet leaves
# no reassembly queue and no conntrack entry, and no other table sees it.
PRIORITY = -450


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Hook:
    """One place a lockdown rule sits, and the interface key it matches."""

    family: str
    chain: str
    key: str
    purpose: str


HOOKS = (
    Hook(family="inet", chain="prerouting", key="iifname",
         purpose="IPv4/IPv6 the interface hands to the host stack (macvlan broadcasts, standalone TAP/veth, "
                 "link-local frames of a bridge port)"),
    Hook(family="inet", chain="output", key="oifname",
         purpose="the host's own IPv4/IPv6 sent on the interface (IPv6 autoconf before the sysctls land)"),
    Hook(family="arp", chain="input", key="iifname",
         purpose="ARP the interface hands to the host (requests, gratuitous ARP, replies)"),
    Hook(family="bridge", chain="input", key="iifname",
         purpose="frames a bridge port passes up to the bridge device, i.e. to the host"),
)  # fmt: skip
FAMILIES = tuple(dict.fromkeys(h.family for h in HOOKS))

# (family, key, value, why). IPv6 steps are optional: without the IPv6
# module, or on a link whose MTU is below 1280, the paths do not exist and
# there is no IPv6 stack on the link to harden.
SYSCTLS: tuple[tuple[str, str, str, str], ...] = (
    ("ipv6", "disable_ipv6", "1", "ipv6_rcv drops everything; no link-local address, DAD, RS or MLD"),
    ("ipv6", "accept_ra", "0", "router advertisements configure nothing if IPv6 is turned back on"),
    ("ipv6", "autoconf", "0", "no SLAAC addresses if IPv6 is turned back on"),
    ("ipv6", "drop_unicast_in_l2_multicast", "1", "unicast IPv6 in broadcast/multicast frames is dropped"),
    ("ipv4", "arp_ignore", "8", "never answer an ARP request received here"),
    ("ipv4", "arp_announce", "2", "never put another interface's address in ARP sent here"),
    ("ipv4", "drop_unicast_in_l2_multicast", "1", "unicast IPv4 in broadcast/multicast frames is dropped"),
    ("ipv4", "rp_filter", "1", "strict reverse path: no route points here, so unicast from here fails it"),
)


# Devices that re-receive their lower device's frames under their own name.
STACKED_KINDS = ("macvlan", "macvtap")
# The kind whose host-stack input is never a guest's: dropped by kind.
TAP_KIND = "macvtap"
STACKED_SET = "stacked"
# Which recorded change the tables hold (lockdown.state): one element, in the inet table.
GENERATION_SET = "generation"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Link:
    """An interface that exists now: its name, the kernel's index for it, its
    kind (rtnl link kind, None for a plain device), the index of its lower
    device when that is in the same namespace, and the IPv6 configuration
    on it that disabling IPv6 would delete (static addresses and routes)."""

    name: str
    ifindex: int
    kind: str | None = None
    lower: int | None = None
    ipv6_config: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, int]:
        """Name and index: what identifies this interface in the record."""
        return (self.name, self.ifindex)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class LinkSteps:
    """The sysctl steps for one existing link; ``kept`` says which step was
    left out and why (disabling IPv6 would delete configuration)."""

    link: Link
    steps: tuple[SysctlStep, ...]
    kept: tuple[str, ...] = ()


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class LockdownPlan:
    """What applying a change does: the whole pattern set after it, one
    nftables transaction, and sysctls to set. ``release`` are the records no
    pattern covers any more; ``revert`` the changes in them to write back,
    those on interfaces that still exist with the recorded index.
    ``generation``: the change's number, written into the tables."""

    patterns: tuple[InterfacePattern, ...]
    commands: tuple[Command, ...] = field(hash=False)
    harden: tuple[LinkSteps, ...]
    release: tuple[InterfaceRecord, ...]
    revert: tuple[SysctlChange, ...]
    stacked: tuple[Link, ...] = ()
    generation: int = 0


def plan_add(
    state: LockdownState,
    added: tuple[InterfacePattern, ...],
    *,
    links: tuple[Link, ...],
    protected: Mapping[str, str],
    force: bool = False,
) -> LockdownPlan:
    """Lock down ``added`` as well (see ``plan_replace`` for the checks)."""
    return plan_replace(state, (*state.patterns, *added), links=links, protected=protected, force=force)


def plan_replace(
    state: LockdownState,
    patterns: tuple[InterfacePattern, ...],
    *,
    links: tuple[Link, ...],
    protected: Mapping[str, str],
    force: bool = False,
) -> LockdownPlan:
    """Make ``patterns`` the whole set. Raises PlanError when a pattern not
    already in force covers a protected interface (``protected`` maps its
    name to why), by name or as a device stacked on a matching one, unless
    ``force``."""
    patterns = tuple(dict.fromkeys(patterns))
    if not force:
        _refuse_protected(tuple(p for p in patterns if p not in state.patterns), protected, links)
    return _plan(state, patterns, links)


def plan_remove(state: LockdownState, removed: tuple[InterfacePattern, ...], *, links: tuple[Link, ...]) -> LockdownPlan:
    """Stop locking down ``removed``. Raises PlanError for a pattern not in force."""
    unknown = [p.text for p in removed if p not in state.patterns]
    if unknown:
        current = ", ".join(repr(p.text) for p in state.patterns) or "none"
        raise PlanError(f"not locked down: {', '.join(map(repr, unknown))} (locked down: {current})")
    return _plan(state, tuple(p for p in state.patterns if p not in removed), links)


def plan_restore(state: LockdownState, *, links: tuple[Link, ...]) -> LockdownPlan:
    """Re-apply the recorded patterns, e.g. after a reboot emptied the ruleset."""
    return _plan(state, state.patterns, links)


def plan_flush(state: LockdownState, *, links: tuple[Link, ...]) -> LockdownPlan:
    """Remove the tables and write back every recorded sysctl. The caller
    keeps the patterns in its record, so ``plan_restore`` brings them back."""
    return _plan(state, (), links)


def plan_link(state: LockdownState, link: Link, links: tuple[Link, ...]) -> LinkSteps | None:
    """The sysctl steps for a link that just appeared (``links``: every link
    now, to find its lower device), or None if the patterns do not cover it."""
    by_name = any(p.matches(link.name) for p in state.patterns)
    if not by_name and link.key not in {found.key for found in stacked_links(state.patterns, links)}:
        return None
    return link_steps(link)


def stacked_links(patterns: tuple[InterfacePattern, ...], links: tuple[Link, ...]) -> tuple[Link, ...]:
    """The macvlan/macvtap devices whose lower device a pattern matches."""
    matched = {link.ifindex for link in links if any(p.matches(link.name) for p in patterns)}
    return tuple(
        link
        for link in links
        if link.kind in STACKED_KINDS and link.lower in matched and not any(p.matches(link.name) for p in patterns)
    )


def covered_links(patterns: tuple[InterfacePattern, ...], links: tuple[Link, ...]) -> tuple[Link, ...]:
    """The links ``patterns`` lock down: those they match by name, and the
    devices stacked on those."""
    stacked = {link.key for link in stacked_links(patterns, links)}
    return tuple(link for link in links if any(p.matches(link.name) for p in patterns) or link.key in stacked)


def link_steps(link: Link) -> LinkSteps:
    """The sysctl steps for ``link``. ``disable_ipv6`` is left out when the
    link carries IPv6 configuration it would delete (static addresses,
    routes), since ``remove`` could not give those back; the rules still
    drop the link's IPv6."""
    steps = sysctl_steps(link.name)
    if not link.ipv6_config:
        return LinkSteps(link=link, steps=steps)
    why = (f"disable_ipv6 left as it is: it would delete {', '.join(link.ipv6_config)}, which remove could not "
           "give back; the lockdown rules still drop IPv6 on it")  # fmt: skip
    return LinkSteps(link=link, steps=tuple(s for s in steps if s.key != "disable_ipv6"), kept=(why,))


def sysctl_steps(interface: str) -> tuple[SysctlStep, ...]:
    return tuple(
        SysctlStep(family=family, interface=interface, key=key, value=value, optional=family == "ipv6")
        for family, key, value, _ in SYSCTLS
    )


def _plan(state: LockdownState, patterns: tuple[InterfacePattern, ...], links: tuple[Link, ...]) -> LockdownPlan:
    dropped = tuple(p for p in state.patterns if p not in patterns)
    covered = covered_links(patterns, links)
    stacked = stacked_links(patterns, links)
    harden = tuple(link_steps(link) for link in covered)
    covered_keys = {link.key for link in covered}
    release = tuple(
        r for r in state.interfaces
        if (r.interface, r.ifindex) not in covered_keys and not any(p.matches(r.interface) for p in patterns)
    )  # fmt: skip
    alive = {link.key for link in links}
    revert = tuple(change for record in release if (record.interface, record.ifindex) in alive for change in record.changes)
    generation = state.generation + 1
    return LockdownPlan(patterns=patterns, commands=compile_rules(patterns, dropped, stacked, generation=generation),
                        harden=harden, release=release, revert=revert, stacked=stacked, generation=generation)  # fmt: skip


def _refuse_protected(
    patterns: tuple[InterfacePattern, ...], protected: Mapping[str, str], links: tuple[Link, ...]
) -> None:
    hits = [
        f"{p.text!r} matches {name} ({why})"
        for p in patterns
        for name, why in sorted(protected.items())
        if p.matches(name)
    ]
    for link in stacked_links(patterns, links):
        if link.name in protected:
            lower = next((other.name for other in links if other.ifindex == link.lower), "?")
            hits.append(f"{link.name} ({protected[link.name]}) is a {link.kind} on {lower}, which would be locked down")
    if hits:
        raise PlanError("refusing to lock down: " + "; ".join(hits) + " (use --force if meant)")


def counter_name(hook: Hook, pattern: InterfacePattern) -> str:
    """A counter name nftables accepts for any pattern: characters outside
    [A-Za-z0-9.-] are written as _XX hex, so two patterns never share one."""
    safe = "".join(c if c.isascii() and (c.isalnum() or c in ".-") else f"_{ord(c):02x}" for c in pattern.text)
    return f"{hook.chain}_{safe}"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class StackedRule:
    """A rule about stacked devices rather than a pattern: by the ``stacked``
    set of indexes, or by the macvtap kind. ``counter`` contains "__", which
    ``counter_name`` never produces, so it cannot collide with a pattern's."""

    hook: Hook
    what: str
    key: str
    right: str

    @property
    def counter(self) -> str:
        return f"{self.hook.chain}__{self.what}"


_INDEX_KEY = {"iifname": "iif", "oifname": "oif"}
_KIND_KEY = {"iifname": "iifkind", "oifname": "oifkind"}


def stacked_rules() -> tuple[StackedRule, ...]:
    """Per inet/arp hook: a drop for the ``stacked`` set and one for every macvtap.
    The bridge input hook needs neither: a macvlan/macvtap is never a bridge port
    that hands frames up (its own rx_handler comes first)."""
    return tuple(
        rule
        for hook in HOOKS
        if hook.family != "bridge"
        for rule in (
            StackedRule(hook=hook, what=STACKED_SET, key=_INDEX_KEY[hook.key], right=f"@{STACKED_SET}"),
            StackedRule(hook=hook, what=TAP_KIND, key=_KIND_KEY[hook.key], right=TAP_KIND),
        )
    )


def compile_rules(
    patterns: tuple[InterfacePattern, ...], dropped: tuple[InterfacePattern, ...], stacked: tuple[Link, ...] = (),
    *, generation: int = 0,
) -> tuple[Command, ...]:
    """The one transaction that makes the tables hold exactly ``patterns``
    and the ``stacked`` devices, and the inet table ``generation``.

    Chains and the ``stacked`` set are flushed and refilled, so re-applying
    is idempotent. Named counters survive a change to other patterns; a
    dropped pattern's counters are added then deleted, which works whether
    or not they exist. With no pattern left, each table is added then
    deleted: none remains.
    """
    commands: list[Command] = []
    for family in FAMILIES:
        commands.append(OURS.add_table(family))
        if not patterns:
            commands.append(OURS.delete_table(family))
            continue
        hooks = [h for h in HOOKS if h.family == family]
        extra = [r for r in stacked_rules() if r.hook.family == family]
        if family == "inet":
            commands += [OURS.add_set(family, GENERATION_SET, "mark"), OURS.flush_set(family, GENERATION_SET),
                         OURS.add_element(family, GENERATION_SET, [generation])]  # fmt: skip
        if extra:
            commands += [OURS.add_set(family, STACKED_SET, "iface_index"), OURS.flush_set(family, STACKED_SET)]
            if stacked:
                commands.append(OURS.add_element(family, STACKED_SET, sorted(link.ifindex for link in stacked)))
        for hook in hooks:
            commands.append(OURS.add_base_chain(family, hook.chain, hook=hook.chain, prio=PRIORITY))
            commands.append(OURS.flush_chain(family, hook.chain))
        for hook in hooks:
            for pattern in patterns:
                commands.append(OURS.add_counter(family, counter_name(hook, pattern)))
            for pattern in dropped:
                commands += [OURS.add_counter(family, counter_name(hook, pattern)),
                             OURS.delete_counter(family, counter_name(hook, pattern))]  # fmt: skip
        for rule in extra:
            commands.append(OURS.add_counter(family, rule.counter))
        for hook in hooks:
            for pattern in patterns:
                drop = [b.match(b.meta(hook.key), pattern.text), b.counter_ref(counter_name(hook, pattern)), b.DROP]
                commands.append(OURS.add_rule(family, hook.chain, drop))
            for extra_rule in (r for r in extra if r.hook == hook):
                drop = [b.match(b.meta(extra_rule.key), extra_rule.right), b.counter_ref(extra_rule.counter), b.DROP]
                commands.append(OURS.add_rule(family, hook.chain, drop))
    return tuple(commands)


def generation_of(ruleset: list[Command]) -> int | None:
    """The generation a listing of the inet table holds (None: no table, or no generation in it)."""
    for item in ruleset:
        found = item.get("set")
        if found and found.get("table") == TABLE and found.get("family") == "inet" and found.get("name") == GENERATION_SET:
            elements = found.get("elem", [])
            return int(elements[0]) if elements else None
    return None


def compile_stacked_update(stacked: tuple[Link, ...]) -> tuple[Command, ...]:
    """The watcher's transaction: the ``stacked`` sets hold exactly ``stacked``."""
    commands: list[Command] = []
    for family in dict.fromkeys(r.hook.family for r in stacked_rules()):
        commands.append(OURS.flush_set(family, STACKED_SET))
        if stacked:
            commands.append(OURS.add_element(family, STACKED_SET, sorted(link.ifindex for link in stacked)))
    return tuple(commands)


def plan_to_json(plan: LockdownPlan) -> dict[str, Any]:
    """What ``--dry-run`` prints: the batch as libnftables gets it, the
    sysctls to set (each only if it differs) and the values to write back."""
    return {
        "nftables": [{"metainfo": {"json_schema_version": 1}}, *plan.commands],
        "sysctls": [
            {"name": step.name, "value": step.value, "optional": step.optional}
            for link_steps in plan.harden
            for step in link_steps.steps
        ],
        "write_back": [
            {"name": change.step.name, "value": change.old, "if_still": change.step.value} for change in plan.revert
        ],
        "stacked": [{"interface": link.name, "ifindex": link.ifindex, "kind": link.kind} for link in plan.stacked],
        "kept": [{"interface": ls.link.name, "why": why} for ls in plan.harden for why in ls.kept],
    }
