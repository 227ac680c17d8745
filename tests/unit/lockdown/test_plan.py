"""plan_add / plan_remove: the nftables transaction and the sysctl steps, as data."""

from __future__ import annotations

import pytest

from guestfence.errors import PlanError
from guestfence.lockdown.feature import guest_interfaces
from guestfence.lockdown.pattern import parse_patterns
from guestfence.lockdown.plan import (
    HOOKS,
    PRIORITY,
    TABLE,
    Link,
    counter_name,
    plan_add,
    plan_link,
    plan_remove,
    plan_restore,
)
from guestfence.lockdown.state import InterfaceRecord, LockdownState, SysctlChange, SysctlStep

LINKS = (Link(name="lo", ifindex=1), Link(name="eth0", ifindex=2), Link(name="vlan7", ifindex=7))
PROTECTED = {"lo": "loopback", "eth0": "default route, IPv4"}


def all_rules(commands) -> list[tuple[str, str, str, str]]:
    found = []
    for command in commands:
        rule = command.get("add", {}).get("rule")
        if rule:
            match = rule["expr"][0]["match"]
            found.append((rule["family"], rule["chain"], match["left"]["meta"]["key"], match["right"]))
    return found


def rules(commands) -> list[tuple[str, str, str, str]]:
    """The rules about patterns (by interface name)."""
    return [r for r in all_rules(commands) if r[2] in ("iifname", "oifname")]


def test_each_pattern_gets_a_drop_rule_at_every_hook_matched_by_name() -> None:
    plan = plan_add(LockdownState(), parse_patterns(["vlan*", "vmtap-abcd"]), links=LINKS, protected=PROTECTED)
    assert rules(plan.commands) == [
        (h.family, h.chain, h.key, p) for h in HOOKS for p in ("vlan*", "vmtap-abcd")
    ]
    chains = [c["add"]["chain"] for c in plan.commands if "chain" in c.get("add", {})]
    assert {(c["family"], c["hook"]) for c in chains} == {
        ("inet", "prerouting"), ("inet", "output"), ("arp", "input"), ("bridge", "input")
    }
    assert {c["prio"] for c in chains} == {PRIORITY} and {c["table"] for c in chains} == {TABLE}
    assert all(r["expr"][1:] == [{"counter": counter_name(h, p)}, {"drop": None}]
               for c in plan.commands if (r := c.get("add", {}).get("rule"))
               if r["expr"][0]["match"]["left"]["meta"]["key"] in ("iifname", "oifname")
               for h in HOOKS if (h.family, h.chain) == (r["family"], r["chain"])
               for p in parse_patterns([r["expr"][0]["match"]["right"]]))  # fmt: skip


def test_no_netdev_ingress_hook_which_would_cut_the_guest_off() -> None:
    plan = plan_add(LockdownState(), parse_patterns(["vlan*"]), links=LINKS, protected=PROTECTED)
    assert not any(c.get("add", {}).get("table", {}).get("family") == "netdev" for c in plan.commands)
    assert not any(c.get("add", {}).get("chain", {}).get("hook") == "ingress" for c in plan.commands)


def test_chains_are_flushed_before_refilling_so_reapplying_is_idempotent() -> None:
    plan = plan_add(LockdownState(), parse_patterns(["vlan*"]), links=LINKS, protected=PROTECTED)
    verbs = [next(iter(c)) + ":" + next(iter(next(iter(c.values())))) for c in plan.commands]
    assert verbs.index("flush:chain") < verbs.index("add:rule")
    assert "delete:table" not in verbs


def test_only_existing_matching_links_get_sysctl_steps() -> None:
    plan = plan_add(LockdownState(), parse_patterns(["vlan*", "vm9"]), links=LINKS, protected=PROTECTED)
    assert [s.link for s in plan.harden] == [Link(name="vlan7", ifindex=7)]
    names = {step.name for step in plan.harden[0].steps}
    assert {"net.ipv6.conf.vlan7.disable_ipv6", "net.ipv6.conf.vlan7.accept_ra", "net.ipv6.conf.vlan7.autoconf",
            "net.ipv4.conf.vlan7.arp_ignore"} <= names  # fmt: skip
    assert all(step.optional == (step.family == "ipv6") for step in plan.harden[0].steps)


