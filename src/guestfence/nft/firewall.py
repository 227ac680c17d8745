"""The guest firewall at work: resolve names, compile, apply one transaction,
record; and read the live ruleset back for ``status``.

``plan_*`` read the world (DNS) but change nothing and return the
transaction plus the record to keep; ``apply_plan`` is the only function
here that changes the ruleset, through guestfence.nft.apply, and
``collect_status`` only lists it. What the rules are is compile.py's job.

The record, under the state file's ``"guests"`` key::

    {"pattern": "vmtap*",
     "members": [{...guest_to_json..., "resolved": {"api.example.com": ["203.0.113.7"]},
                  "unresolved": {"gone.example": "no addresses"}}]}
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, final

from guestfence.errors import ApplyError, HostError, PolicyError
from guestfence.nft import names as n
from guestfence.nft.apply import NftHandle, apply_nft, list_ruleset, open_nft
from guestfence.nft.compile import (
    NftPlan,
    Settings,
    compile_add,
    compile_flush,
    compile_remove,
    compile_ruleset,
    expected_rule_counts,
)
from guestfence.nft.guest import DEFAULT_PATTERN, Guest, guest_from_json, guest_to_json, parse_pattern
from guestfence.policy.model import Address
from guestfence.resolve import Resolver, resolve_names
from guestfence.state import FeaturePlan

GUESTS_KEY = "guests"


@final
@dataclass(frozen=True, kw_only=True)
class Registered:
    """A guest with the addresses its rules' DNS names resolved to when applied."""

    guest: Guest
    names: Mapping[str, frozenset[Address]] = field(default_factory=dict, hash=False)
    unresolved: Mapping[str, str] = field(default_factory=dict, hash=False)


@final
@dataclass(frozen=True, kw_only=True)
class Registry:
    """Every registered guest and the table-wide settings: the recorded section."""

    settings: Settings = Settings()
    members: tuple[Registered, ...] = ()

    def find(self, name: str) -> Registered | None:
        return next((m for m in self.members if m.guest.name == name), None)

    def guests(self) -> list[Guest]:
        return [m.guest for m in self.members]

    def all_names(self) -> dict[str, frozenset[Address]]:
        return {name: found for m in self.members for name, found in m.names.items()}

    def to_json(self) -> dict[str, Any]:
        return {"pattern": self.settings.pattern, "members": [member_to_json(m) for m in self.members]}


def member_to_json(member: Registered) -> dict[str, Any]:
    record = guest_to_json(member.guest)
    record["resolved"] = {name: sorted(str(a) for a in found) for name, found in sorted(member.names.items())}
    record["unresolved"] = dict(sorted(member.unresolved.items()))
    return record


def registry_from_json(data: Mapping[str, Any] | None, *, where: str) -> Registry:
    """The recorded section back as values. Raises PolicyError naming ``where``."""
    if data is None:
        return Registry()
    try:
        pattern = parse_pattern(data.get("pattern", DEFAULT_PATTERN), where=f"{where}: ")
        members = []
        for record in data["members"]:
            guest = guest_from_json(record, where=where)
            found = {name: frozenset(ipaddress.ip_address(a) for a in addrs) for name, addrs in record["resolved"].items()}
            members.append(Registered(guest=guest, names=found, unresolved=dict(record["unresolved"])))
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise PolicyError(f"{where}: malformed guests record ({exc!r})") from None
    return Registry(settings=Settings(pattern=pattern), members=tuple(members))


