"""The recorded state: merging records, JSON round trip, damaged files."""

from __future__ import annotations

import pytest

from guestfence.errors import ConfigError
from guestfence.lockdown.pattern import parse_patterns
from guestfence.lockdown.state import (
    InterfaceRecord,
    LockdownState,
    SysctlChange,
    SysctlStep,
    forget_interface,
    merge_record,
    pending_drift,
    salvage_pending,
    salvage_state,
    settle_pending,
    with_pending,
    state_from_json,
    state_to_json,
)


def change(interface: str, key: str, old: str, value: str = "1") -> SysctlChange:
    return SysctlChange(step=SysctlStep(family="ipv6", interface=interface, key=key, value=value, optional=True), old=old)


def test_a_reapply_keeps_the_first_old_value() -> None:
    first = InterfaceRecord(interface="vlan7", ifindex=7, changes=(change("vlan7", "disable_ipv6", "0"),))
    again = InterfaceRecord(interface="vlan7", ifindex=7, changes=(change("vlan7", "disable_ipv6", "1"),
                                                                    change("vlan7", "autoconf", "1", "0")))  # fmt: skip
    merged = merge_record(merge_record(LockdownState(), first), again)
    assert [(c.step.key, c.old) for c in merged.interfaces[0].changes] == [("disable_ipv6", "0"), ("autoconf", "1")]


def test_a_new_index_under_the_same_name_replaces_the_stale_record() -> None:
    old = InterfaceRecord(interface="vlan7", ifindex=7, changes=(change("vlan7", "disable_ipv6", "0"),))
    new = InterfaceRecord(interface="vlan7", ifindex=70, changes=())
    assert merge_record(merge_record(LockdownState(), old), new).interfaces == ()


def test_a_deleted_interface_is_forgotten_only_for_its_index() -> None:
    record = InterfaceRecord(interface="vlan7", ifindex=7, changes=(change("vlan7", "disable_ipv6", "0"),))
    state = LockdownState(interfaces=(record,))
    assert forget_interface(state, "vlan7", 70) == state
    assert forget_interface(state, "vlan7", 7).interfaces == ()


def test_json_round_trip() -> None:
    record = InterfaceRecord(interface="eth0.1", ifindex=4, changes=(change("eth0.1", "accept_ra", "1", "0"),))
    state = LockdownState(patterns=parse_patterns(["vlan*", "eth0.1"]), interfaces=(record,))
    assert state_from_json(state_to_json(state), source="s.json") == state
    assert record.changes[0].step.name == "net.ipv6.conf.eth0/1.accept_ra"
    assert record.changes[0].step.path == "/proc/sys/net/ipv6/conf/eth0.1/accept_ra"


@pytest.mark.parametrize("data", [[], {"patterns": ["a*b"]}, {"interfaces": [{"interface": "x"}]}])
def test_a_damaged_state_is_a_clear_error(data: object) -> None:
    with pytest.raises(ConfigError, match="s.json: the recorded lockdown state is damaged"):
        state_from_json(data, source="s.json")


def test_salvage_keeps_every_readable_part_and_names_each_damaged_one() -> None:
    good = {"interface": "vlan7", "ifindex": 7, "sysctls": [
        {"family": "ipv4", "key": "arp_ignore", "set": "8", "old": "0"}]}  # fmt: skip
    data = {"patterns": ["vlan*", 5, "vm?", "eth0.1"],
            "interfaces": [good, {"interface": "vlan8", "ifindex": "eight", "sysctls": []}, "junk"]}  # fmt: skip

    state, problems = salvage_state(data)

    assert [p.text for p in state.patterns] == ["vlan*", "eth0.1"]
    assert [r.interface for r in state.interfaces] == ["vlan7"]
    assert problems[0] == "lockdown: pattern 5: not a string"
    assert problems[1].startswith("lockdown: pattern 'vm?': ")
    assert problems[2].startswith("lockdown: record of interface 'vlan8': ") and "left as they are" in problems[2]
    assert problems[3].startswith("lockdown: record of interface None: ")
    with pytest.raises(ConfigError, match="recorded lockdown state is damaged"):
        state_from_json(data, source="recorded lockdown")


@pytest.mark.parametrize("data", [[], "x", {"patterns": "vlan*"}, {"interfaces": {}}])
def test_salvage_of_a_record_of_the_wrong_shape_reports_it(data: object) -> None:
    state, problems = salvage_state(data)
    assert state == LockdownState() and len(problems) == 1


COMMITTED = LockdownState(patterns=parse_patterns(["up*"]), generation=4,
                          interfaces=(InterfaceRecord(interface="up0", ifindex=2, changes=(change("up0", "autoconf", "1", "0"),)),))  # fmt: skip
PENDING = LockdownState(patterns=parse_patterns(["up*", "vl*"]), generation=5,
                        interfaces=(*COMMITTED.interfaces,
                                    InterfaceRecord(interface="vl0", ifindex=3, changes=(change("vl0", "disable_ipv6", "0"),))))  # fmt: skip


def test_an_interrupted_change_the_rules_hold_is_kept() -> None:
    settled, note = settle_pending(COMMITTED, PENDING, live=5)
    assert settled == PENDING and note is not None and "kept" in note
    assert "applied but not recorded" in pending_drift(COMMITTED, PENDING, 5)[0]


@pytest.mark.parametrize("live", [4, None])
def test_an_interrupted_change_the_rules_never_held_is_rolled_back_remembering_what_it_may_have_written(live: int | None) -> None:
    settled, note = settle_pending(COMMITTED, PENDING, live=live)
    assert settled.patterns == COMMITTED.patterns and settled.generation == 4 and note is not None and "rolled back" in note
    assert settled.record("vl0") == PENDING.record("vl0")  # its old values, for restore to write back
    assert "recorded but never applied" in pending_drift(COMMITTED, PENDING, live)[0]


def test_a_change_that_leaves_no_pattern_is_held_when_the_tables_are_gone() -> None:
    emptied = LockdownState(generation=5)
    assert settle_pending(COMMITTED, emptied, live=None)[0] == emptied
    assert settle_pending(COMMITTED, None, live=None) == (COMMITTED, None) and pending_drift(COMMITTED, None, 3) == []


def test_the_pending_change_round_trips_and_is_kept_by_writers_that_do_not_settle_it() -> None:
    recorded = {**state_to_json(COMMITTED), "pending": state_to_json(PENDING)}
    assert salvage_state(recorded) == (COMMITTED, ())
    assert salvage_pending(recorded) == (PENDING, ())
    assert salvage_pending(state_to_json(COMMITTED)) == (None, ())
    assert with_pending(recorded, COMMITTED)["pending"] == recorded["pending"]
    assert "pending" not in with_pending(state_to_json(COMMITTED), COMMITTED)
    assert salvage_state({"patterns": [], "generation": "x"})[1] == ("lockdown: generation is not a number: 'x'",)


def test_a_change_planned_over_an_interrupted_one_starts_from_the_record_with_its_old_values() -> None:
    from guestfence.lockdown.feature import recorded_state

    state = recorded_state({**state_to_json(COMMITTED), "pending": state_to_json(PENDING)})
    assert state.patterns == COMMITTED.patterns and state.generation == COMMITTED.generation
    assert state.record("vl0") == PENDING.record("vl0")  # released by the next change, written back