@pytest.mark.parametrize("text", ["lo", "*", "e*", "eth0"])
def test_refuses_loopback_and_the_default_route_interface_without_force(text: str) -> None:
    with pytest.raises(PlanError, match="use --force"):
        plan_add(LockdownState(), parse_patterns([text]), links=LINKS, protected=PROTECTED)
    plan = plan_add(LockdownState(), parse_patterns([text]), links=LINKS, protected=PROTECTED, force=True)
    assert [p.text for p in plan.patterns] == [text]


def test_an_earlier_forced_pattern_does_not_block_the_next_add() -> None:
    state = LockdownState(patterns=parse_patterns(["lo"]))
    plan = plan_add(state, parse_patterns(["vlan*"]), links=LINKS, protected=PROTECTED)
    assert [p.text for p in plan.patterns] == ["lo", "vlan*"]


def record(interface: str, ifindex: int) -> InterfaceRecord:
    step = SysctlStep(family="ipv6", interface=interface, key="disable_ipv6", value="1", optional=True)
    return InterfaceRecord(interface=interface, ifindex=ifindex, changes=(SysctlChange(step=step, old="0"),))


def test_remove_keeps_counters_of_others_and_deletes_its_own_even_if_missing() -> None:
    state = LockdownState(patterns=parse_patterns(["vlan*", "vm9"]))
    plan = plan_remove(state, parse_patterns(["vm9"]), links=LINKS)
    counters = [(next(iter(c)), c[next(iter(c))]["counter"]["name"]) for c in plan.commands
                if "counter" in next(iter(c.values()))]  # fmt: skip
    gone = [name for verb, name in counters if verb == "delete"]
    assert gone and all(name.endswith("_vm9") for name in gone)
    assert all(("add", name) in counters for name in gone)  # add-then-delete: fine if it never existed
    assert rules(plan.commands) == [(h.family, h.chain, h.key, "vlan*") for h in HOOKS]


def test_removing_the_last_pattern_deletes_the_tables() -> None:
    plan = plan_remove(LockdownState(patterns=parse_patterns(["vlan*"])), parse_patterns(["vlan*"]), links=LINKS)
    assert plan.commands == tuple(
        c for family in ("inet", "arp", "bridge")
        for c in ({"add": {"table": {"family": family, "name": TABLE}}},
                  {"delete": {"table": {"family": family, "name": TABLE}}})
    )  # fmt: skip


def test_remove_writes_back_only_records_no_pattern_covers_on_the_same_interface() -> None:
    state = LockdownState(
        patterns=parse_patterns(["vlan*", "vlan7"]),
        interfaces=(record("vlan7", 7), record("vlan8", 8)),
    )
    still_covered = plan_remove(state, parse_patterns(["vlan7"]), links=LINKS)
    assert still_covered.release == () and still_covered.revert == ()
    plan = plan_remove(state, parse_patterns(["vlan*", "vlan7"]), links=LINKS)
    assert plan.release == state.interfaces
    assert plan.revert == record("vlan7", 7).changes  # vlan8 is gone: nothing to write back
    recreated = plan_remove(state, parse_patterns(["vlan*", "vlan7"]), links=(Link(name="vlan7", ifindex=70),))
    assert recreated.revert == ()


def test_remove_of_a_pattern_not_in_force_is_an_error() -> None:
    with pytest.raises(PlanError, match=r"not locked down: 'vm\*' \(locked down: 'vlan\*'\)"):
        plan_remove(LockdownState(patterns=parse_patterns(["vlan*"])), parse_patterns(["vm*"]), links=LINKS)


def test_restore_and_new_links_follow_the_recorded_patterns() -> None:
    state = LockdownState(patterns=parse_patterns(["vlan*"]))
    assert rules(plan_restore(state, links=LINKS).commands) == [(h.family, h.chain, h.key, "vlan*") for h in HOOKS]
    assert plan_link(state, Link(name="vlan9", ifindex=9), LINKS) is not None
    assert plan_link(state, Link(name="eth1", ifindex=3), LINKS) is None


