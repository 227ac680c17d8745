"""guestfence.guests.binding: when an integration's registration has outlived its interface. Pure."""

from __future__ import annotations

from typing import Any

import pytest

from guestfence.errors import PolicyError
from guestfence.guests.binding import Binding, binding_from_json, binding_to_json, stale_reason, stale_records, with_stale_drift
from guestfence.guests.firewall import GuestStatus, StatusReport

QEMU_17 = Binding(owner="qemu", ifindex=17)


@pytest.mark.parametrize(
    ("links", "expected"),
    [
        ({"vmtap-a": 17}, None),
        ({}, "its interface vmtap-a is gone (registered by qemu for ifindex 17)"),
        ({"vmtap-a": 18}, "vmtap-a is another interface now (ifindex 18; registered by qemu for ifindex 17)"),
        ({"vmtap-b": 17}, "its interface vmtap-a is gone (registered by qemu for ifindex 17)"),
    ],
)
def test_a_registration_lives_exactly_as_long_as_its_interface(links: dict[str, int], expected: str | None) -> None:
    assert stale_reason("vmtap-a", QEMU_17, links) == expected


def test_binding_round_trips_through_its_record() -> None:
    assert binding_from_json(binding_to_json(QEMU_17), where="w") == QEMU_17
    assert binding_from_json(None, where="w") is None


@pytest.mark.parametrize("data", [{"owner": "qemu"}, {"owner": "me", "ifindex": 3}, {"owner": "cni", "ifindex": 0},
                                  {"owner": "cni", "ifindex": True}, {"owner": "cni", "ifindex": "3"}, [1]])  # fmt: skip
def test_rejects_a_malformed_link_record_naming_where(data: Any) -> None:
    with pytest.raises(PolicyError, match="^state.json: member 2: malformed link record"):
        binding_from_json(data, where="state.json: member 2")


def member(name: str, iface: str, link: Any = None) -> dict[str, Any]:
    return {"name": name, "iface": iface, **({} if link is None else {"link": link})}


def test_stale_records_skips_guests_made_by_hand_and_picks_by_interface() -> None:
    records = [
        member("byhand", "vmtap-h"),  # `guest add`: bound to the name, never stale
        member("alive", "vmtap-a", {"owner": "qemu", "ifindex": 5}),
        member("dead", "vmtap-d", {"owner": "libvirt", "ifindex": 6}),
        member("moved", "vmtap-m", {"owner": "cni", "ifindex": 7}),
        member("bad", "vmtap-x", {"owner": "cni"}),  # unreadable: left to status
        "not a record",
    ]
    links = {"vmtap-a": 5, "vmtap-m": 9}
    assert [name for name, _ in stale_records(records, links)] == ["dead", "moved"]
    assert [name for name, _ in stale_records(records, links, iface="vmtap-m")] == ["moved"]
    assert stale_records(None, links) == []


def test_status_names_a_stale_registration_as_its_guests_drift() -> None:
    line = GuestStatus(name="dead", iface="vmtap-d", rules=3, accepted_packets=0, accepted_bytes=0,
                       dropped_packets=0, dropped_bytes=0, drift=())  # fmt: skip
    report = StatusReport(guests=(line,), drift=())
    section = {"members": [member("dead", "vmtap-d", {"owner": "qemu", "ifindex": 6})]}
    assert not report.drifted
    shown = with_stale_drift(report, section, {})
    assert shown.drifted and "its interface vmtap-d is gone" in shown.guests[0].drift[0]
    assert with_stale_drift(report, section, {"vmtap-d": 6}) is report


def test_the_record_keeps_the_binding_and_a_bad_one_closes_the_interface() -> None:
    from guestfence.value import replace

    from guestfence.guests.firewall import member_to_json, resolve_guest, salvage_registry
    from guestfence.guests.guest import parse_guest

    guest = parse_guest(name="q1", iface="vmtap-q1", addresses=["192.0.2.2/30"])
    record = member_to_json(replace(resolve_guest(guest), link=QEMU_17))
    assert record["link"] == {"owner": "qemu", "ifindex": 17}
    assert salvage_registry({"members": [record]}, where="w").members[0].link == QEMU_17
    broken = salvage_registry({"members": [{**record, "link": {"owner": "qemu", "ifindex": -1}}]}, where="w")
    assert not broken.members and broken.settings.closed == ("vmtap-q1",)
