"""Register and unregister guests in the recorded state, for the
integrations: the same transaction and record as ``guest add``/``remove``,
under the state directory's lock.

``register`` refuses to replace a guest another owner made: a guest of the
same name must carry the same ``comment`` (the integrations write their
owner there). ``unregister_where`` removes every guest a predicate selects
one transaction each (recorded after each) and does nothing, successfully,
when none is registered.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from guestfence.errors import PolicyError
from guestfence.nft.firewall import (
    GUESTS_KEY,
    Registered,
    Registry,
    apply_plan,
    collect_live,
    compare_status,
    plan_add,
    plan_remove,
    registry_from_json,
)
from guestfence.nft.guest import Guest
from guestfence.state import StateStore


def _registry(store: StateStore) -> Registry:
    return registry_from_json(store.section(GUESTS_KEY), where=str(store.path))


def register(guest: Guest, directory: Path) -> Registered:
    """Add ``guest`` (or replace the one of that name it owns) in one transaction."""
    with StateStore(directory) as store:
        registry = _registry(store)
        old = registry.find(guest.name)
        if old is not None and old.guest.comment != guest.comment:
            raise PolicyError(f"guest {guest.name} is already registered by someone else ({old.guest.comment!r}); not replacing it")
        plan, registry = plan_add(registry, guest)
        apply_plan(plan)
        store.write_section(GUESTS_KEY, registry.to_json())
    member = registry.find(guest.name)
    assert member is not None
    return member


def unregister_where(selected: Callable[[Guest], bool], directory: Path) -> list[str]:
    """Remove every registered guest ``selected`` picks; their names (maybe none)."""
    with StateStore(directory) as store:
        registry = _registry(store)
        gone = [m.guest.name for m in registry.members if selected(m.guest)]
        for name in gone:
            plan, registry = plan_remove(registry, name)
            apply_plan(plan)
            store.write_section(GUESTS_KEY, registry.to_json())
    return gone


def check(guest: Guest, directory: Path) -> list[str]:
    """What is wrong with ``guest``'s registration: not recorded, recorded
    differently, or drifted in the live ruleset. Empty when all is well."""
    with StateStore(directory) as store:
        registry = _registry(store)
    member = registry.find(guest.name)
    if member is None:
        return [f"guest {guest.name} is not registered"]
    if member.guest != guest:
        return [f"guest {guest.name} is registered with different settings"]
    statuses, _ = compare_status(Registry(settings=registry.settings, members=(member,)), collect_live())
    return [f"guest {guest.name}: {line}" for s in statuses for line in s.drift]
