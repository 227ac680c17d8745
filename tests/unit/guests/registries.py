"""Registries built the simple way, for tests: ``plan_add`` reads every
member whole and compiles against all of them. It is the reference that
``firewall.plan_add_recorded`` (what ``guest add`` runs, reading only what
the change needs) is held to in test_firewall.py, and a short way to build
a Registry of some guests."""

from __future__ import annotations

from guestfence.guests.compile import NftPlan, Others, compile_add
from guestfence.guests.firewall import Registered, Registry
from guestfence.value import replace


def plan_add(registry: Registry, added: Registered) -> tuple[NftPlan, Registry]:
    """Add ``added``, or replace the guest of that name."""
    guest = added.guest
    old = registry.find(guest.name)
    others = [m for m in registry.members if m.guest.name != guest.name]
    settings = replace(registry.settings, generation=registry.settings.generation + 1)
    plan = compile_add(guest, settings, registry.names_of(added), others=Others.of([m.guest for m in others]),
                       replaces=None if old is None else old.guest)  # fmt: skip
    return plan, replace(registry, settings=settings, members=(*others, added))
