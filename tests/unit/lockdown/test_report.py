"""compile_report: live listing + state -> what `lockdown list` shows."""

from __future__ import annotations

from guestfence.lockdown.pattern import parse_patterns
from guestfence.lockdown.plan import Link, plan_add
from guestfence.lockdown.report import compile_report, report_to_json
from guestfence.lockdown.state import InterfaceRecord, LockdownState, SysctlChange, SysctlStep


def listing_from(commands, packets: int) -> list[dict]:
    """What the kernel lists after applying ``commands``, every counter at ``packets``."""
    items = []
    for command in commands:
        (kind, body), = command["add"].items() if "add" in command else [("", {})]
        if kind == "counter":
            items.append({"counter": {**body, "packets": packets, "bytes": packets * 60}})
        elif kind == "rule":
            items.append({"rule": body})
    return items


def test_reports_rules_in_force_drops_and_sysctls() -> None:
    state = LockdownState(patterns=parse_patterns(["vlan*"]))
    plan = plan_add(state, parse_patterns(["vlan*"]), links=(), protected={})
    step = SysctlStep(family="ipv6", interface="vlan7", key="disable_ipv6", value="1", optional=True)
    state = LockdownState(patterns=plan.patterns,
                          interfaces=(InterfaceRecord(interface="vlan7", ifindex=7,
                                                      changes=(SysctlChange(step=step, old="0"),)),))  # fmt: skip
    report = compile_report(state, listing_from(plan.commands, 3), (Link(name="vlan7", ifindex=7),), lambda s: "1")
    shown = report_to_json(report)
    assert shown["patterns"][0]["in_force"] and shown["patterns"][0]["interfaces"] == ["vlan7"]
    assert {r["hook"]: r["drops"]["packets"] for r in shown["patterns"][0]["rules"]} == {
        "inet prerouting": 3, "inet output": 3, "arp input": 3, "bridge input": 3
    }
    assert shown["interfaces"] == [{"interface": "vlan7", "ifindex": 7, "present": True, "sysctls": [
        {"name": "net.ipv6.conf.vlan7.disable_ipv6", "set": "1", "old": "0", "now": "1"}]}]  # fmt: skip


def test_a_pattern_missing_from_the_kernel_is_not_in_force() -> None:
    state = LockdownState(patterns=parse_patterns(["vlan*"]))
    report = compile_report(state, [], (), lambda s: None)
    assert not report.patterns[0].in_force
    assert all(h.packets == 0 for h in report.patterns[0].hooks)


def test_reports_the_stacked_rules_and_the_live_set_by_name_or_index() -> None:
    links = (Link(name="vlan7", ifindex=7), Link(name="macvtap3", ifindex=30, kind="macvtap", lower=7))
    plan = plan_add(LockdownState(), parse_patterns(["vlan*"]), links=links, protected={})
    listing = listing_from(plan.commands, 2) + [
        {"set": {"family": "inet", "table": "guestfence_lockdown", "name": "stacked", "elem": ["macvtap3", "41"]}}]
    shown = report_to_json(compile_report(LockdownState(patterns=plan.patterns), listing, links, lambda s: None))
    assert shown["stacked"]["interfaces"] == ["41", "macvtap3"]  # 41: a member whose interface is gone
    assert {r["hook"]: (r["in_force"], r["drops"]["packets"]) for r in shown["stacked"]["rules"]} == {
        f"{hook} {what}": (True, 2)
        for hook in ("inet prerouting", "inet output", "arp input") for what in ("stacked", "macvtap")
    }  # fmt: skip
    assert compile_report(LockdownState(), listing, links, lambda s: None).stacked_rules == ()
