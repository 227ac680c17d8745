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

A pattern that would cover a guest's interface is refused (unless
``force``) like loopback and the uplink: ``guest_interfaces`` names them.

The section to record is computed while planning (``expected_state`` reads
the current sysctl values); ``apply`` then does the read-compare-write under
the same state lock, so the two agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, final

from guestfence.lockdown.apply import apply_lockdown, expected_state
from guestfence.lockdown.links import collect_links, collect_protected
from guestfence.lockdown.plan import LockdownPlan, plan_flush, plan_replace, plan_restore, plan_to_json
from guestfence.lockdown.state import LockdownState, salvage_state, state_from_json, state_to_json
from guestfence.nft.apply import open_nft
from guestfence.state import FeaturePlan

LOCKDOWN_KEY = "lockdown"


def recorded_state(recorded: Mapping[str, Any] | None) -> LockdownState:
    return LockdownState() if recorded is None else state_from_json(recorded, source="recorded lockdown")


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

    def plan_apply(self, config: Any, recorded: Mapping[str, Any] | None, *, prune: bool = False) -> FeaturePlan:
        if config.lockdown is None:
            return self._nothing("lockdown unchanged (no [lockdown] in the file)")
        state = recorded_state(recorded)
        guests = {guest.iface: f"interface of guest {guest.name}" for guest in config.guests}
        guests |= {guest.bridge: f"bridge of guest {guest.name}" for guest in config.guests if guest.bridge}
        wanted = config.lockdown.interfaces if prune else (*state.patterns, *config.lockdown.interfaces)
        plan = plan_replace(state, wanted, links=collect_links(),
                            protected={**guests, **collect_protected()}, force=config.lockdown.force)  # fmt: skip
        changes = [f"lock down {p}" for p in plan.patterns if p not in state.patterns]
        changes += [f"unlock {p}" for p in state.patterns if p not in plan.patterns]
        return self._feature_plan(plan, state, expected_state(plan, state), changes=tuple(changes))

    def plan_restore(self, recorded: Mapping[str, Any] | None) -> FeaturePlan:
        if recorded is None:
            return self._nothing("no lockdown recorded")
        state, problems = salvage_state(recorded)
        plan = plan_restore(state, links=collect_links())
        if not problems:
            return self._feature_plan(plan, state, expected_state(plan, state))
        # Install what can be read and write nothing back: what an unreadable
        # pattern covered stays closed. The record stays as it is, for the
        # operator to see and fix.
        plan = replace(plan, release=(), revert=())
        return replace(self._feature_plan(plan, state, state), record=None, problems=problems)

    def plan_flush(self, recorded: Mapping[str, Any] | None) -> FeaturePlan:
        if recorded is None:
            return self._nothing("no lockdown recorded")
        state = recorded_state(recorded)
        plan = plan_flush(state, links=collect_links())
        return self._feature_plan(plan, state, LockdownState(patterns=state.patterns),
                                  summary="lockdown tables removed, sysctls written back")  # fmt: skip

    def apply(self, plan: FeaturePlan) -> None:
        if plan.work is not None:
            lockdown_plan, state = plan.work
            apply_lockdown(lockdown_plan, open_nft(), state)

    def _feature_plan(
        self, plan: LockdownPlan, state: LockdownState, after: LockdownState, summary: str | None = None,
        changes: tuple[str, ...] = (),
    ) -> FeaturePlan:  # fmt: skip
        summary = summary or "lockdown: " + (", ".join(str(p) for p in after.patterns) or "none")
        return FeaturePlan(key=self.key, shown=plan_to_json(plan), record=state_to_json(after), work=(plan, state),
                           summary=summary, changes=changes)  # fmt: skip

    def _nothing(self, summary: str) -> FeaturePlan:
        return FeaturePlan(key=self.key, shown=None, record=None, work=None, summary=summary)


LOCKDOWN = LockdownFeature()
