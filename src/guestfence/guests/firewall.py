"""The guest firewall at work: its record, its plans, and the live ruleset
compared with the record for ``status``.

``plan_*`` are pure: they take guests whose DNS names are already resolved
(``resolve_guest``; the feature's ``plan_apply``/``plan_restore`` take the
``Resolution`` of the names ``dns_names`` lists, looked up by the caller)
and return the transaction plus the record to keep;
``apply_plan`` is the only function here that changes the ruleset, through
guestfence.nftables.apply. What the rules are is compile.py's job; how the live
tables are compared with them is drift.py's.

The record, under the state file's ``"guests"`` key::

    {"pattern": "vmtap*", "generation": 7,
     "members": [{...guest_to_json..., "resolved": {"api.example.com": ["203.0.113.7"]},
                  "unresolved": {"gone.example": "no addresses"},
                  "link": {"owner": "qemu", "ifindex": 17}}],    # integrations only: guestfence.guests.binding
     "pending": {...the same, for a change being applied...}}

Every change bumps ``generation``, which the transaction also writes into
the tables (compile.Settings). A change is recorded as ``pending`` before
its transaction and committed after it (guestfence.state.FeaturePlan), so a
crash in between is seen: ``status`` reports the tables' generation against
the record's, and ``restore`` keeps the pending change if the tables hold
it, else drops it. ``apply FILE`` and ``restore`` record the whole new
section as pending; ``guest add|remove`` only what changes, applied to the
committed section when it is read back (``pending_change``)::

    "pending": {"generation": 8, "put": [{...member...}], "drop": ["vm3"], "drop_unreadable": []}

so that adding one guest to 1000 does not write all of them twice more.

A member that cannot be read back (a missing key, a bad rule) is kept in
the record as it is and reported; ``restore`` installs every other guest
and drops the bad member's interface like an unregistered one.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, final

from guestfence.errors import ApplyError, HostError, PolicyError
from guestfence.guests import names as n
from guestfence.nftables.apply import NftHandle, apply_nft, open_nft
from guestfence.guests.binding import Binding, binding_from_json, binding_to_json, collect_link_indexes, drop_stale
from guestfence.guests.compile import (
    NamesOf,
    NftPlan,
    Others,
    OwnerKey,
    Profiles,
    Settings,
    address_key,
    claim,
    compile_add,
    compile_flush,
    compile_remove,
    compile_ruleset,
    owner_keys,
)
from guestfence.guests.guest import (
    DEFAULT_PATTERN,
    IFACE_NAME,
    Guest,
    RecordedFields,
    guest_from_json,
    guest_to_json,
    packed_address,
    parse_pattern,
    recorded_guest,
)
from guestfence.policy.model import Address
from guestfence.resolve import Resolution, Resolver, resolve_names
from guestfence.state import FeaturePlan
from guestfence.value import Value, init_field, replace

if TYPE_CHECKING:  # drift (difflib, threading, ctypes) is imported by status and restore only: start-up of guest add
    from guestfence.guests.drift import Drift, Item

GUESTS_KEY = "guests"


@final
class Registered(Value):
    """A guest with the addresses its rules' DNS names resolved to when applied.
    ``record``: the recorded form it was read from (written back as it is, so
    a change of one guest does not serialise every other), None for a new one."""

    __slots__ = ("guest", "names", "unresolved", "record", "link")
    COMPARED = ("guest", "names", "unresolved", "link")
    HASHED = ("guest", "link")
    HIDDEN = ("record",)
    guest: Guest
    names: Mapping[str, frozenset[Address]]
    unresolved: Mapping[str, str]
    record: Mapping[str, Any] | None
    link: Binding | None
    """Set by an integration: the interface it was made for (guestfence.guests.binding)."""

    def __init__(self, *, guest: Guest, names: Mapping[str, frozenset[Address]] | None = None,
                 unresolved: Mapping[str, str] | None = None, record: Mapping[str, Any] | None = None,
                 link: Binding | None = None) -> None:
        init_field(self, "guest", guest)
        init_field(self, "names", {} if names is None else names)
        init_field(self, "unresolved", {} if unresolved is None else unresolved)
        init_field(self, "record", record)
        init_field(self, "link", link)


@final
class Unreadable(Value):
    """A recorded member that could not be read back: kept verbatim, its interface closed."""

    __slots__ = ("raw", "problem", "name", "iface")
    HASHED = ("problem", "name", "iface")
    raw: Any
    problem: str
    name: str | None
    iface: str | None

    def __init__(self, *, raw: Any, problem: str, name: str | None, iface: str | None) -> None:
        init_field(self, "raw", raw)
        init_field(self, "problem", problem)
        init_field(self, "name", name)
        init_field(self, "iface", iface)


@final
class Registry(Value):
    """Every registered guest and the table-wide settings: the recorded section."""

    __slots__ = ("settings", "members", "unreadable", "pending")
    HASHED = ("settings", "members", "unreadable")
    settings: Settings
    members: tuple[Registered, ...]
    unreadable: tuple[Unreadable, ...]
    pending: Mapping[str, Any] | None

    def __init__(self, *, settings: Settings | None = None, members: tuple[Registered, ...] = (),
                 unreadable: tuple[Unreadable, ...] = (), pending: Mapping[str, Any] | None = None) -> None:
        init_field(self, "settings", Settings() if settings is None else settings)
        init_field(self, "members", members)
        init_field(self, "unreadable", unreadable)
        init_field(self, "pending", pending)

    def find(self, name: str) -> Registered | None:
        return next((m for m in self.members if m.guest.name == name), None)

    def guests(self) -> list[Guest]:
        return [m.guest for m in self.members]

    def names_of(self, *extra: Registered) -> NamesOf:
        """Each guest's own resolved names (its record), by the guest value
        (a guest and its replacement are told apart)."""
        found = {id(m.guest): m.names for m in (*self.members, *extra)}
        return lambda guest: found.get(id(guest), {})

    def to_json(self) -> dict[str, Any]:
        members = [member_to_json(m) for m in self.members] + [u.raw for u in self.unreadable]
        return {"pattern": self.settings.pattern, "generation": self.settings.generation, "members": members}

    def problems(self) -> list[str]:
        return [f"recorded guest {u.name or '?'}: {u.problem}" + (f" (interface {u.iface} kept closed)" if u.iface else "")
                for u in self.unreadable]  # fmt: skip


def member_to_json(member: Registered) -> Mapping[str, Any]:
    if member.record is not None:
        return member.record
    record = guest_to_json(member.guest)
    record["resolved"] = {name: sorted(str(a) for a in found) for name, found in sorted(member.names.items())}
    record["unresolved"] = dict(sorted(member.unresolved.items()))
    if member.link is not None:
        record["link"] = binding_to_json(member.link)
    return record


def registry_from_json(data: Mapping[str, Any] | None, *, where: str) -> Registry:
    """The recorded section back as values, every member readable.
    Raises PolicyError naming ``where`` and each member that is not."""
    registry = salvage_registry(data, where=where)
    if registry.unreadable:
        problems = "; ".join(registry.problems())
        raise PolicyError(f"{where}: malformed guests record: {problems} "
                          "(`guestfence restore` installs the others; `guest remove NAME` drops a bad one)")  # fmt: skip
    return registry


def salvage_registry(data: Mapping[str, Any] | None, *, where: str) -> Registry:
    """The recorded section with every member that can be read; the others
    are kept as ``Unreadable``. Raises PolicyError only when the section
    itself is not a guests record."""
    if data is None:
        return Registry()
    pattern, generation, records, pending = _section(data, where=where)
    members: list[Registered] = []
    unreadable: list[Unreadable] = []
    for index, record in enumerate(records):
        try:
            members.append(_member_from_json(record, where=f"{where}: member {index + 1}"))
        except PolicyError as exc:
            unreadable.append(_unreadable(record, str(exc)))
    settings = Settings(pattern=pattern, generation=generation,
                        closed=_closed(unreadable, [(m.guest.iface, m.guest.bridge) for m in members]))  # fmt: skip
    return Registry(settings=settings, members=tuple(members), unreadable=tuple(unreadable), pending=pending)


def _section(data: Mapping[str, Any], *, where: str) -> tuple[str, int, list[Any], Mapping[str, Any] | None]:
    """The pattern, generation, member records and pending change of a recorded section. Raises PolicyError."""
    try:
        pattern = parse_pattern(data.get("pattern", DEFAULT_PATTERN), where=f"{where}: ")
        generation = data.get("generation", 0)
        records = data["members"]
        if not isinstance(generation, int) or not isinstance(records, list):
            raise TypeError("generation must be a number and members a list")
        pending = data.get("pending")
    except (KeyError, TypeError, AttributeError) as exc:
        raise PolicyError(f"{where}: malformed guests record ({exc})") from None
    return pattern, generation, records, pending if isinstance(pending, Mapping) else None


def _closed(unreadable: Sequence[Unreadable], links: Sequence[tuple[str, str | None]]) -> tuple[str, ...]:
    """The interfaces of unreadable members that no readable one (``links``: interface, bridge) uses."""
    good = {iface for iface, _ in links} | {bridge for _, bridge in links if bridge}
    return tuple(sorted({u.iface for u in unreadable if u.iface and u.iface not in good}))


def _member_from_json(record: Any, *, where: str) -> Registered:
    if not isinstance(record, Mapping):
        raise PolicyError(f"{where}: not a guest record")
    guest = guest_from_json(record, where=where)
    try:
        found = {name: frozenset(ipaddress.ip_address(a) for a in addrs) for name, addrs in record["resolved"].items()}
        unresolved = {str(k): str(v) for k, v in record["unresolved"].items()}
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise PolicyError(f"{where}: malformed guest record ({exc!r})") from None
    link = binding_from_json(record.get("link"), where=where)
    return Registered(guest=guest, names=found, unresolved=unresolved, record=record, link=link)


def _unreadable(record: Any, problem: str) -> Unreadable:
    fields = record if isinstance(record, Mapping) else {}
    name, iface = fields.get("name"), fields.get("iface")
    return Unreadable(
        raw=record,
        problem=problem,
        name=name if isinstance(name, str) and name.isprintable() else None,
        iface=iface if isinstance(iface, str) and IFACE_NAME.match(iface) else None,
    )


def check_gateways_owned(guest: Guest) -> str | None:
    """Refuse a gateway the host does not hold on the guest's link (the link
    is the bridge for a bridged guest): the guest could never reach it, and
    ``@gateway`` would name an address of someone else. Raises PolicyError.
    A link that does not exist yet (a TAP QEMU creates at start) cannot be
    checked: the gateways are accepted and the returned warning says so."""
    if not guest.gateways:
        return None
    from guestfence.netinfo import interface_addresses  # pyroute2: only `guest add` needs it

    link = guest.bridge or guest.iface
    held = interface_addresses(link)
    if held is None:
        return f"link {link} does not exist yet, so gateway(s) {', '.join(map(str, guest.gateways))} are not checked"
    missing = [g for g in guest.gateways if g not in held]
    if missing:
        shown = ", ".join(map(str, held)) or "none"
        raise PolicyError(
            f"guest {guest.name}: gateway {', '.join(map(str, missing))} is not an address of {link} "
            f"(its addresses: {shown}); give the host-side address of the guest's link")
    return None


def resolve_guest(guest: Guest, resolver: Resolver | None = None) -> Registered:
    """Resolve the DNS names of the guest's rules, now (the one lookup; plans are pure)."""
    return resolved_guest(guest, resolve_names(guest.policy.names(), resolver))