STACK = (
    Link(name="eth0", ifindex=2),
    Link(name="vlan7", ifindex=7),
    Link(name="macvtap3", ifindex=30, kind="macvtap", lower=7),
    Link(name="mv4", ifindex=40, kind="macvlan", lower=7),
    Link(name="vlan7.5", ifindex=50, kind="vlan", lower=7),
    Link(name="macvtap6", ifindex=60, kind="macvtap", lower=2),
)


def test_macvlan_and_macvtap_on_a_matching_link_are_covered_and_go_into_the_stacked_set() -> None:
    plan = plan_add(LockdownState(), parse_patterns(["vlan7"]), links=STACK, protected=PROTECTED)
    assert [link.name for link in plan.stacked] == ["macvtap3", "mv4"]  # not the VLAN, not eth0's macvtap
    assert [ls.link.name for ls in plan.harden] == ["vlan7", "macvtap3", "mv4"]
    elements = [c["add"]["element"] for c in plan.commands if "element" in c.get("add", {})]
    stacked = [e for e in elements if e["name"] == "stacked"]
    assert {(e["family"], tuple(e["elem"])) for e in stacked} == {("inet", (30, 40)), ("arp", (30, 40))}
    state = LockdownState(patterns=parse_patterns(["vlan7"]))
    assert plan_link(state, STACK[3], STACK) is not None and plan_link(state, STACK[5], STACK) is None


def test_every_macvtap_is_dropped_by_kind_and_the_stacked_set_by_index_at_inet_and_arp() -> None:
    plan = plan_add(LockdownState(), parse_patterns(["vlan*"]), links=(), protected=PROTECTED)
    extra = [r for r in all_rules(plan.commands) if r[2] not in ("iifname", "oifname")]
    assert extra == [
        ("inet", "prerouting", "iif", "@stacked"), ("inet", "prerouting", "iifkind", "macvtap"),
        ("inet", "output", "oif", "@stacked"), ("inet", "output", "oifkind", "macvtap"),
        ("arp", "input", "iif", "@stacked"), ("arp", "input", "iifkind", "macvtap"),
    ]  # fmt: skip
    verbs = [next(iter(c)) + ":" + next(iter(next(iter(c.values())))) for c in plan.commands]
    assert verbs.index("flush:set") < verbs.index("add:rule")
    elements = [c["add"]["element"] for c in plan.commands if "element" in c.get("add", {})]
    assert [(e["family"], e["name"], e["elem"]) for e in elements] == [("inet", "generation", [1])]  # no stacked ones


def test_a_stacked_device_carrying_the_host_is_refused_without_force() -> None:
    with pytest.raises(PlanError, match=r"mv4 \(default route, IPv4\) is a macvlan on vlan7"):
        plan_add(LockdownState(), parse_patterns(["vlan7"]), links=STACK, protected={"mv4": "default route, IPv4"})


def test_a_registered_guests_interface_is_protected_like_the_uplink() -> None:
    guests = guest_interfaces({"members": [{"name": "vm1", "iface": "vlan7"}, {"name": "vm2", "iface": "vnet2",
                                            "bridge": "br0"}, "junk"]})  # fmt: skip
    assert guests == {"vlan7": "interface of registered guest vm1", "vnet2": "interface of registered guest vm2",
                      "br0": "bridge of registered guest vm2"}  # fmt: skip
    with pytest.raises(PlanError, match=r"'vlan\*' matches vlan7 \(interface of registered guest vm1\)"):
        plan_add(LockdownState(), parse_patterns(["vlan*"]), links=LINKS, protected=guests)


def test_disable_ipv6_is_left_out_where_it_would_delete_static_configuration() -> None:
    link = Link(name="vlan7", ifindex=7, ipv6_config=("address 2001:db8::5/64",))
    plan = plan_add(LockdownState(), parse_patterns(["vlan7"]), links=(link,), protected={})
    (steps,) = plan.harden
    assert "disable_ipv6" not in {s.key for s in steps.steps} and {"accept_ra", "arp_ignore"} <= {s.key for s in steps.steps}
    assert "2001:db8::5/64" in steps.kept[0]


def test_counter_names_are_distinct_within_each_table() -> None:
    patterns = parse_patterns(["a*", "a_2a", "a.b", "a-b", "a_b"])
    names = {(h.family, counter_name(h, p)) for h in HOOKS for p in patterns}
    assert len(names) == len(HOOKS) * len(patterns)
