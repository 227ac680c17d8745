"""The state-changing commands of the VM-guest firewall and of every feature
(``guest add|remove``, ``lockdown add|remove``, ``apply FILE``, ``restore``, ``flush``), start to
finish: read the record under the state lock, plan, record the intent,
apply one transaction, record the result. ``status`` reads without locking
anything out. The CLI only parses and prints.

Guarantees:
- Bad input changes nothing: every feature is planned before any applies.
- ``restore`` and ``flush`` act on the record, not on new input: a feature
  or a guest whose record cannot be read is reported (``Outcome.problems``,
  exit 2) while everything else is done, so one bad record never leaves
  every guest unfiltered after a reboot.
- A crash between a transaction and its record is never silent (see
  guestfence.state on intents).
- ``guest add|remove`` keep recorded members they cannot read as they are
  (and their interfaces closed), with a warning.
- ``guest add`` refuses, without ``force``, interfaces the host needs
  itself (``interface_hazards``).
- ``reap_stale`` removes the guests integrations registered whose interface
  is gone or is another one now (guestfence.guests.binding), deciding on the
  links it reads while it holds the state lock, so a registration made
  meanwhile for a new interface of that name is never taken for stale.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, final

from guestfence.errors import GuestfenceError, PolicyError
from guestfence.guests.binding import Binding, collect_link_indexes, stale_records, with_stale_drift
from guestfence.guests.firewall import (
    GUESTS,
    check_gateways_owned,
    GUESTS_KEY,
    Registered,
    Registry,
    StatusReport,
    collect_status,
    describe_changes,
    pending_change,
    plan_add_recorded,
    plan_json,
    plan_remove,
    resolve_guest,
    salvage_registry,
)
from guestfence.guests.guest import Guest
from guestfence.resolve import Resolution, resolve_names
from guestfence.state import Feature, FeaturePlan, StateStore
from guestfence.value import Value, init_field, replace

if TYPE_CHECKING:  # lockdown is imported only by the commands that use it
    from guestfence.lockdown.pattern import InterfacePattern

def features() -> tuple[Feature, ...]:
    """What ``apply FILE``, ``restore`` and ``flush`` take care of, in this order.
    Each owns one key of the state file; a new feature is added here only.
    (Imported when asked: ``guest add`` needs none but the guests'.)"""
    from guestfence.lockdown.feature import LOCKDOWN
    from guestfence.rootless.feature import ROOTLESS

    return (GUESTS, LOCKDOWN, ROOTLESS)

_LINK_LOCAL = (ipaddress.ip_network("fe80::/10"),)


@final
class Outcome(Value):
    """What a command did (or, dry, would do): the plans, and what it could not do."""

    __slots__ = ("plans", "problems", "member", "warnings", "shown")
    HASHED = ("plans", "problems", "member", "warnings")
    plans: tuple[FeaturePlan, ...]
    problems: tuple[str, ...]
    member: Registered | None
    warnings: tuple[str, ...]
    shown: Any

    def __init__(self, *, plans: tuple[FeaturePlan, ...], problems: tuple[str, ...] = (), member: Registered | None = None,
                 warnings: tuple[str, ...] = (), shown: Any = None) -> None:
        init_field(self, "plans", plans)
        init_field(self, "problems", problems)
        init_field(self, "member", member)
        init_field(self, "warnings", warnings)
        init_field(self, "shown", shown)


def commit(store: StateStore, feature: Feature, plan: FeaturePlan, recorded: Any) -> None:
    """Record the intent, apply, record the result. When the kernel refused
    the transaction (nothing changed) the intent is taken back."""
    if plan.intent is not None:
        store.write_section(plan.key, plan.intent)
    try:
        feature.apply(plan)
    except GuestfenceError:
        if plan.intent is not None:
            store.write_section(plan.key, recorded)
        raise
    if plan.record is not None:
        store.write_section(plan.key, plan.record)


def run_features(directory: str, make_plan: Callable[[Feature, Any, Resolution], FeaturePlan], *, dry_run: bool,
                 config: Any = None, salvage: bool = False, resolve: bool = True) -> Outcome:  # fmt: skip
    """Plan every feature, then apply and record each. The DNS names a
    feature's plan needs (``Feature.dns_names`` of ``config``, or of the
    record) are looked up first, once, and handed to ``make_plan`` (unless
    not ``resolve``: ``flush`` needs none). With ``salvage`` (restore,
    flush), a feature that cannot be planned is reported and the others
    still applied; otherwise any error stops before anything changed."""
    problems: list[str] = []
    with StateStore(directory, read_only=dry_run) as store:
        planned: list[tuple[Feature, FeaturePlan, Any]] = []
        for feature in features():
            recorded = store.section(feature.key)
            try:
                resolved = resolve_names(feature.dns_names(config, recorded) if resolve else ())
                planned.append((feature, make_plan(feature, recorded, resolved), recorded))
            except GuestfenceError as exc:
                if not salvage:
                    raise
                problems.append(f"{feature.key}: {exc}")
        if not dry_run:
            for feature, plan, recorded in planned:
                try:
                    commit(store, feature, plan, recorded)
                except GuestfenceError as exc:
                    if not salvage:
                        raise
                    problems.append(f"{feature.key}: {exc}")
    plans = tuple(plan for _, plan, _ in planned)
    return Outcome(plans=plans, problems=(*problems, *(p for plan in plans for p in plan.problems)))


def apply_file(directory: str, config: Any, *, prune: bool, dry_run: bool) -> Outcome:
    """``apply FILE``: every feature made as the file says; what it does not
    name stays unless ``prune``."""
    outcome = run_features(directory, lambda feature, recorded, resolved: feature.plan_apply(
        config, recorded, prune=prune, resolved=resolved), dry_run=dry_run, config=config)  # fmt: skip
    return replace(outcome, warnings=tuple(w for guest in config.guests for w in unix_rules_ignored(guest)))


def restore(directory: str, *, dry_run: bool) -> Outcome:
    """Rebuild what is recorded (after a reboot), settling interrupted changes."""
    return run_features(directory, lambda feature, recorded, resolved: feature.plan_restore(recorded, resolved=resolved),
                        dry_run=dry_run, salvage=True)  # fmt: skip


def flush(directory: str, *, dry_run: bool) -> Outcome:
    """Remove what guestfence installed; the record stays for ``restore``."""
    return run_features(directory, lambda feature, recorded, resolved: feature.plan_flush(recorded), dry_run=dry_run,
                        salvage=True, resolve=False)  # fmt: skip


def unix_rules_ignored(guest: Guest) -> list[str]:
    """A warning naming the ``unix://`` rules of a guest's policy: a VM or
    container has unix sockets of its own only, which no host rule reaches."""
    policy = guest.policy
    named = [f"allow {r}" for r in policy.allow_unix] + [f"deny {r}" for r in policy.deny_unix]
    if not named:
        return []
    return [f"guest {guest.name}: unix:// rules do not apply to a VM or container guest (its unix sockets are its "
            f"own) and are ignored: {', '.join(named)}"]  # fmt: skip


def add_guest(directory: str, guest: Guest, *, dry_run: bool, force: bool, link: Binding | None = None) -> Outcome:
    """Register ``guest`` (or replace the guest of that name); ``link``: the
    interface an integration registers it for (guestfence.guests.binding)."""
    warnings = [*_checked_link(guest, force=force), *unix_rules_ignored(guest)]
    with StateStore(directory, read_only=dry_run) as store:
        recorded = store.section(GUESTS_KEY)
        # Not salvage_registry + plan_add: that reads every other guest whole.
        added = plan_add_recorded(recorded, replace(resolve_guest(guest), link=link), where=str(store.path))
        committed = recorded if recorded is not None else Registry().to_json()
        plan = FeaturePlan(key=GUESTS_KEY, shown=plan_json(added.plan), record=added.record,
                           intent={**committed, "pending": added.pending}, work=added.plan,
                           summary=f"{added.count} guest(s)", changes=added.changes)  # fmt: skip
        if not dry_run:
            commit(store, GUESTS, plan, recorded)
    return Outcome(plans=(plan,), member=added.member, warnings=(*warnings, *added.problems))


def _checked_link(guest: Guest, *, force: bool) -> list[str]:
    """Both checks of the guest's link, the interface's (``interface_hazards``)
    and the gateways' (``check_gateways_owned``); when either refuses, one
    PolicyError says everything that is wrong. Returns the warnings."""
    warnings: list[str] = []
    refusals: list[str] = []
    for check in (lambda: interface_hazards(guest, force=force), lambda: [check_gateways_owned(guest)]):
        try:
            warnings += [w for w in check() if w]
        except PolicyError as exc:
            refusals.append(str(exc))
    if refusals:
        raise PolicyError("; ".join(refusals))
    return warnings


def remove_guest(directory: str, name: str, *, dry_run: bool) -> Outcome:
    with StateStore(directory, read_only=dry_run) as store:
        recorded = store.section(GUESTS_KEY)
        old = salvage_registry(recorded, where=str(store.path))
        nft_plan, registry = plan_remove(old, name)
        plan = _guests_plan(nft_plan, old, registry, recorded)
        if not dry_run:
            commit(store, GUESTS, plan, recorded)
    return Outcome(plans=(plan,), warnings=tuple(registry.problems()))


def reap_stale(directory: str, *, iface: str | None = None) -> list[str]:
    """Remove every guest an integration registered whose interface is gone
    or is another one now (only those on ``iface`` when given), one
    transaction each; what it removed, in words (maybe nothing)."""
    done: list[str] = []
    with StateStore(directory) as store:
        recorded = store.section(GUESTS_KEY)
        members = recorded.get("members") if isinstance(recorded, Mapping) else None
        doomed = stale_records(members, collect_link_indexes(), iface=iface) if members else []
        if not doomed:
            return done
        registry = salvage_registry(recorded, where=str(store.path))
        for name, why in doomed:
            nft_plan, after = plan_remove(registry, name)
            plan = _guests_plan(nft_plan, registry, after, recorded)
            commit(store, GUESTS, plan, recorded)
            registry, recorded = after, plan.record
            done.append(f"guest {name} removed: {why}")
    return done


def lockdown_add(directory: str, added: tuple[InterfacePattern, ...], *, dry_run: bool, force: bool) -> Outcome:
    """Lock down ``added`` as well; refuses (PlanError) patterns covering the
    host's own interfaces or a registered guest's, unless ``force``."""
    from guestfence.lockdown.feature import LOCKDOWN, LOCKDOWN_KEY

    with StateStore(directory, read_only=dry_run) as store:
        recorded = store.section(LOCKDOWN_KEY)
        plan = LOCKDOWN.plan_add(recorded, added, recorded_guests=store.section(GUESTS_KEY), force=force)
        if not dry_run:
            commit(store, LOCKDOWN, plan, recorded)
    return Outcome(plans=(plan,))


def lockdown_remove(directory: str, removed: tuple[InterfacePattern, ...], *, dry_run: bool) -> Outcome:
    """Stop locking down ``removed``, writing back what adding them changed."""
    from guestfence.lockdown.feature import LOCKDOWN, LOCKDOWN_KEY

    with StateStore(directory, read_only=dry_run) as store:
        recorded = store.section(LOCKDOWN_KEY)
        plan = LOCKDOWN.plan_remove(recorded, removed)
        if not dry_run:
            commit(store, LOCKDOWN, plan, recorded)
    return Outcome(plans=(plan,))


def read_registry(directory: str) -> Registry:
    """The record as far as it can be read (``Registry.problems`` says what cannot)."""
    with StateStore(directory, read_only=True) as store:
        return salvage_registry(store.section(GUESTS_KEY), where=str(store.path))


def read_status(directory: str, *, with_lockdown: bool = False) -> StatusReport:
    """The guests' status; ``with_lockdown`` adds an interrupted lockdown
    change to its drift (``guestfence status``; an integration's check is
    about its guest alone)."""
    with StateStore(directory, read_only=True) as store:
        section = store.section(GUESTS_KEY)
        report = with_stale_drift(collect_status(section, where=str(store.path)), section, collect_link_indexes())
        if not with_lockdown:
            return report
        from guestfence.lockdown.feature import LOCKDOWN_KEY, interrupted
        from guestfence.nftables.apply import open_nft

        lockdown = store.section(LOCKDOWN_KEY)
    if lockdown is None:
        return report
    return replace(report, drift=(*report.drift, *(f"lockdown: {line}" for line in interrupted(lockdown, open_nft()))))


def _guests_plan(nft_plan: Any, old: Registry, new: Registry, recorded: Mapping[str, Any] | None) -> FeaturePlan:
    """The intent records only the change (guestfence.guests.firewall: pending), not every guest again."""
    record = new.to_json()
    committed = recorded if recorded is not None else old.to_json()  # (the first guest: an empty section, readable)
    intent = {**committed, "pending": pending_change(old, new)}
    return FeaturePlan(key=GUESTS_KEY, shown=plan_json(nft_plan), record=record, intent=intent,
                       work=nft_plan, summary=f"{len(new.members)} guest(s)", changes=tuple(describe_changes(old, new)))  # fmt: skip


def interface_hazards(guest: Guest, *, force: bool) -> list[str]:
    """Refuse (PolicyError) an interface the host needs for itself, unless
    ``force``: loopback, a default-route interface, one carrying host
    addresses other than the guest link's own (its gateways). Returns
    warnings: the interface does not exist yet, or what ``force`` overrode."""
    from guestfence.lockdown.links import collect_protected
    from guestfence.netinfo import interface_addresses

    hazards = []
    protected = collect_protected()
    if guest.iface in protected:
        hazards.append(f"{guest.iface} is the host's {protected[guest.iface]} interface")
    addresses = interface_addresses(guest.iface)
    if addresses is None:
        return [f"interface {guest.iface} does not exist yet; its rules match it by name once it appears"]
    foreign = [a for a in addresses if a not in guest.gateways and not any(a in net for net in _LINK_LOCAL)]
    if foreign:
        shown = ", ".join(str(a) for a in foreign)
        hazards.append(f"{guest.iface} carries host addresses that are not the guest's gateway ({shown})")
    if hazards and not force:
        raise PolicyError(f"guest {guest.name}: refusing --iface {guest.iface}: " + "; ".join(hazards)
                          + " — registering it would cut the host off that link (give --force if that is meant)")  # fmt: skip
    return [f"--force: {h}" for h in hazards]