def resolved_guest(guest: Guest, resolution: Resolution) -> Registered:
    """``guest`` with what its rules' DNS names resolved to in ``resolution``
    (a name it does not hold counts as unresolved). Pure."""
    names = guest.policy.names()
    found = {name: resolution.addresses[name] for name in names if name in resolution.addresses}
    unresolved = {name: resolution.failures.get(name, "not resolved") for name in names if name not in found}
    return Registered(guest=guest, names=found, unresolved=unresolved)


def _next(settings: Settings) -> Settings:
    return replace(settings, generation=settings.generation + 1)


@final
class RecordedAdd(Value):
    """``guest add`` planned on the record as it is (``plan_add_recorded``):
    the plan, the new section and the change ``pending_change`` records."""

    __slots__ = ("plan", "record", "pending", "changes", "member", "count", "problems")
    plan: NftPlan
    record: dict[str, Any]
    """The new section."""
    pending: dict[str, Any]
    """The change, as ``pending_change`` records it."""
    changes: tuple[str, ...]
    member: Registered
    count: int
    """Guests registered after the change."""
    problems: tuple[str, ...]
    """The record's unreadable members, as ``Registry.problems`` says."""

    def __init__(self, *, plan: NftPlan, record: dict[str, Any], pending: dict[str, Any], changes: tuple[str, ...],
                 member: Registered, count: int, problems: tuple[str, ...]) -> None:  # fmt: skip
        init_field(self, "plan", plan)
        init_field(self, "record", record)
        init_field(self, "pending", pending)
        init_field(self, "changes", changes)
        init_field(self, "member", member)
        init_field(self, "count", count)
        init_field(self, "problems", problems)


