"""What lockdown has applied, as values and as JSON. Pure: no I/O.

The state is the pattern set in force plus, for each interface whose
sysctls lockdown changed, the interface's index and every value it
replaced. ``remove`` writes back exactly those values, and only where the
interface is still the same one (same index) and the value is still the
one lockdown wrote: a later change by someone else is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    if not new.changes:
        return LockdownState(patterns=state.patterns, interfaces=others)
    return LockdownState(patterns=state.patterns, interfaces=(*others, new))


def forget_interface(state: LockdownState, interface: str, ifindex: int) -> LockdownState:
    """``state`` without the record of an interface that was deleted."""
    kept = tuple(r for r in state.interfaces if not (r.interface == interface and r.ifindex == ifindex))
    return LockdownState(patterns=state.patterns, interfaces=kept)


def state_to_json(state: LockdownState) -> dict[str, Any]:
    return {
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
        return LockdownState(), (f"the lockdown record is not an object: {_shown(data)}",)
    patterns: list[InterfacePattern] = []
    records: list[InterfaceRecord] = []
    problems: list[str] = []
    raw_patterns = data.get("patterns", [])
    raw_records = data.get("interfaces", [])
    for name, value in (("patterns", raw_patterns), ("interfaces", raw_records)):
        if not isinstance(value, list):
            problems.append(f"lockdown {name} is not a list: {_shown(value)}")
    for text in raw_patterns if isinstance(raw_patterns, list) else []:
        try:
            if not isinstance(text, str):
                raise TypeError("not a string")
            patterns.append(parse_pattern(text))
        except (TypeError, PolicyError) as exc:
            problems.append(f"lockdown pattern {_shown(text)}: {str(exc).splitlines()[0]}")
    for raw in raw_records if isinstance(raw_records, list) else []:
        try:
            records.append(_record_from_json(raw))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            name = raw.get("interface") if isinstance(raw, dict) else None
            problems.append(f"lockdown record of interface {_shown(name)}: {exc!r} (its sysctls are left as they are)")
    return LockdownState(patterns=tuple(dict.fromkeys(patterns)), interfaces=tuple(records)), tuple(problems)


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