def check_gateways_owned(guest: Guest) -> str | None:
    """Refuse a gateway the host does not hold on the guest's link (the link
    is the bridge for a bridged guest): the guest could never reach it, and
    ``@gateway`` would name an address of someone else. Raises PolicyError.
    A link that does not exist yet (a TAP QEMU creates at start) cannot be
    checked: the gateways are accepted and the returned warning says so."""
    if not guest.gateways:
        return None
    from guestfence.netinfo import link_addresses  # pyroute2 costs ~0.2 s to import; only `guest add` needs it

    link = guest.bridge or guest.iface
    held = link_addresses(link)
    if held is None:
        return f"link {link} does not exist yet, so gateway(s) {', '.join(map(str, guest.gateways))} are not checked"
    missing = [g for g in guest.gateways if g not in held]
    if missing:
        shown = ", ".join(map(str, held)) or "none"
        raise PolicyError(
            f"guest {guest.name}: gateway {', '.join(map(str, missing))} is not an address of {link} "
            f"(its addresses: {shown}); give the host-side address of the guest's link")
    return None


def resolve_guest(guest: Guest, resolver: Resolver = socket.getaddrinfo) -> Registered:
    """Resolve the DNS names of the guest's rules, now."""
    resolution = resolve_names(guest.policy.names(), resolver)
    return Registered(guest=guest, names=dict(resolution.addresses), unresolved=dict(resolution.failures))


def plan_add(registry: Registry, guest: Guest, resolver: Resolver = socket.getaddrinfo) -> tuple[NftPlan, Registry]:
    """Add ``guest``, or replace the guest of that name."""
    old = registry.find(guest.name)
    others = [m for m in registry.members if m.guest.name != guest.name]
    added = resolve_guest(guest, resolver)
    plan = compile_add(
        guest,
        registry.settings,
        added.names,
        others=[m.guest for m in others],
        replaces=None if old is None else old.guest,
    )
    return plan, Registry(settings=registry.settings, members=(*others, added))


def plan_remove(registry: Registry, name: str) -> tuple[NftPlan, Registry]:
    old = registry.find(name)
    if old is None:
        known = ", ".join(m.guest.name for m in registry.members) or "none"
        raise PolicyError(f"no guest named {name!r} is registered (registered: {known})")
    rest = tuple(m for m in registry.members if m.guest.name != name)
    return compile_remove(old.guest, registry.settings), Registry(settings=registry.settings, members=rest)


def plan_replace(settings: Settings, guests: Sequence[Guest], resolver: Resolver = socket.getaddrinfo) -> tuple[NftPlan, Registry]:
    """Make the live ruleset exactly ``guests`` (apply FILE, restore)."""
    members = tuple(resolve_guest(g, resolver) for g in guests)
    registry = Registry(settings=settings, members=members)
    return compile_ruleset(registry.guests(), settings, registry.all_names()), registry


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


# The feature ``apply FILE`` / ``restore`` / ``flush`` drive (guestfence.state.Feature).


@final
class GuestsFeature:
    key = GUESTS_KEY

    def plan_apply(self, config: Any, recorded: Mapping[str, Any] | None) -> FeaturePlan:
        nft_plan, registry = plan_replace(Settings(pattern=config.guest_pattern), config.guests)
        return self._feature_plan(nft_plan, registry.to_json())

    def plan_restore(self, recorded: Mapping[str, Any] | None) -> FeaturePlan:
        if recorded is None:
            return FeaturePlan(key=self.key, shown=None, record=None, work=None, summary="no guests recorded")
        registry = registry_from_json(recorded, where="recorded guests")
        nft_plan, refreshed = plan_replace(registry.settings, registry.guests())
        return self._feature_plan(nft_plan, refreshed.to_json())

    def plan_flush(self, recorded: Mapping[str, Any] | None) -> FeaturePlan:
        """Remove the live tables; the record stays, so ``restore`` brings them back."""
        plan = self._feature_plan(compile_flush(), recorded)
        return FeaturePlan(key=self.key, shown=plan.shown, record=recorded, work=plan.work, summary="guest tables removed")

    def apply(self, plan: FeaturePlan) -> None:
        if plan.work is not None:
            apply_plan(plan.work)

    def _feature_plan(self, nft_plan: NftPlan, record: Any) -> FeaturePlan:
        count = len(record.get("members", [])) if record else 0
        return FeaturePlan(key=self.key, shown=plan_json(nft_plan), record=record, work=nft_plan, summary=f"{count} guest(s)")


GUESTS = GuestsFeature()