def plan_add_recorded(data: Mapping[str, Any] | None, added: Registered, *, where: str) -> RecordedAdd:
    """Add ``added`` (or replace the guest of that name) to the recorded
    section ``data`` (as ``salvage_registry`` reads it), reading only what
    the change needs of the other members (test_firewall.py holds it to a
    reference that reads them all whole, tests/unit/guests/registries.py):
    each member's record is checked as ``guest_from_json`` would and read
    for what it owns (guest.recorded_guest); only the replaced guest, one member of each
    group that compiles to one profile (to tell whether the replaced guest's
    profile is still used) and records in an unusual form are read whole.
    Reading all 1000 of 1000 guests whole was over a quarter of ``guest add``.
    The added guest is checked against the others, and what they own against
    each other, as ``check_guests`` does; whether each other guest's rules
    can work for it was checked when it was added (and is again by ``apply``
    and ``restore``)."""
    pattern, generation, records = DEFAULT_PATTERN, 0, []
    if data is not None:
        pattern, generation, records, _ = _section(data, where=where)
    guest = added.guest
    kept: list[tuple[RecordedFields, Registered | None, Any]] = []  # (its fields, the member if read whole, its record)
    unreadable: list[Unreadable] = []
    for index, record in enumerate(records):
        fields = _recorded_member(record)
        member = None
        if fields is None:
            try:
                member = _member_from_json(record, where=f"{where}: member {index + 1}")
            except PolicyError as exc:
                unreadable.append(_unreadable(record, str(exc)))
                continue
            g = member.guest
            fields = (g.name, g.iface, g.bridge, g.mac, g.masquerade, tuple(address_key(a) for a in g.addresses), g.policy)
        kept.append((fields, member, record))
    closed = _closed(unreadable, [(fields[1], fields[2]) for fields, _, _ in kept])
    settings = Settings(pattern=pattern, generation=generation + 1, closed=closed)
    named = [(member, record) for (name, *_), member, record in kept if name == guest.name]
    old = _read_whole(*named[0], where) if named else None
    before = _read_whole(*named[-1], where) if named else None  # (as describe_changes: the last of that name)
    owners: dict[OwnerKey, str] = {}
    samples: dict[Any, Registered] = {}
    others: list[Any] = []
    masquerade = bridged = False
    for (name, iface, bridge, mac, masquerades, addresses, policy), member, record in kept:
        if name == guest.name:
            continue
        others.append(record)
        claim(owners, name, owner_keys(name, iface, addresses, bridge, mac), bridge)
        masquerade, bridged = masquerade or masquerades, bridged or bridge is not None
        # Members of one group compile to the same profile (Profiles.of: the same
        # policy, kind and resolved names); a member read whole is a group of its own.
        if member is not None:
            group: Any = id(member)
        else:
            resolved = record["resolved"]
            group = (id(policy), "bridged" if bridge is not None else "mac" if mac is not None else "routed",
                     tuple((n, tuple(found)) for n, found in resolved.items()) if resolved else ())  # fmt: skip
        if group not in samples:
            samples[group] = _read_whole(member, record, where)
    names = {id(m.guest): m.names for m in (*samples.values(), *((old,) if old else ()), added)}
    plan = compile_add(guest, settings, lambda g: names.get(id(g), {}),
                       others=Others(owners=owners, masquerade=masquerade, bridged=bridged,
                                     samples=tuple(m.guest for m in samples.values())),
                       replaces=None if old is None else old.guest)  # fmt: skip
    record = member_to_json(added)
    members = [*others, record, *(u.raw for u in unreadable)]
    changes = [f"add guest {guest.name} on {guest.iface}"] if before is None else [] if before.guest == guest else [f"change guest {guest.name}"]
    problems = Registry(unreadable=tuple(unreadable)).problems()
    return RecordedAdd(
        plan=plan,
        record={"pattern": settings.pattern, "generation": settings.generation, "members": members},
        pending={"generation": settings.generation, "put": [record], "drop": [], "drop_unreadable": []},
        changes=tuple(changes), member=added, count=len(others) + 1, problems=tuple(problems),
    )  # fmt: skip


