"""firewall.py and state.py without root: records, drift, one batch per change."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from guestfence.errors import HostError, PolicyError
from guestfence.nft.compile import Settings, expected_rule_counts
from guestfence.nft.firewall import (
    Live,
    Registry,
    apply_plan,
    compare_status,
    plan_add,
    plan_remove,
    registry_from_json,
)
from guestfence.nft.guest import parse_guest
from guestfence.policy.model import Policy
from guestfence.state import ENV_STATE_DIR, StateStore, state_dir


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
    plan, _ = plan_add(Registry(), vm(), resolver)
    apply_plan(plan, nft)
    assert len(nft.batches) == 1 and nft.batches[0]["nftables"][1:] == list(plan.commands)


def test_record_keeps_what_names_resolved_to_and_reads_back() -> None:
    _, registry = plan_add(Registry(), vm(), resolver)
    record = json.loads(json.dumps(registry.to_json()))
    assert record["members"][0]["resolved"] == {"api.example.com": ["203.0.113.7"]}
    assert record["members"][0]["unresolved"] == {"gone.example": "Name or service not known"}
    again = registry_from_json(record, where="state")
    assert again.find("vm1").names == {"api.example.com": frozenset({ipaddress.ip_address("203.0.113.7")})}


def test_removing_an_unknown_guest_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"no guest named 'vm9' is registered \(registered: none\)"):
        plan_remove(Registry(), "vm9")


def test_malformed_record_is_refused_with_its_place() -> None:
    with pytest.raises(PolicyError, match="state.json: malformed"):
        registry_from_json({"members": [{"name": "vm1"}]}, where="state.json")


def _live_matching(registry: Registry) -> Live:
    member = registry.members[0]
    rules = dict(expected_rule_counts(member.guest, member.names))
    entries = {("inet", "guests"): {"vmtap-vm1": "guest.vm1"}, ("arp", "guests"): {"vmtap-vm1": "guest.vm1"}}
    counters = {("inet", "guest.vm1.accepted"): 5, ("inet", "guest.vm1.dropped"): 2, ("arp", "guest.vm1.dropped"): 1}
    return Live(tables=frozenset({"inet", "arp", "bridge"}), rules=rules, counters=counters, entries=entries)


def test_status_counts_per_guest_and_sees_no_drift_when_live_matches() -> None:
    _, registry = plan_add(Registry(), vm(), resolver)
    statuses, general = compare_status(registry, _live_matching(registry))
    assert general == [] and statuses[0].drift == ()
    assert (statuses[0].accepted, statuses[0].dropped) == (5, 3)


def test_status_reports_changed_chains_missing_dispatch_and_strays() -> None:
    _, registry = plan_add(Registry(), vm(), resolver)
    live = _live_matching(registry)
    rules = {**live.rules, ("inet", "guest.vm1.host"): 1, ("inet", "guest.ghost"): 3}
    del rules[("arp", "guest.vm1")]
    drifted = Live(tables=live.tables, rules=rules, counters=live.counters, entries={})
    statuses, general = compare_status(registry, drifted)
    assert any("chain inet guest.vm1.host has 1 rules" in d for d in statuses[0].drift)
    assert "chain arp guest.vm1 is missing" in statuses[0].drift
    assert "inet map guests does not send vmtap-vm1 to the guest" in statuses[0].drift
    assert general == ["guest ghost is in the ruleset but not recorded"]


def test_state_sections_of_other_features_are_left_alone(tmp_path: Path) -> None:
    with StateStore(tmp_path) as store:
        store.write_section("lockdown", {"kept": True})
        store.write_section("guests", {"pattern": "vmtap*", "members": []})
        assert store.read() == {"version": 1, "lockdown": {"kept": True}, "guests": {"pattern": "vmtap*", "members": []}}


def test_corrupt_state_file_is_a_host_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{")
    with StateStore(tmp_path) as store, pytest.raises(HostError, match="state.json is not valid JSON"):
        store.read()


def test_state_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_STATE_DIR, str(tmp_path / "env"))
    assert state_dir(str(tmp_path / "flag")) == tmp_path / "flag"
    assert state_dir(None) == tmp_path / "env"
    monkeypatch.delenv(ENV_STATE_DIR)
    assert str(state_dir(None)).startswith("/var/lib/guestfence")


def test_settings_default_pattern_is_vmtap() -> None:
    assert Settings().pattern == "vmtap*"


def test_missing_tables_are_drift_only_when_something_was_recorded() -> None:
    empty = Live(tables=frozenset(), rules={}, counters={}, entries={})
    assert compare_status(Registry(), empty, recorded=False) == ([], [])
    assert compare_status(Registry(), empty, recorded=True)[1] == [
        "table inet guestfence is missing", "table arp guestfence is missing", "table bridge guestfence is missing"
    ]


def test_a_refused_privilege_is_a_host_error() -> None:
    class Refusing(RecordingNft):
        def json_cmd(self, json_root: dict[str, Any]) -> tuple[int, Any, str]:
            return 1, {}, "Error: Could not process rule: Operation not permitted"

    plan, _ = plan_add(Registry(), vm(), resolver)
    with pytest.raises(HostError, match="needs CAP_NET_ADMIN"):
        apply_plan(plan, Refusing())