# Reading the live ruleset back.


@final
@dataclass(frozen=True, kw_only=True)
class GuestStatus:
    name: str
    iface: str
    rules: int
    accepted: int | None
    dropped: int | None
    drift: tuple[str, ...]


@final
@dataclass(frozen=True, kw_only=True)
class Live:
    """What our tables hold now: rules per chain, counters, map entries."""

    tables: frozenset[str]
    rules: Mapping[tuple[str, str], int]
    counters: Mapping[tuple[str, str], int]
    entries: Mapping[tuple[str, str], Mapping[str, str]]


def collect_live(nft: NftHandle | None = None) -> Live:
    handle = nft or open_nft()
    tables, rules, counters, entries = set(), {}, {}, {}
    for family in n.FAMILIES:
        for item in list_ruleset(handle, {"table": {"family": family, "name": n.TABLE}}):
            kind, body = next(iter(item.items()))
            if kind == "table":
                tables.add(family)
            elif kind == "chain":
                rules.setdefault((family, body["name"]), 0)
            elif kind == "rule":
                rules[(family, body["chain"])] = rules.get((family, body["chain"]), 0) + 1
            elif kind == "counter":
                counters[(family, body["name"])] = int(body.get("packets", 0))
            elif kind == "map":
                entries[(family, body["name"])] = {_key_text(k): v.get("goto", {}).get("target", "") for k, v in body.get("elem", [])}
    return Live(tables=frozenset(tables), rules=rules, counters=counters, entries=entries)


def _key_text(key: Any) -> str:
    if isinstance(key, dict) and "elem" in key:
        return _key_text(key["elem"]["val"])
    if isinstance(key, dict) and "concat" in key:
        return " . ".join(str(part) for part in key["concat"])
    return str(key)


def compare_status(registry: Registry, live: Live, *, recorded: bool = True) -> tuple[list[GuestStatus], list[str]]:
    """Per guest: its rules, counters and drift; plus drift no guest owns
    (missing tables count only when something was ``recorded``). Pure."""
    statuses = []
    for member in registry.members:
        guest = member.guest
        drift = []
        expected = expected_rule_counts(guest, member.names)
        for (family, chain), count in expected.items():
            found = live.rules.get((family, chain))
            if found is None:
                drift.append(f"chain {family} {chain} is missing")
            elif found != count:
                drift.append(f"chain {family} {chain} has {found} rules, recorded {count}")
        for family, map_name, key in _dispatch_keys(guest):
            target = live.entries.get((family, map_name), {}).get(key)
            if target != n.guest_chain(guest.name):
                drift.append(f"{family} map {map_name} does not send {key} to the guest")
        statuses.append(
            GuestStatus(
                name=guest.name,
                iface=guest.iface,
                rules=sum(expected.values()),
                accepted=live.counters.get((n.INET, n.guest_counter(guest.name, "accepted"))),
                dropped=_sum_dropped(guest.name, live),
                drift=tuple(drift),
            )
        )
    general = [f"table {family} {n.TABLE} is missing" for family in n.FAMILIES if recorded and family not in live.tables]
    registered = {m.guest.name for m in registry.members}
    strays = sorted({g for (_, chain) in live.rules for g in [n.guest_of(chain)] if g and g not in registered})
    general += [f"guest {g} is in the ruleset but not recorded" for g in strays]
    return statuses, general


def _dispatch_keys(guest: Guest) -> list[tuple[str, str, str]]:
    if guest.bridge is None:
        return [(n.INET, n.GUESTS_MAP, guest.iface), (n.ARP, n.GUESTS_MAP, guest.iface)]
    return [(n.INET, n.BRIDGED_MAP, f"{guest.bridge} . {guest.mac}"), (n.BRIDGE, n.GUESTS_MAP, guest.iface)]


def _sum_dropped(name: str, live: Live) -> int | None:
    found = [v for (_, counter), v in live.counters.items() if counter == n.guest_counter(name, "dropped")]
    return sum(found) if found else None