def _recorded_member(record: Any) -> RecordedFields | None:
    """``record`` read as ``_member_from_json`` reads it, without making the
    guest (``recorded_guest``), when it can tell that it is readable; else None."""
    if type(record) is not dict:
        return None
    read = recorded_guest(record)
    resolved, unresolved = record.get("resolved"), record.get("unresolved")
    if read is None or type(resolved) is not dict or type(unresolved) is not dict:
        return None
    for found in resolved.values():
        if type(found) is not list or not all(packed_address(a) is not None for a in found):
            return None
    link = record.get("link")
    if link is not None:
        try:
            binding_from_json(link, where="")
        except PolicyError:
            return None
    return read


def _read_whole(member: Registered | None, record: Any, where: str) -> Registered:
    return member if member is not None else _member_from_json(record, where=where)


def plan_remove(registry: Registry, name: str) -> tuple[NftPlan, Registry]:
    """Remove guest ``name``; a member whose record cannot be read is dropped from the record."""
    settings = _next(registry.settings)
    bad = [u for u in registry.unreadable if u.name == name]
    if bad and registry.find(name) is None:
        rest_bad = tuple(u for u in registry.unreadable if u.name != name)
        closed = tuple(i for i in settings.closed if i not in {u.iface for u in bad})
        settings = replace(settings, closed=closed)
        plan = compile_ruleset(registry.guests(), settings, registry.names_of())
        return plan, replace(registry, settings=settings, unreadable=rest_bad)
    old = registry.find(name)
    if old is None:
        known = ", ".join(m.guest.name for m in registry.members) or "none"
        raise PolicyError(f"no guest named {name!r} is registered (registered: {known})")
    rest = tuple(m for m in registry.members if m.guest.name != name)
    plan = compile_remove(old.guest, settings, registry.names_of(), others=[m.guest for m in rest])
    return plan, replace(registry, settings=settings, members=rest)


