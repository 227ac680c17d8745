"""What lockdown has applied, as values and as JSON. Pure: no I/O.

The state is the pattern set in force plus, for each interface whose
sysctls lockdown changed, the interface's index and every value it
replaced. ``remove`` writes back exactly those values, and only where the
interface is still the same one (same index) and the value is still the
one lockdown wrote: a later change by someone else is left alone.

Every change bumps ``generation``, which its transaction also writes into
the tables (lockdown.plan). The change is recorded as ``pending`` (the
state it will leave, old sysctl values included) before anything is
written, and as the record itself after, so a crash in between is seen and
settled (``settle_pending``): the tables hold the pending generation, so
the change happened; or they do not, so it is rolled back, and the
interfaces it may have hardened stay in the record with their old values
for ``restore`` to write back.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, final

from guestfence.errors import ConfigError, PolicyError
from guestfence.lockdown.pattern import InterfacePattern, parse_pattern


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SysctlStep:
    """Set ``net.<family>.conf.<interface>.<key>`` to ``value``. An optional
    step is skipped when its path does not exist."""

    family: str
    interface: str
    key: str
    value: str
    optional: bool = False

    @property
    def name(self) -> str:
        """The sysctl(8) name; a '.' in the interface name becomes '/'."""
        return f"net.{self.family}.conf.{self.interface.replace('.', '/')}.{self.key}"

    @property
    def path(self) -> str:
        return f"/proc/sys/net/{self.family}/conf/{self.interface}/{self.key}"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SysctlChange:
    """A value lockdown wrote, and the one it replaced."""

    step: SysctlStep
    old: str


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class InterfaceRecord:
    """The changes lockdown made on one interface, identified by name and index."""

    interface: str
    ifindex: int
    changes: tuple[SysctlChange, ...]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class LockdownState:
    """The patterns in force and the interfaces whose sysctls lockdown changed."""

    patterns: tuple[InterfacePattern, ...] = ()
    interfaces: tuple[InterfaceRecord, ...] = ()
    generation: int = 0

    def record(self, interface: str) -> InterfaceRecord | None:
        return next((r for r in self.interfaces if r.interface == interface), None)


def merge_record(state: LockdownState, new: InterfaceRecord) -> LockdownState:
    """``state`` with ``new`` folded in. For the same interface and index the
    first old value of each sysctl is kept (a re-apply changes nothing, so
    it must not record lockdown's own value as the old one); a different
    index means a new interface, and its record replaces the stale one."""
    current = state.record(new.interface)
    if current is not None and current.ifindex == new.ifindex:
        known = {c.step.name for c in current.changes}
        new = InterfaceRecord(
            interface=new.interface,
            ifindex=new.ifindex,
            changes=current.changes + tuple(c for c in new.changes if c.step.name not in known),
        )
    others = tuple(r for r in state.interfaces if r.interface != new.interface)
    return replace(state, interfaces=(*others, new) if new.changes else others)


def forget_interface(state: LockdownState, interface: str, ifindex: int) -> LockdownState:
    """``state`` without the record of an interface that was deleted."""
    kept = tuple(r for r in state.interfaces if not (r.interface == interface and r.ifindex == ifindex))
    return replace(state, interfaces=kept)


def settle_pending(state: LockdownState, pending: LockdownState | None, live: int | None) -> tuple[LockdownState, str | None]:
    """The state to go on from after an interrupted change (``pending``;
    ``live``: the generation the tables hold, None without tables), and a
    line saying what was decided (None: nothing was pending). A change that
    leaves no pattern deletes the tables, so no tables means it happened."""
    if pending is None:
        return state, None
    if live == pending.generation or (live is None and not pending.patterns):
        return pending, f"kept the interrupted change (generation {pending.generation}), which the rules hold"
    # Rolled back; what it may have written is remembered, to be written back.
    rolled_back = state
    for record in pending.interfaces:
        rolled_back = merge_record(rolled_back, record)
    return rolled_back, (f"rolled back an interrupted change (generation {pending.generation}) the rules never held; "
                         "sysctls it may have set are written back")


def pending_drift(state: LockdownState, pending: LockdownState | None, live: int | None) -> list[str]:
    """What ``lockdown list`` says about an interrupted change (see ``settle_pending``)."""
    if pending is None:
        return []
    if live == pending.generation or (live is None and not pending.patterns):
        return [f"an interrupted change (generation {pending.generation}) was applied but not recorded; "
                "`guestfence restore` records it"]
    return [f"an interrupted change (generation {pending.generation}) was recorded but never applied "
            f"(the rules hold generation {live if live is not None else 'none'}); `guestfence restore` rolls it back "
            "and writes back any sysctl it set"]


def with_pending(recorded: Any, state: LockdownState) -> dict[str, Any]:
    """``state`` as the record, keeping the ``pending`` change of ``recorded``
    (a command that does not settle it must not erase the sign of a crash)."""
    data = state_to_json(state)
    if isinstance(recorded, dict) and "pending" in recorded:
        data["pending"] = recorded["pending"]
    return data


def state_to_json(state: LockdownState) -> dict[str, Any]:
    return {
        "generation": state.generation,
        "patterns": [str(p) for p in state.patterns],
        "interfaces": [
            {
                "interface": r.interface,
                "ifindex": r.ifindex,
                "sysctls": [
                    {"family": c.step.family, "key": c.step.key, "set": c.step.value, "old": c.old,
                     "optional": c.step.optional}
                    for c in r.changes
                ],
            }  # fmt: skip
            for r in state.interfaces
        ],
    }


def state_from_json(data: Any, *, source: str) -> LockdownState:
    """The state saved by ``state_to_json``. Raises ConfigError naming ``source``."""
    state, problems = salvage_state(data)
    if problems:
        raise ConfigError(f"the recorded lockdown state is damaged ({'; '.join(problems)}); remove it to start over",
                          source=source)  # fmt: skip
    return state


def salvage_state(data: Any) -> tuple[LockdownState, tuple[str, ...]]:
    """Every pattern and interface record that can be read, and a line for
    each that cannot (``restore`` installs the first and reports the rest)."""
    if not isinstance(data, dict):
        return LockdownState(), (f"lockdown: the record is not an object: {_shown(data)}",)
    patterns: list[InterfacePattern] = []
    records: list[InterfaceRecord] = []
    problems: list[str] = []
    generation = data.get("generation", 0)
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        problems.append(f"lockdown: generation is not a number: {_shown(generation)}")
        generation = 0
    raw_patterns = data.get("patterns", [])
    raw_records = data.get("interfaces", [])
    for name, value in (("patterns", raw_patterns), ("interfaces", raw_records)):
        if not isinstance(value, list):
            problems.append(f"lockdown: {name} is not a list: {_shown(value)}")
    for text in raw_patterns if isinstance(raw_patterns, list) else []:
        try:
            if not isinstance(text, str):
                raise TypeError("not a string")
            patterns.append(parse_pattern(text))
        except (TypeError, PolicyError) as exc:
            problems.append(f"lockdown: pattern {_shown(text)}: {str(exc).splitlines()[0]}")
    for raw in raw_records if isinstance(raw_records, list) else []:
        try:
            records.append(_record_from_json(raw))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            name = raw.get("interface") if isinstance(raw, dict) else None
            problems.append(f"lockdown: record of interface {_shown(name)}: {exc!r} (its sysctls are left as they are)")
    state = LockdownState(patterns=tuple(dict.fromkeys(patterns)), interfaces=tuple(records), generation=generation)
    return state, tuple(problems)


def salvage_pending(data: Any) -> tuple[LockdownState | None, tuple[str, ...]]:
    """The record's ``pending`` change (None: none), read like the record."""
    if not isinstance(data, dict) or data.get("pending") is None:
        return None, ()
    pending, problems = salvage_state(data["pending"])
    return pending, tuple(f"pending change: {p}" for p in problems)


def _record_from_json(r: Any) -> InterfaceRecord:
    interface = r["interface"]
    if not isinstance(interface, str) or not isinstance(r["sysctls"], list):
        raise TypeError("interface must be a name and sysctls a list")
    return InterfaceRecord(
        interface=interface,
        ifindex=int(r["ifindex"]),
        changes=tuple(
            SysctlChange(
                step=SysctlStep(family=str(c["family"]), interface=interface, key=str(c["key"]), value=str(c["set"]),
                                optional=bool(c.get("optional", False))),
                old=str(c["old"]),
            )  # fmt: skip
            for c in r["sysctls"]
        ),
    )


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
