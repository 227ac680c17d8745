"""Applying a LockdownPlan: the only lockdown code that changes the system.

Order: sysctls first (write-backs for interfaces no pattern covers any
more, then hardening), then the plan's nftables commands as one
transaction. Each sysctl is read, compared, and written only if it differs;
every write is journalled, so when a later write or the transaction fails
the writes are undone in reverse order and the previous state stays.

A write-back happens only while the value is still the one lockdown set:
if someone changed it since, their value is left alone.

``apply_stacked`` is the watcher's other change: the ``stacked`` sets made
equal to the stacked devices that exist now, in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable

from guestfence.errors import ApplyError, GuestfenceError, HostError
from guestfence.lockdown.plan import Link, LinkSteps, LockdownPlan, compile_stacked_update
from guestfence.lockdown.state import InterfaceRecord, LockdownState, SysctlChange, SysctlStep, merge_record
from guestfence.nftables.apply import NftHandle, apply_nft

Journal = list[tuple[SysctlStep, str]]


def read_sysctl(step: SysctlStep) -> str | None:
    """The current value, or None when the path does not exist."""
    try:
        with open(step.path, encoding="ascii") as file:
            return file.read().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ApplyError("sysctl", f"reading {step.name}", exc.strerror or str(exc)) from exc


def _write_sysctl(step: SysctlStep, value: str) -> None:
    try:
        with open(step.path, "w", encoding="ascii") as file:
            file.write(value)
    except PermissionError as exc:
        raise HostError(f"cannot write {step.name}: {exc.strerror} (lockdown needs root)") from exc
    except OSError as exc:
        raise ApplyError("sysctl", f"writing {step.name}={value}", exc.strerror or str(exc)) from exc


def planned_record(link_steps: LinkSteps, read: Callable[[SysctlStep], str | None] = read_sysctl) -> InterfaceRecord:
    """The writes hardening ``link_steps`` takes, as the record it leaves:
    each step whose current value differs, with that value as the old one."""
    changes = []
    for step in link_steps.steps:
        current = read(step)
        if current is None:
            if step.optional:
                continue
            raise ApplyError("sysctl", f"setting {step.name}", f"{step.path} does not exist (is {step.interface} gone?)")
        if current != step.value:
            changes.append(SysctlChange(step=step, old=current))
    return InterfaceRecord(interface=link_steps.link.name, ifindex=link_steps.link.ifindex, changes=tuple(changes))


def expected_state(
    plan: LockdownPlan, state: LockdownState, read: Callable[[SysctlStep], str | None] = read_sysctl
) -> LockdownState:
    """The state ``apply_lockdown(plan, ..., state)`` records, computed without changing anything."""
    return _result(plan, state, [planned_record(link_steps, read) for link_steps in plan.harden])


def _result(plan: LockdownPlan, state: LockdownState, records: list[InterfaceRecord]) -> LockdownState:
    result = LockdownState(patterns=plan.patterns, interfaces=tuple(r for r in state.interfaces if r not in plan.release),
                           generation=plan.generation)
    for record in records:
        result = merge_record(result, record)
    return result


def _harden(link_steps: LinkSteps, journal: Journal) -> InterfaceRecord:
    record = planned_record(link_steps)
    for change in record.changes:
        _write_sysctl(change.step, change.step.value)
        journal.append((change.step, change.old))
    return record


def _revert(changes: tuple[SysctlChange, ...], journal: Journal) -> None:
    for change in changes:
        current = read_sysctl(change.step)
        if current == change.step.value and current != change.old:
            _write_sysctl(change.step, change.old)
            journal.append((change.step, current))


def _undo(journal: Journal) -> None:
    """Best effort: the first failure has already been raised to the user."""
    for step, previous in reversed(journal):
        try:
            _write_sysctl(step, previous)
        except GuestfenceError:
            continue


def apply_lockdown(plan: LockdownPlan, nft: NftHandle, state: LockdownState) -> LockdownState:
    """Apply ``plan`` on top of ``state``; return the state to record.
    Raises ApplyError or HostError with every change undone."""
    journal: Journal = []
    try:
        _revert(plan.revert, journal)
        records = [_harden(link_steps, journal) for link_steps in plan.harden]
        apply_nft(nft, list(plan.commands), step="lockdown rules")
    except GuestfenceError:
        _undo(journal)
        raise
    return _result(plan, state, records)


def apply_link(link_steps: LinkSteps, state: LockdownState) -> LockdownState:
    """Harden one link that just appeared (the watcher's step); return the
    state to record. Raises with the link's writes undone."""
    journal: Journal = []
    try:
        record = _harden(link_steps, journal)
    except GuestfenceError:
        _undo(journal)
        raise
    return merge_record(state, record)


def apply_stacked(nft: NftHandle, stacked: tuple[Link, ...]) -> None:
    """Make the ``stacked`` sets hold exactly ``stacked``. Raises ApplyError
    (the sets unchanged) when the tables are not there."""
    apply_nft(nft, list(compile_stacked_update(stacked)), step="lockdown stacked devices")