def plan_replace(registry: Registry) -> NftPlan:
    """Make the live ruleset exactly ``registry`` (apply FILE, restore, and what status compares with)."""
    return compile_ruleset(registry.guests(), registry.settings, registry.names_of())


def apply_plan(plan: NftPlan, nft: NftHandle | None = None) -> None:
    """Run the plan as one transaction; on failure nothing changed (ApplyError,
    or HostError when the kernel refuses us the privilege)."""
    try:
        apply_nft(nft or open_nft(), list(plan.commands), step=plan.step)
    except ApplyError as exc:
        if "Operation not permitted" in exc.detail:
            raise HostError(f"{plan.step}: changing nftables needs CAP_NET_ADMIN (run as root)") from exc
        raise


def plan_json(plan: NftPlan) -> dict[str, Any]:
    """The batch exactly as libnftables receives it (what --dry-run prints)."""
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *plan.commands]}


def describe_changes(old: Registry, new: Registry, *, kept: Sequence[str] = ()) -> list[str]:
    """What going from ``old`` to ``new`` adds, changes and removes, in words. Pure."""
    # Guests are compared as values (frozen, compared by their fields): equal exactly when
    # their records are, without serialising every guest twice.
    before = {m.guest.name: m.guest for m in old.members}
    after = {m.guest.name: m.guest for m in new.members}
    lines = [f"add guest {name} on {after[name].iface}" for name in after if name not in before]
    lines += [f"change guest {name}" for name in after if name in before and before[name] != after[name]]
    lines += [f"remove guest {name}" for name in before if name not in after]
    lines += [f"keep guest {name} (not in the file; --prune removes it)" for name in kept]
    lines += [f"drop unreadable record of guest {u.name or '?'}" for u in old.unreadable if u not in new.unreadable]
    if old.settings.pattern != new.settings.pattern:
        lines.append(f"guest pattern {old.settings.pattern!r} -> {new.settings.pattern!r}")
    return lines


# The feature ``apply FILE`` / ``restore`` / ``flush`` drive (guestfence.state.Feature).

RECORD = "recorded guests"


