"""Lockdown as one feature of ``apply FILE``, ``restore`` and ``flush``
(guestfence.state.Feature); its section of the state file is ``state_to_json``.

- ``apply FILE`` adds the file's ``[lockdown] interfaces`` to the patterns;
  with ``--prune`` it makes the patterns equal to them. A file without a
  ``[lockdown]`` section leaves lockdown as it is: a file about guests alone
  must not unlock interfaces.
- ``restore`` re-applies the recorded patterns and hardens the matching
  interfaces that exist (after a reboot both are gone). From a damaged
  record it installs every pattern it can read, leaves the sysctls of an
  unreadable interface record as they are, names each problem
  (``FeaturePlan.problems``: the command exits non-zero) and does not
  rewrite the record it did not understand.
- ``flush`` deletes the tables and writes back the recorded sysctls; the
  patterns stay recorded, so ``restore`` brings everything back.

- ``lockdown add|remove`` (``plan_add``/``plan_remove``) change the
  patterns the same way.

Every change is recorded twice (guestfence.state): its ``intent`` (the
record with the state it will leave as ``pending``) before any sysctl or
rule is written, the state after. A change planned over an interrupted one
starts from the recorded state with the interrupted change's interface
records folded in (their old values are never forgotten); ``restore``
settles it against the generation the tables hold
(lockdown.state.settle_pending).

A pattern that would cover a guest's interface is refused (unless
``force``) like loopback and the uplink: ``guest_interfaces`` names them.

The section to record is computed while planning (``expected_state`` reads
the current sysctl values); ``apply`` then does the read-compare-write under
the same state lock, so the two agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, final

from guestfence.lockdown.apply import apply_lockdown, expected_state
from guestfence.lockdown.links import collect_links, collect_protected
from guestfence.lockdown.pattern import InterfacePattern
from guestfence.lockdown.plan import (
    TABLE,
    LockdownPlan,
    generation_of,
    plan_add,
    plan_flush,
    plan_remove,
    plan_replace,
    plan_restore,
    plan_to_json,
)
from guestfence.lockdown.state import (
    LockdownState,
    merge_record,
    pending_drift,
    salvage_pending,
    salvage_state,
    settle_pending,
    state_from_json,
    state_to_json,
)
from guestfence.nftables.apply import NftHandle, list_ruleset, open_nft
from guestfence.resolve import Resolution
from guestfence.state import FeaturePlan
from guestfence.value import replace

LOCKDOWN_KEY = "lockdown"


def recorded_state(recorded: Mapping[str, Any] | None) -> LockdownState:
    """The recorded state to plan a change from: an interrupted change's
    interface records folded in (see the module header). Raises ConfigError."""
    if recorded is None:
        return LockdownState()
    state = state_from_json(recorded, source="recorded lockdown")
    pending, _ = salvage_pending(recorded)
    for record in () if pending is None else pending.interfaces:
        state = merge_record(state, record)
    return state


def live_generation(nft: NftHandle) -> int | None:
    """The generation the lockdown tables hold (None: no tables)."""
    return generation_of(list_ruleset(nft, {"table": {"family": "inet", "name": TABLE}}))


def interrupted(recorded: Mapping[str, Any] | None, nft: NftHandle) -> list[str]:
    """What ``lockdown list`` says about an interrupted change: none, or one line."""
    if recorded is None:
        return []
    pending, problems = salvage_pending(recorded)
    state, _ = salvage_state(recorded)
    return [*problems, *pending_drift(state, pending, None if pending is None else live_generation(nft))]


def guest_interfaces(recorded_guests: Any) -> dict[str, str]:
    """The interfaces (and bridges) of the guests in the guests' recorded
    section, each with why it is protected. Read leniently: a damaged
    member still protects the interface it names."""
    members = recorded_guests.get("members") if isinstance(recorded_guests, Mapping) else None
    found: dict[str, str] = {}
    for member in members if isinstance(members, list) else []:
        if not isinstance(member, Mapping):
            continue
        name = member.get("name")
        for key, role in (("iface", "interface"), ("bridge", "bridge")):
            value = member.get(key)
            if isinstance(value, str) and value:
                found[value] = f"{role} of registered guest {name}"
    return found


@final
class LockdownFeature:
    key = LOCKDOWN_KEY

    def dns_names(self, config: Any, recorded: Mapping[str, Any] | None) -> frozenset[str]:
        return frozenset()  # interface names only

    def plan_apply(self, config: Any, recorded: Mapping[str, Any] | None, *, prune: bool = False,
                   resolved: Resolution) -> FeaturePlan:  # fmt: skip
        if config.lockdown is None:
            return self._nothing("lockdown unchanged (no [lockdown] in the file)")
        state = recorded_state(recorded)
        guests = {guest.iface: f"interface of guest {guest.name}" for guest in config.guests}
        guests |= {guest.bridge: f"bridge of guest {guest.name}" for guest in config.guests if guest.bridge}
        wanted = config.lockdown.interfaces if prune else (*state.patterns, *config.lockdown.interfaces)
        plan = plan_replace(state, wanted, links=collect_links(),
                            protected={**guests, **collect_protected()}, force=config.lockdown.force)  # fmt: skip
        changes = describe_changes(state, plan)
        changes += [f"keep {p} (not in the file; --prune removes it)"
                    for p in state.patterns if not prune and p not in config.lockdown.interfaces]  # fmt: skip
        return self._feature_plan(plan, state, expected_state(plan, state), recorded=recorded, changes=tuple(changes))

    def plan_add(self, recorded: Mapping[str, Any] | None, added: tuple[InterfacePattern, ...], *,
                 recorded_guests: Any, force: bool) -> FeaturePlan:  # fmt: skip
        """``lockdown add``: refuses patterns covering lo, the uplink or a recorded guest's interface."""
        state = recorded_state(recorded)
        protected = {**guest_interfaces(recorded_guests), **collect_protected()}
        plan = plan_add(state, added, links=collect_links(), protected=protected, force=force)
        return self._feature_plan(plan, state, expected_state(plan, state), recorded=recorded,
                                  changes=tuple(describe_changes(state, plan)))  # fmt: skip

    def plan_remove(self, recorded: Mapping[str, Any] | None, removed: tuple[InterfacePattern, ...]) -> FeaturePlan:
        """``lockdown remove``: PlanError for a pattern not in force."""
        state = recorded_state(recorded)
        plan = plan_remove(state, removed, links=collect_links())
        return self._feature_plan(plan, state, expected_state(plan, state), recorded=recorded,
                                  changes=tuple(describe_changes(state, plan)))  # fmt: skip

    def plan_restore(self, recorded: Mapping[str, Any] | None, *, resolved: Resolution) -> FeaturePlan:
        if recorded is None:
            return self._nothing("no lockdown recorded")
        state, problems = salvage_state(recorded)
        pending, pending_problems = salvage_pending(recorded)
        problems = (*problems, *pending_problems)
        state, note = settle_pending(state, pending, None if pending is None else live_generation(open_nft()))
        plan = plan_restore(state, links=collect_links())
        if not problems:
            return self._feature_plan(plan, state, expected_state(plan, state), recorded=recorded,
                                      changes=() if note is None else (note,))  # fmt: skip
        # Install what can be read and write nothing back: what an unreadable
        # pattern covered stays closed. The record stays as it is, for the
        # operator to see and fix.
        plan = replace(plan, release=(), revert=())
        return replace(self._feature_plan(plan, state, state, recorded=recorded), record=None, intent=None, problems=problems)

    def plan_flush(self, recorded: Mapping[str, Any] | None) -> FeaturePlan:
        if recorded is None:
            return self._nothing("no lockdown recorded")
        state = recorded_state(recorded)
        plan = plan_flush(state, links=collect_links())
        return self._feature_plan(plan, state, LockdownState(patterns=state.patterns, generation=plan.generation),
                                  recorded=recorded, summary="lockdown tables removed, sysctls written back")  # fmt: skip

    def apply(self, plan: FeaturePlan) -> None:
        if plan.work is not None:
            lockdown_plan, state = plan.work
            apply_lockdown(lockdown_plan, open_nft(), state)

    def _feature_plan(
        self, plan: LockdownPlan, state: LockdownState, after: LockdownState, *, recorded: Mapping[str, Any] | None,
        summary: str | None = None, changes: tuple[str, ...] = (),
    ) -> FeaturePlan:  # fmt: skip
        summary = summary or "lockdown: " + (", ".join(str(p) for p in after.patterns) or "none")
        record = state_to_json(after)
        return FeaturePlan(key=self.key, shown=plan_to_json(plan), record=record, work=(plan, state),
                           intent={**(recorded or {}), "pending": record}, summary=summary, changes=changes)  # fmt: skip

    def _nothing(self, summary: str) -> FeaturePlan:
        return FeaturePlan(key=self.key, shown=None, record=None, work=None, summary=summary)


def describe_changes(state: LockdownState, plan: LockdownPlan) -> list[str]:
    changes = [f"lock down {p}" for p in plan.patterns if p not in state.patterns]
    return changes + [f"unlock {p}" for p in state.patterns if p not in plan.patterns]


LOCKDOWN = LockdownFeature()
