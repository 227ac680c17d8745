"""``lockdown list``: the recorded state next to what the kernel has now.

``compile_report`` is pure: it takes the live table listing (libnftables
JSON) and the current sysctl values as data. ``collect_report`` reads them.
A pattern whose rules are missing from the kernel (after a reboot, or
``nft flush ruleset``) is reported as not in force rather than hidden; so
are the rules for stacked devices, listed with the members of the live
``stacked`` set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, final

from guestfence.lockdown.apply import read_sysctl
from guestfence.lockdown.pattern import InterfacePattern
from guestfence.lockdown.plan import FAMILIES, HOOKS, STACKED_SET, TABLE, Hook, Link, counter_name, stacked_rules
from guestfence.lockdown.state import LockdownState, SysctlStep
from guestfence.nftables.apply import Command, NftHandle, list_ruleset


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class HookReport:
    hook: str
    in_force: bool
    packets: int
    bytes: int


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class PatternReport:
    pattern: InterfacePattern
    hooks: tuple[HookReport, ...]
    interfaces: tuple[str, ...]

    @property
    def in_force(self) -> bool:
        return all(h.in_force for h in self.hooks)


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class SysctlReport:
    name: str
    set: str
    old: str
    now: str | None


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class InterfaceReport:
    interface: str
    ifindex: int
    present: bool
    sysctls: tuple[SysctlReport, ...]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class LockdownReport:
    patterns: tuple[PatternReport, ...]
    interfaces: tuple[InterfaceReport, ...]
    stacked_rules: tuple[HookReport, ...] = ()
    stacked: tuple[str, ...] = ()


def hook_label(hook: Hook) -> str:
    return f"{hook.family} {hook.chain}"


def compile_report(
    state: LockdownState,
    ruleset: list[Command],
    links: tuple[Link, ...],
    now: Callable[[SysctlStep], str | None],
) -> LockdownReport:
    counters: dict[tuple[str, str], tuple[int, int]] = {}
    rules: set[tuple[str, str, str]] = set()
    members: set[str] = set()
    for item in ruleset:
        if "set" in item and item["set"].get("table") == TABLE and item["set"].get("name") == STACKED_SET:
            members.update(str(e) for e in item["set"].get("elem", []))
        if "counter" in item and item["counter"].get("table") == TABLE:
            c = item["counter"]
            counters[(c["family"], c["name"])] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
        elif "rule" in item and item["rule"].get("table") == TABLE:
            r = item["rule"]
            for expr in r.get("expr", []):
                if "counter" in expr and isinstance(expr["counter"], str):
                    rules.add((r["family"], r["chain"], expr["counter"]))
    patterns = tuple(
        PatternReport(
            pattern=pattern,
            hooks=tuple(
                HookReport(
                    hook=hook_label(hook),
                    in_force=(hook.family, hook.chain, counter_name(hook, pattern)) in rules,
                    packets=counters.get((hook.family, counter_name(hook, pattern)), (0, 0))[0],
                    bytes=counters.get((hook.family, counter_name(hook, pattern)), (0, 0))[1],
                )
                for hook in HOOKS
            ),
            interfaces=tuple(link.name for link in links if pattern.matches(link.name)),
        )
        for pattern in state.patterns
    )
    alive = {link.key for link in links}
    interfaces = tuple(
        InterfaceReport(
            interface=record.interface,
            ifindex=record.ifindex,
            present=(present := (record.interface, record.ifindex) in alive),
            sysctls=tuple(
                SysctlReport(name=c.step.name, set=c.step.value, old=c.old, now=now(c.step) if present else None)
                for c in record.changes
            ),
        )
        for record in state.interfaces
    )
    stacked = tuple(
        HookReport(
            hook=f"{hook_label(rule.hook)} {rule.what}",
            in_force=(rule.hook.family, rule.hook.chain, rule.counter) in rules,
            packets=counters.get((rule.hook.family, rule.counter), (0, 0))[0],
            bytes=counters.get((rule.hook.family, rule.counter), (0, 0))[1],
        )
        for rule in stacked_rules()
    ) if state.patterns else ()  # fmt: skip
    # The set lists a member by name while the interface exists, else by index.
    by_index = {str(link.ifindex): link.name for link in links}
    return LockdownReport(patterns=patterns, interfaces=interfaces, stacked_rules=stacked,
                          stacked=tuple(sorted(by_index.get(m, m) for m in members)))  # fmt: skip


def collect_report(state: LockdownState, nft: NftHandle, links: tuple[Link, ...]) -> LockdownReport:
    ruleset: list[Command] = []
    for family in FAMILIES:
        ruleset += list_ruleset(nft, {"table": {"family": family, "name": TABLE}})
    return compile_report(state, ruleset, links, read_sysctl)


def report_to_json(report: LockdownReport) -> dict[str, Any]:
    return {
        "patterns": [
            {
                "pattern": str(p.pattern),
                "in_force": p.in_force,
                "interfaces": list(p.interfaces),
                "rules": [{"hook": h.hook, "in_force": h.in_force, "drops": {"packets": h.packets, "bytes": h.bytes}}
                          for h in p.hooks],
            }  # fmt: skip
            for p in report.patterns
        ],
        "stacked": {
            "interfaces": list(report.stacked),
            "rules": [{"hook": h.hook, "in_force": h.in_force, "drops": {"packets": h.packets, "bytes": h.bytes}}
                      for h in report.stacked_rules],
        },
        "interfaces": [
            {
                "interface": i.interface,
                "ifindex": i.ifindex,
                "present": i.present,
                "sysctls": [{"name": s.name, "set": s.set, "old": s.old, "now": s.now} for s in i.sysctls],
            }
            for i in report.interfaces
        ],
    }