@final
class GuestsFeature:
    key = GUESTS_KEY

    def dns_names(self, config: Any, recorded: Mapping[str, Any] | None) -> frozenset[str]:
        """The names ``plan_apply`` (``config``) or ``plan_restore`` (``config``
        None: the record's guests) needs resolved. Pure."""
        if config is not None:
            return frozenset(name for g in config.guests for name in g.policy.names())
        try:
            registry = salvage_registry(recorded, where=RECORD)
        except PolicyError:
            return frozenset()
        guests = [m.guest for m in registry.members]
        if registry.pending is not None:
            try:
                guests += [m.guest for m in salvage_registry(registry.pending, where=RECORD).members]
            except PolicyError:
                pass  # plan_restore drops an unreadable pending change
        return frozenset(name for g in guests for name in g.policy.names())

    def plan_apply(self, config: Any, recorded: Mapping[str, Any] | None, *, prune: bool = False,
                   resolved: Resolution) -> FeaturePlan:  # fmt: skip
        """The file's guests; the recorded guests it does not name stay unless ``prune``."""
        old = salvage_registry(recorded, where=RECORD)
        if old.unreadable and not prune:
            raise PolicyError("; ".join(old.problems()) + ": give --prune to replace the whole record with the file")
        named = {g.name for g in config.guests}
        kept = () if prune else tuple(m for m in old.members if m.guest.name not in named)
        members = (*kept, *(resolved_guest(g, resolved) for g in config.guests))
        settings = Settings(pattern=config.guest_pattern, generation=old.settings.generation + 1)
        new = Registry(settings=settings, members=members)
        changes = describe_changes(old, new, kept=[m.guest.name for m in kept])
        return self._feature_plan(plan_replace(new), new, recorded, changes=changes)

    def plan_restore(self, recorded: Mapping[str, Any] | None, *, resolved: Resolution) -> FeaturePlan:
        if recorded is None:
            return FeaturePlan(key=self.key, shown=None, record=None, work=None, summary="no guests recorded")
        try:
            registry = salvage_registry(recorded, where=RECORD)
        except PolicyError as exc:
            # Not understood: install the tables without guests (unregistered
            # interfaces dropped) and leave the record as it is for a human.
            plan = plan_replace(Registry())
            return FeaturePlan(key=self.key, shown=plan_json(plan), record=None, work=plan,
                               summary="guests: none restored", problems=(str(exc),))  # fmt: skip
        registry, note = _settle_pending(registry)
        # A guest an integration registered for an interface that is gone (or
        # is another one now: after a reboot, always) is not brought back.
        alive, dropped = drop_stale(registry.members, collect_link_indexes())
        note = [*note, *dropped]
        members = tuple(replace(resolved_guest(m.guest, resolved), link=m.link) for m in alive)
        refreshed = replace(registry, settings=_next(registry.settings), members=members, pending=None)
        return self._feature_plan(plan_replace(refreshed), refreshed, recorded, changes=note,
                                  problems=tuple(registry.problems()))  # fmt: skip

    def plan_flush(self, recorded: Mapping[str, Any] | None) -> FeaturePlan:
        """Remove the live tables; the record stays, so ``restore`` brings them back."""
        plan = compile_flush()
        return FeaturePlan(key=self.key, shown=plan_json(plan), record=None, work=plan, summary="guest tables removed")

    def apply(self, plan: FeaturePlan) -> None:
        if plan.work is not None:
            apply_plan(plan.work)

    def _feature_plan(self, nft_plan: NftPlan, registry: Registry, recorded: Mapping[str, Any] | None, *,
                      changes: Sequence[str] = (), problems: tuple[str, ...] = ()) -> FeaturePlan:  # fmt: skip
        record = registry.to_json()
        return FeaturePlan(
            key=self.key,
            shown=plan_json(nft_plan),
            record=record,
            intent={**(recorded or {}), "pending": record},
            work=nft_plan,
            summary=f"{len(registry.members)} guest(s)",
            changes=tuple(changes),
            problems=problems,
        )


GUESTS = GuestsFeature()


def pending_change(old: Registry, new: Registry) -> dict[str, Any]:
    """The pending record of a change from ``old`` to ``new`` that keeps the
    pattern (guest add, remove): what ``apply_pending`` turns ``old`` into ``new`` with."""
    kept = {id(m) for m in old.members}
    put = [m for m in new.members if id(m) not in kept]
    remaining = {m.guest.name for m in new.members}
    return {
        "generation": new.settings.generation,
        "put": [member_to_json(m) for m in put],
        "drop": [m.guest.name for m in old.members if m.guest.name not in remaining],
        "drop_unreadable": [u.name for u in old.unreadable if u not in new.unreadable],
    }


def apply_pending(committed: Registry, pending: Mapping[str, Any], *, where: str) -> Registry:
    """The registry a pending record describes: a whole section, or a change
    (``pending_change``) to ``committed``. Raises PolicyError when it cannot be read."""
    if "members" in pending:
        return salvage_registry(pending, where=where)
    try:
        generation, put, drop, drop_bad = pending["generation"], pending["put"], pending["drop"], pending["drop_unreadable"]
        if not isinstance(generation, int) or not all(isinstance(x, list) for x in (put, drop, drop_bad)):
            raise TypeError("generation must be a number, put, drop and drop_unreadable lists")
    except (KeyError, TypeError) as exc:
        raise PolicyError(f"{where}: malformed pending change ({exc})") from None
    added = [_member_from_json(record, where=f"{where}: put {i + 1}") for i, record in enumerate(put)]
    gone = set(drop) | {m.guest.name for m in added}
    members = (*(m for m in committed.members if m.guest.name not in gone), *added)
    unreadable = tuple(u for u in committed.unreadable if u.name not in set(drop_bad))
    good = {m.guest.iface for m in members} | {m.guest.bridge for m in members if m.guest.bridge}
    closed = tuple(sorted({u.iface for u in unreadable if u.iface and u.iface not in good}))
    settings = replace(committed.settings, generation=generation, closed=closed)
    return Registry(settings=settings, members=members, unreadable=unreadable)


def _settle_pending(registry: Registry) -> tuple[Registry, list[str]]:
    """The record to restore when a change was interrupted: the pending one
    if the tables hold its generation (it was applied), else the committed one."""
    if registry.pending is None:
        return registry, []
    try:
        pending = apply_pending(registry, registry.pending, where=f"{RECORD} (pending)")
    except PolicyError:
        return replace(registry, pending=None), ["dropped an unreadable pending change"]
    from guestfence.guests.drift import live_listing

    live = generation_of(live_listing())
    if live == pending.settings.generation:
        return replace(pending, pending=None), [f"kept the interrupted change (generation {live}), which the tables hold"]
    return replace(registry, pending=None), [f"dropped an interrupted change (generation {pending.settings.generation}) the tables never held"]


