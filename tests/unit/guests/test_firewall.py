"""firewall.py and state.py without root: records, drift, one batch per change."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import pytest

from guestfence.config import parse_config
from guestfence.errors import HostError, PlanError, PolicyError
from guestfence.guests.compile import Profiles, Settings
from guestfence.guests.drift import compare_listings
from guestfence.guests.firewall import (
    GUESTS,
    Registry,
    apply_pending,
    apply_plan,
    describe_changes,
    plan_add_recorded,
    plan_remove,
    pending_change,
    registry_from_json,
    resolve_guest,
    salvage_registry,
    status_from_listings,
)
from guestfence.guests.guest import comment_problem, parse_guest
from guestfence.policy.model import Policy
from guestfence.resolve import Resolution
from guestfence.state import ENV_STATE_DIR, StateStore, state_dir
from tests.unit.guests.registries import plan_add


class RecordingNft:
    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []

    def json_cmd(self, json_root: dict[str, Any]) -> tuple[int, Any, str]:
        self.batches.append(json_root)
        return 0, {}, ""

    def set_dry_run(self, onoff: bool) -> bool:
        return False


def resolver(name: str, port: object, **_: object) -> list[tuple[Any, ...]]:
    if name == "api.example.com":
        return [(2, 1, 6, "", ("203.0.113.7", 0))]
    raise OSError("Name or service not known")


def vm(name: str = "vm1") -> Any:
    return parse_guest(name=name, iface=f"vmtap-{name}", addresses=["192.0.2.2/30"], gateways=["192.0.2.1"],
                       policy=Policy.parse(allow=["tcp://@gateway:8080", "api.example.com:443"], deny=["gone.example:22"]))  # fmt: skip


def test_a_change_is_one_batch() -> None:
    nft = RecordingNft()
    plan, _ = plan_add(Registry(), resolve_guest(vm(), resolver))
    apply_plan(plan, nft)
    assert len(nft.batches) == 1 and nft.batches[0]["nftables"][1:] == list(plan.commands)


def test_record_keeps_what_names_resolved_to_and_reads_back() -> None:
    _, registry = plan_add(Registry(), resolve_guest(vm(), resolver))
    record = json.loads(json.dumps(registry.to_json()))
    assert record["members"][0]["resolved"] == {"api.example.com": ["203.0.113.7"]}
    assert record["members"][0]["unresolved"] == {"gone.example": "Name or service not known"}
    again = registry_from_json(record, where="state")
    assert again.find("vm1").names == {"api.example.com": frozenset({ipaddress.ip_address("203.0.113.7")})}


def test_removing_an_unknown_guest_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"no guest named 'vm9' is registered \(registered: none\)"):
        plan_remove(Registry(), "vm9")


def test_one_malformed_member_is_kept_verbatim_and_its_interface_closed() -> None:
    _, registry = plan_add(Registry(), resolve_guest(vm(), resolver))
    record = registry.to_json()
    bad = {"name": "vm2", "iface": "vmtap-vm2", "address": ["192.0.2.6/30"]}
    record["members"].append(bad)
    salvaged = salvage_registry(record, where="state.json")
    assert [m.guest.name for m in salvaged.members] == ["vm1"]
    assert salvaged.settings.closed == ("vmtap-vm2",)
    assert salvaged.to_json()["members"][1] is bad
    assert "recorded guest vm2" in salvaged.problems()[0] and "vmtap-vm2 kept closed" in salvaged.problems()[0]
    with pytest.raises(PolicyError, match="state.json: malformed guests record: recorded guest vm2"):
        registry_from_json(record, where="state.json")


def test_a_section_that_is_no_record_is_refused() -> None:
    with pytest.raises(PolicyError, match="state.json: malformed guests record"):
        salvage_registry({"members": "nope"}, where="state.json")


def _second() -> Any:
    return parse_guest(name="vm2", iface="vmtap-vm2", addresses=["192.0.2.6/30"])


def test_every_change_bumps_the_generation() -> None:
    _, one = plan_add(Registry(), resolve_guest(vm(), resolver))
    _, two = plan_add(one, resolve_guest(_second(), resolver))
    _, three = plan_remove(two, "vm1")
    assert [r.settings.generation for r in (one, two, three)] == [1, 2, 3]
    assert three.to_json()["generation"] == 3


def test_a_change_writes_the_other_members_back_as_recorded() -> None:
    # `guest add` at 1000 guests serialised every member again; only the changed one is new.
    _, two = plan_add(Registry(), resolve_guest(vm(), resolver))
    _, two = plan_add(two, resolve_guest(_second(), resolver))
    recorded = json.loads(json.dumps(two.to_json()))
    recorded["members"][0]["comment"] = ""  # (as written by hand: still a valid record)
    read = salvage_registry(recorded, where="state")
    _, changed = plan_add(read, resolve_guest(parse_guest(name="vm2", iface="vmtap-vm2", addresses=["192.0.2.10/30"]), resolver))
    members = changed.to_json()["members"]
    assert members[0] is recorded["members"][0]
    assert members[1]["address"] == ["192.0.2.10/30"] and members[1] is not recorded["members"][1]
    assert registry_from_json(json.loads(json.dumps(changed.to_json())), where="state").guests() == changed.guests()


def _read_back(registry: Registry) -> Registry:
    return salvage_registry(json.loads(json.dumps(registry.to_json())), where="state")


def test_the_pending_change_of_add_and_remove_reads_back_as_the_new_record() -> None:
    # guest add|remove record only the change as pending; restore after a crash rebuilds the whole section from it.
    _, one = plan_add(Registry(), resolve_guest(vm(), resolver))
    with_bad = one.to_json()
    with_bad["members"].append({"name": "vm3", "iface": "vmtap-vm3", "address": ["192.0.2.14/30"]})
    old = salvage_registry(json.loads(json.dumps(with_bad)), where="state")
    added = plan_add(old, resolve_guest(_second(), resolver))[1]
    replaced = plan_add(added, resolve_guest(parse_guest(name="vm1", iface="vmtap-vm1", addresses=["192.0.2.18/30"]), resolver))[1]
    for before, after in [(old, added), (added, replaced), (replaced, plan_remove(replaced, "vm1")[1]),
                          (replaced, plan_remove(replaced, "vm3")[1])]:  # fmt: skip
        change = json.loads(json.dumps(pending_change(before, after)))
        assert "members" not in change and len(change["put"]) <= 1
        rebuilt, expected = apply_pending(before, change, where="pending"), _read_back(after)
        assert rebuilt.guests() == expected.guests() and rebuilt.settings == expected.settings
        assert [u.raw for u in rebuilt.unreadable] == [u.raw for u in expected.unreadable]
        assert [m.names for m in rebuilt.members] == [m.names for m in expected.members]
    # A whole section (apply FILE, restore; and every pending of earlier versions) reads as before.
    assert apply_pending(Registry(), json.loads(json.dumps(added.to_json())), where="pending").guests() == added.guests()
    with pytest.raises(PolicyError, match="malformed pending change"):
        apply_pending(old, {"generation": 3, "put": "vm9"}, where="pending")


def _recorded_section() -> dict[str, Any]:
    """Guests of every kind, records in unusual forms and unreadable ones, as a state file holds them."""
    def member(name: str, index: int, **fields: Any) -> Any:
        guest = parse_guest(name=name, iface=f"vmtap-{name}", addresses=[f"192.0.2.{4 * index + 2}/30", f"2001:db8:{index}::2/64"],
                            gateways=[f"192.0.2.{4 * index + 1}"], policy=Policy.parse(allow=["tcp://@gateway:8080", "api.example.com:443"]),
                            **fields)  # fmt: skip
        return resolve_guest(guest, resolver)

    members = [member("a", 1), member("b", 2, masquerade=True), member("c", 3, bridge="br0", mac="02:00:00:00:00:03"),
               member("d", 4, mac="02:00:00:00:00:04")]  # fmt: skip
    registry = Registry(members=tuple(members))
    record = json.loads(json.dumps(registry.to_json()))
    record["members"][3]["mac"] = "02:00:00:00:00:0A"  # upper case: read as parse_guest reads it
    record["members"][0]["address"][1] = "2001:db8:1:0::2/64"  # not the form guestfence writes
    record["members"] += [
        {"name": "bad1", "iface": "vmtap-bad1", "address": ["192.0.2.50/30"]},  # keys missing
        {**record["members"][0], "name": "bad2", "iface": "vmtap-bad2", "address": ["127.0.0.2/8"]},
        {**record["members"][0], "name": "bad3", "iface": "vmtap-bad3", "address": ["192.0.2.58/30"], "gateway": ["::ffff:1.2.3.4"]},
        {**record["members"][0], "name": "bad4", "iface": "vmtap-bad4", "address": ["192.0.2.62/30"], "resolved": {"x": ["nope"]}},
        {**record["members"][0], "name": "bad5", "iface": "vmtap-bad5", "address": ["192.0.2.66/30"], "comment": "a\"b"},
        {**record["members"][0], "name": "bad6", "iface": "vmtap-bad6", "address": ["192.0.2.70/30"], "link": {"owner": "x"}},
        {**record["members"][0], "name": "bad7", "iface": "vmtap-bad7", "address": ["192.0.2.74/30"],
         "policy": {"default": "deny", "allow": ["tcp://nope:x"], "deny": []}},
        "not a record",
    ]  # fmt: skip
    return record


@pytest.mark.parametrize("added", [
    dict(name="new", iface="vmtap-new", addresses=["192.0.2.102/30"]),
    dict(name="a", iface="vmtap-a", addresses=["192.0.2.106/30"], masquerade=True),  # replaces a guest
    dict(name="a", iface="vmtap-a", addresses=["192.0.2.6/30", "2001:db8:1::2/64"], gateways=["192.0.2.5"],
         policy=Policy.parse(allow=["tcp://@gateway:8080", "api.example.com:443"])),  # replaces it by the same
    dict(name="c", iface="vmtap-c", addresses=["192.0.2.110/30"]),  # replaces the last guest of a profile
    dict(name="new", iface="vmtap-b", addresses=["192.0.2.114/30"]),
    dict(name="new", iface="vmtap-new", addresses=["2001:db8:1::2/64"]),  # written another way in the record
    dict(name="new", iface="vmtap-new", addresses=["192.0.2.118/30"], bridge="br0", mac="02:00:00:00:00:03"),
    dict(name="new", iface="vmtap-new", addresses=["192.0.2.122/30"], bridge="vmtap-d", mac="02:00:00:00:00:09"),
    dict(name="new", iface="br0", addresses=["192.0.2.126/30"]),
])  # fmt: skip
def test_guest_add_on_the_record_plans_what_plan_add_on_the_whole_registry_plans(added: dict[str, Any]) -> None:
    # guest add reads the other members only as far as the change needs (plan_add_recorded); it must plan,
    # record, warn and refuse exactly as reading them whole (salvage_registry + plan_add) does.
    record = _recorded_section()
    new = resolve_guest(parse_guest(**added), resolver)
    old = salvage_registry(record, where="state.json")
    assert len(old.unreadable) == 8 and len(old.members) == 4
    try:
        plan, registry = plan_add(old, new)
    except PlanError as exc:
        with pytest.raises(PlanError, match=f"^{re.escape(str(exc))}$"):
            plan_add_recorded(record, new, where="state.json")
        return
    recorded = plan_add_recorded(record, new, where="state.json")
    assert recorded.plan == plan
    assert recorded.record == registry.to_json() and recorded.pending == pending_change(old, registry)
    assert list(recorded.changes) == describe_changes(old, registry) and recorded.count == len(registry.members)
    assert list(recorded.problems) == registry.problems() and recorded.member == registry.find(new.guest.name)
    # The first guest, on no record.
    first = plan_add_recorded(None, new, where="state.json")
    assert first.plan == plan_add(Registry(), new)[0] and first.record == plan_add(Registry(), new)[1].to_json()


def test_a_conflict_between_recorded_guests_is_refused_by_guest_add_as_before() -> None:
    record = _recorded_section()
    record["members"][1]["iface"] = "vmtap-a"
    new = resolve_guest(parse_guest(name="new", iface="vmtap-new", addresses=["192.0.2.102/30"]), resolver)
    with pytest.raises(PlanError, match="^guest b: interface vmtap-a already belongs to guest a$"):
        plan_add(salvage_registry(record, where="state.json"), new)
    with pytest.raises(PlanError, match="^guest b: interface vmtap-a already belongs to guest a$"):
        plan_add_recorded(record, new, where="state.json")


def _rule(chain: str, *exprs: Any) -> dict[str, Any]:
    return {"rule": {"family": "inet", "table": "guestfence", "chain": chain, "handle": 9, "expr": list(exprs)}}


def _listing(*rules: dict[str, Any], generation: int = 1, accepted: tuple[int, int] = (3, 180)) -> list[dict[str, Any]]:
    return [
        {"table": {"family": "inet", "name": "guestfence", "handle": 1}},
        {"chain": {"family": "inet", "table": "guestfence", "name": "prerouting", "handle": 2, "type": "filter",
                   "hook": "prerouting", "prio": -110, "policy": "accept"}},
        {"chain": {"family": "inet", "table": "guestfence", "name": "guest.vm1.host", "handle": 3}},
        {"set": {"family": "inet", "table": "guestfence", "name": "generation", "type": "mark", "handle": 4, "elem": [generation]}},
        {"set": {"family": "inet", "table": "guestfence", "name": "to_host", "type": "fib_addrtype", "handle": 5,
                 "elem": ["local", "broadcast"]}},
        {"set": {"family": "inet", "table": "guestfence", "name": "accepted", "type": "ifname", "handle": 6, "stmt": [{"counter": None}],
                 "elem": [{"elem": {"val": "vmtap-vm1", "counter": {"packets": accepted[0], "bytes": accepted[1]}}}]}},
        *rules,
    ]  # fmt: skip


DISPATCH = {"vmap": {"key": {"meta": {"key": "iifname"}}, "data": "@guests"}}
FINAL_DROP = {"goto": {"target": "guest.vm1.drop"}}


def test_listings_that_differ_only_in_handles_and_counter_values_match() -> None:
    expected = _listing(_rule("prerouting", DISPATCH), _rule("guest.vm1.host", {"counter": {"packets": 0, "bytes": 0}}, FINAL_DROP))
    live = json.loads(json.dumps(expected).replace('"packets": 0', '"packets": 7').replace('"handle": 9', '"handle": 44'))
    assert compare_listings(expected, live) == []
    counted = _listing(_rule("prerouting", DISPATCH), accepted=(70, 9000))
    assert compare_listings(_listing(_rule("prerouting", DISPATCH), accepted=(0, 0)), counted) == [], "a set element's counter"


def test_every_hand_edit_is_a_drift_in_words() -> None:
    expected = _listing(_rule("prerouting", DISPATCH), _rule("guest.vm1.host", FINAL_DROP))
    edits = {
        "accept inserted": _listing(_rule("prerouting", {"accept": None}), _rule("prerouting", DISPATCH), _rule("guest.vm1.host", FINAL_DROP)),
        "final drop replaced": _listing(_rule("prerouting", DISPATCH), _rule("guest.vm1.host", {"accept": None})),
        "dispatch flushed": _listing(_rule("guest.vm1.host", FINAL_DROP)),
        "local removed": [
            {"set": {**item["set"], "elem": ["broadcast"]}} if item.get("set", {}).get("name") == "to_host" else item
            for item in expected
        ],
        "policy changed": [
            {"chain": {**item["chain"], "policy": "drop"}} if item.get("chain", {}).get("name") == "prerouting" else item
            for item in expected
        ],
    }  # fmt: skip
    texts = {what: [d.text for d in compare_listings(expected, live)] for what, live in edits.items()}
    assert texts["accept inserted"] == ["chain inet prerouting: unexpected rule at position 1: `accept`"]
    assert texts["final drop replaced"] == [
        "chain inet guest.vm1.host: rule 1 `goto guest.vm1.drop` is missing",
        "chain inet guest.vm1.host: unexpected rule at position 1: `accept`",
    ]
    assert texts["dispatch flushed"] == ["chain inet prerouting: rule 1 `meta iifname vmap @guests` is missing"]
    assert texts["local removed"] == ["set inet to_host: element local is missing"]
    assert texts["policy changed"][0].startswith("chain inet prerouting was changed")
    assert [d.text for d in compare_listings(expected, [])] == ["table inet guestfence is missing"]


def test_status_gives_counters_and_names_the_guest_of_each_drift() -> None:
    _, registry = plan_add(Registry(), resolve_guest(vm(), resolver))
    expected = _listing(_rule("guest.vm1.host", FINAL_DROP))
    live = _listing(_rule("guest.vm1.host", {"accept": None}))
    report = status_from_listings(registry, expected, live)
    assert report.drifted and report.drift == ()
    (guest,) = report.guests
    assert (guest.accepted_packets, guest.accepted_bytes, guest.rules) == (3, 180, 1)
    assert any("guest.vm1.host" in d for d in guest.drift)
    assert report.to_json()["guests"][0]["accepted"] == 3
    assert not status_from_listings(registry, expected, expected).drifted


def test_a_generation_the_record_does_not_know_is_reported() -> None:
    _, registry = plan_add(Registry(), resolve_guest(vm(), resolver))
    expected, live = _listing(generation=1), _listing(generation=2)
    assert "the tables hold change 2, the record says 1" in status_from_listings(registry, expected, live).drift[0]
    pending = Registry(settings=registry.settings, members=registry.members, pending={"generation": 2})
    assert "applied but not recorded" in status_from_listings(pending, expected, live).drift[0]
    assert "never applied" in status_from_listings(pending, expected, expected).drift[0]


def test_apply_keeps_guests_the_file_does_not_name_unless_pruned() -> None:
    _, registry = plan_add(Registry(), resolve_guest(vm(), resolver))
    config = parse_config('[[guest]]\nname = "vm2"\niface = "vmtap-vm2"\naddress = "192.0.2.6/30"\n', source="f.toml")
    kept = GUESTS.plan_apply(config, registry.to_json(), prune=False, resolved=Resolution())
    assert [m["name"] for m in kept.record["members"]] == ["vm1", "vm2"]
    assert kept.changes == ("add guest vm2 on vmtap-vm2", "keep guest vm1 (not in the file; --prune removes it)")
    pruned = GUESTS.plan_apply(config, registry.to_json(), prune=True, resolved=Resolution())
    assert [m["name"] for m in pruned.record["members"]] == ["vm2"]
    assert "remove guest vm1" in pruned.changes
    assert pruned.intent["pending"] == pruned.record and pruned.intent["members"] == registry.to_json()["members"]


@pytest.mark.parametrize("comment", ['x" ; add chain inet x y { type filter hook input priority 0; }', "a\nb", "é" * 41])
def test_comments_nft_cannot_load_back_are_refused(comment: str) -> None:
    assert comment_problem(comment) is not None
    with pytest.raises(PolicyError, match="invalid comment"):
        parse_guest(name="vm1", iface="vmtap-vm1", addresses=["192.0.2.2/30"], comment=comment)
    assert comment_problem("web server, rack 4 (café)") is None


def test_read_only_store_creates_nothing(tmp_path: Path) -> None:
    with StateStore(tmp_path / "none", read_only=True) as store:
        assert store.read() == {}
    assert not (tmp_path / "none").exists()


def test_a_corrupt_state_file_is_never_written_over(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text('{"version": 1, "guests": ')
    with StateStore(tmp_path) as store, pytest.raises(HostError, match="not valid JSON"):
        store.write_section("lockdown", {})
    assert (tmp_path / "state.json").read_text() == '{"version": 1, "guests": '


def test_state_sections_of_other_features_are_left_alone(tmp_path: Path) -> None:
    with StateStore(tmp_path) as store:
        store.write_section("lockdown", {"kept": True})
        store.write_section("guests", {"pattern": "vmtap*", "members": []})
        assert store.read() == {"version": 1, "lockdown": {"kept": True}, "guests": {"pattern": "vmtap*", "members": []}}


def test_the_store_reads_the_file_once_per_lock_and_again_after(tmp_path: Path) -> None:
    with StateStore(tmp_path) as store:
        store.write_section("guests", {"members": []})
        (tmp_path / "state.json").write_text("{")  # no guestfence command writes without the lock
        store.write_section("lockdown", {"kept": True})
        assert store.read() == {"version": 1, "guests": {"members": []}, "lockdown": {"kept": True}}
    (tmp_path / "state.json").write_text("{")
    with StateStore(tmp_path) as store, pytest.raises(HostError, match="not valid JSON"):
        store.write_section("lockdown", {})
    assert (tmp_path / "state.json").read_text() == "{"


def test_corrupt_state_file_is_a_host_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{")
    with StateStore(tmp_path) as store, pytest.raises(HostError, match="state.json is not valid JSON"):
        store.read()


def test_state_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_STATE_DIR, str(tmp_path / "env"))
    assert state_dir(str(tmp_path / "flag")) == str(tmp_path / "flag")
    assert state_dir(None) == str(tmp_path / "env")
    monkeypatch.delenv(ENV_STATE_DIR)
    assert str(state_dir(None)).startswith("/var/lib/guestfence")


def test_settings_default_pattern_is_vmtap() -> None:
    assert Settings().pattern == "vmtap*"


def test_a_refused_privilege_is_a_host_error() -> None:
    class Refusing(RecordingNft):
        def json_cmd(self, json_root: dict[str, Any]) -> tuple[int, Any, str]:
            return 1, {}, "Error: Could not process rule: Operation not permitted"

    plan, _ = plan_add(Registry(), resolve_guest(vm(), resolver))
    with pytest.raises(HostError, match="needs CAP_NET_ADMIN"):
        apply_plan(plan, Refusing())


def test_an_intent_is_taken_back_when_the_kernel_refuses_the_change(tmp_path: Path) -> None:
    from guestfence.errors import ApplyError
    from guestfence.operations import commit
    from guestfence.state import FeaturePlan

    class Refused:
        key = "guests"

        def apply(self, plan: FeaturePlan) -> None:
            assert json.loads((tmp_path / "state.json").read_text())["guests"]["pending"] == {"members": []}
            raise ApplyError("nftables", "add guest vm1", "File exists")

    plan = FeaturePlan(key="guests", shown=None, record={"members": []}, intent={"pending": {"members": []}},
                       work=None, summary="")  # fmt: skip
    with StateStore(tmp_path) as store, pytest.raises(ApplyError):
        commit(store, Refused(), plan, None)  # type: ignore[arg-type]
    assert json.loads((tmp_path / "state.json").read_text()) == {"version": 1}


def test_the_features_plans_resolve_nothing_the_caller_hands_the_addresses_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """``plan_apply``/``plan_restore`` are pure: ``dns_names`` says what to look
    up, the caller looks it up, the plan uses the answer as data."""
    import socket

    def no_dns(*args: object, **kwargs: object) -> list[tuple[object, ...]]:
        raise AssertionError("a plan_* function resolved a name")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    config = parse_config('[[guest]]\nname = "vm2"\niface = "vmtap-vm2"\naddress = "192.0.2.6/30"\n'
                          'net_allow = ["api.example.com:443", "gone.example:22"]\n', source="f.toml")  # fmt: skip
    assert GUESTS.dns_names(config, None) == {"api.example.com", "gone.example"}
    found = Resolution(addresses={"api.example.com": frozenset({ipaddress.ip_address("203.0.113.7")})},
                       failures={"gone.example": "no addresses"})  # fmt: skip
    plan = GUESTS.plan_apply(config, None, prune=False, resolved=found)
    (member,) = plan.record["members"]
    assert member["resolved"] == {"api.example.com": ["203.0.113.7"]} and member["unresolved"] == {"gone.example": "no addresses"}
    assert GUESTS.dns_names(None, plan.record) == {"api.example.com", "gone.example"}


def test_a_difference_in_a_shared_profile_is_the_drift_of_every_guest_using_it() -> None:
    registry = Registry()
    for name in ("vm1", "vm2"):
        guest = parse_guest(name=name, iface=f"vmtap-{name}", addresses=[f"192.0.2.{2 + 4 * (name == 'vm2')}/30"],
                            gateways=["192.0.2.1"], policy=Policy.parse(allow=["tcp://@gateway:8080"]))  # fmt: skip
        _, registry = plan_add(registry, resolve_guest(guest, resolver))
    profiles = {Profiles(registry.names_of()).of(m.guest).name for m in registry.members}
    (profile,) = profiles
    expected = _listing(_rule(profile, FINAL_DROP))
    live = _listing(_rule(profile, {"accept": None}))
    report = status_from_listings(registry, expected, live)
    assert [len(g.drift) for g in report.guests] == [2, 2] and report.drift == ()
    assert all(f"chain inet {profile}: rule 1" in g.drift[0] for g in report.guests)
