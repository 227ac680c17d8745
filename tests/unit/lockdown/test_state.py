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