def generation_of(items: Sequence[Item]) -> int | None:
    """The generation our inet table holds, or None when there is none."""
    for item in items:
        body = item.get("set")
        if isinstance(body, dict) and body.get("family") == n.INET and body.get("name") == n.GENERATION:
            elements = body.get("elem", [])
            if len(elements) == 1:
                value = elements[0]
                return int(value, 0) if isinstance(value, str) else int(value)
    return None


# Status: the live tables compared with what the record compiles to.


@final
class GuestStatus(Value):
    """One guest's line of ``status``: counters (None when the counter is not
    there) and every difference that concerns its objects."""

    __slots__ = ("name", "iface", "rules", "accepted_packets", "accepted_bytes", "dropped_packets", "dropped_bytes",
                 "drift")
    name: str
    iface: str
    rules: int
    accepted_packets: int | None
    accepted_bytes: int | None
    dropped_packets: int | None
    dropped_bytes: int | None
    drift: tuple[str, ...]

    def __init__(self, *, name: str, iface: str, rules: int, accepted_packets: int | None, accepted_bytes: int | None,
                 dropped_packets: int | None, dropped_bytes: int | None, drift: tuple[str, ...]) -> None:
        init_field(self, "name", name)
        init_field(self, "iface", iface)
        init_field(self, "rules", rules)
        init_field(self, "accepted_packets", accepted_packets)
        init_field(self, "accepted_bytes", accepted_bytes)
        init_field(self, "dropped_packets", dropped_packets)
        init_field(self, "dropped_bytes", dropped_bytes)
        init_field(self, "drift", drift)


@final
class StatusReport(Value):
    """What ``status`` shows, as plain data for any renderer (text, JSON, metrics)."""

    __slots__ = ("guests", "drift")
    guests: tuple[GuestStatus, ...]
    drift: tuple[str, ...]
    """Differences no single guest owns (base chains, shared sets, the record itself)."""

    def __init__(self, *, guests: tuple[GuestStatus, ...], drift: tuple[str, ...]) -> None:
        init_field(self, "guests", guests)
        init_field(self, "drift", drift)

    @property
    def drifted(self) -> bool:
        return bool(self.drift) or any(g.drift for g in self.guests)

    def to_json(self) -> dict[str, Any]:
        guests = [{"name": g.name, "iface": g.iface, "rules": g.rules,
                   "accepted": g.accepted_packets, "accepted_bytes": g.accepted_bytes,
                   "dropped": g.dropped_packets, "dropped_bytes": g.dropped_bytes, "drift": list(g.drift)}
                  for g in self.guests]  # fmt: skip
        return {"drifted": self.drifted, "drift": list(self.drift), "guests": guests}


def collect_status(section: Mapping[str, Any] | None, *, where: str, nft: NftHandle | None = None) -> StatusReport:
    """Read the live tables and compare them with the recorded ``section``."""
    from guestfence.guests.drift import expected_listing, live_listing

    try:
        registry = salvage_registry(section, where=where)
    except PolicyError as exc:
        live_listing(nft)  # still refused without the privilege to read the tables
        return StatusReport(guests=(), drift=(f"{exc}; the tables cannot be checked against it",))
    if section is None:
        return status_from_listings(registry, [], live_listing(nft))
    expected, live = expected_listing(plan_replace(registry).commands, meanwhile=lambda: live_listing(nft))
    return status_from_listings(registry, expected, live)


def status_from_listings(registry: Registry, expected: Sequence[Item], live: Sequence[Item]) -> StatusReport:
    """The status of ``registry`` given what it compiles to and what is live. Pure."""
    from guestfence.guests.drift import compare_listings, element_counts

    # Everything per guest is gathered in one pass over each list and then
    # looked up by name: a scan per guest made status quadratic (5,000 guests: minutes).
    profiles = Profiles(registry.names_of())
    profile_of = {m.guest.name: profiles.of(m.guest) for m in registry.members}
    users: dict[str, list[str]] = {}
    for name, profile in profile_of.items():
        users.setdefault(profile.name, []).append(name)
    owner = _element_owners(registry)
    drifts = [d for d in compare_listings(expected, live, element_owner=owner)
              if not d.text.startswith(f"set {n.INET} {n.GENERATION}:")]  # fmt: skip
    # A difference in a profile's chains is a difference of every guest using it.
    drifts = [shared for d in drifts for shared in _shared_drift(d, users)]
    registered = {m.guest.name for m in registry.members}
    general = [d.text for d in drifts if d.guest not in registered]
    general += _generation_drift(registry, expected, live)
    general += registry.problems()
    # Each guest's counters are its elements of the counting sets (dropped:
    # one per table it has objects in, summed).
    counted: dict[tuple[str, str], list[int]] = {}
    for what, key, packets, octets in element_counts(live, n.COUNTING):
        name = owner(key)
        if name is not None:
            total = counted.setdefault((name, what), [0, 0])
            total[0] += packets
            total[1] += octets
    rules_in: dict[str, int] = {}
    for item in expected:
        rule = item.get("rule")
        if isinstance(rule, dict):
            chain = str(rule.get("chain", ""))
            rules_in[chain] = rules_in.get(chain, 0) + 1
    rules_of: dict[str, int] = {}
    for chain, count in rules_in.items():
        if (chain_owner := n.guest_of(chain)) is not None:
            rules_of[chain_owner] = rules_of.get(chain_owner, 0) + count
    drift_of: dict[str | None, list[str]] = {}
    for drift in drifts:
        drift_of.setdefault(drift.guest, []).append(drift.text)
    statuses = []
    for member in registry.members:
        name = member.guest.name
        accepted, dropped = counted.get((name, "accepted")), counted.get((name, "dropped"))
        statuses.append(GuestStatus(
            name=name, iface=member.guest.iface,
            rules=rules_of.get(name, 0) + sum(rules_in.get(chain, 0) for chain, _ in profile_of[name].chains),
            accepted_packets=None if accepted is None else accepted[0],
            accepted_bytes=None if accepted is None else accepted[1],
            dropped_packets=None if dropped is None else dropped[0],
            dropped_bytes=None if dropped is None else dropped[1],
            drift=tuple(drift_of.get(name, ())),
        ))  # fmt: skip
    return StatusReport(guests=tuple(statuses), drift=tuple(general))


_PROFILE_NAME = re.compile(rf"\b{n.PROFILE}\.[0-9a-f]+")


def _shared_drift(drift: Drift, users: Mapping[str, list[str]]) -> list[Drift]:
    """``drift`` as the drift of each guest using the profile it concerns, if any."""
    found = _PROFILE_NAME.search(drift.text) if drift.guest is None else None
    if found is None:
        return [drift]
    return [replace(drift, guest=name) for name in users.get(found.group(0), [])] or [drift]


def _element_owners(registry: Registry) -> Callable[[Any], str | None]:
    """The guest a listed set or map element belongs to: by its key (interface,
    bridge . MAC, address) or by the per-guest object it maps to."""
    by_key: dict[Any, str] = {}
    for member in registry.members:
        guest = member.guest
        by_key[guest.iface] = guest.name
        by_key.update({str(a.ip): guest.name for a in guest.addresses})
        if guest.bridge is not None:
            by_key[(guest.bridge, guest.mac)] = guest.name

    def owner(element: Any) -> str | None:
        if isinstance(element, list) and len(element) == 2:
            value = element[1]
            target = value.get("goto", value.get("jump")) if isinstance(value, dict) else None
            named = n.guest_of(value) if isinstance(value, str) else n.guest_of(str(target.get("target", ""))) if isinstance(target, dict) else None
            if named is not None:
                return named
            element = element[0]
        if isinstance(element, dict) and isinstance(element.get("elem"), dict):
            element = element["elem"].get("val")
        if isinstance(element, dict) and isinstance(element.get("concat"), list):
            parts = element["concat"]
            if len(parts) >= 2 and isinstance(parts[0], str) and isinstance(parts[1], str) and (parts[0], parts[1]) in by_key:
                return by_key[(parts[0], parts[1])]
            element = parts[0] if parts else None
        return by_key.get(element) if isinstance(element, str) else None

    return owner


def _generation_drift(registry: Registry, expected: Sequence[Item], live: Sequence[Item]) -> list[str]:
    want, have = generation_of(expected), generation_of(live)
    pending = registry.pending.get("generation") if registry.pending is not None else None
    lines = []
    if have is not None and want is not None and have != want:
        if have == pending:
            lines.append(f"the tables hold change {have}, which was applied but not recorded (interrupted); "
                         "`guestfence restore` records it")  # fmt: skip
        else:
            lines.append(f"the tables hold change {have}, the record says {want}: "
                         "something changed them outside this record; `guestfence restore` reinstalls the record")  # fmt: skip
    elif pending is not None and have != pending:
        lines.append(f"an interrupted change ({pending}) was recorded but never applied; `guestfence restore` drops it")
    return lines
