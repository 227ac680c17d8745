"""compile.py: policy + guests -> libnftables JSON. Golden files hold whole
batches, one command per line (regenerate with GUESTFENCE_REGEN_GOLDEN=1 and review the diff);
the other tests pin one behaviour each."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

import pytest

from guestfence.errors import PlanError
from guestfence.guests.compile import (
    Others,
    Settings,
    compile_add,
    compile_flush,
    compile_remove,
    compile_ruleset,
)
from guestfence.guests.guest import Guest, parse_guest
from guestfence.guests.names import FAMILIES, GUEST_ADDRS, TABLE, guest_of
from guestfence.policy.model import Policy

GOLDEN = Path(__file__).parent / "golden"
NAMES = {"api.example.com": frozenset({ipaddress.ip_address("203.0.113.7"), ipaddress.ip_address("2001:db8::7")})}


def guest(name: str = "vm1", index: int = 1, *, allow: tuple[str, ...] = ("tcp://@gateway:8080",),
          deny: tuple[str, ...] = (), default: str = "deny", **extra: object) -> Guest:  # fmt: skip
    base = 4 * index
    return parse_guest(
        name=name,
        iface=f"vmtap-{name}",
        addresses=[f"192.0.2.{base + 2}/30", f"2001:db8:{index}::2/64"],
        gateways=[f"192.0.2.{base + 1}"],
        policy=Policy.parse(allow=allow, deny=deny, default=default),
        **extra,  # type: ignore[arg-type]
    )


def check_golden(case: str, commands: object) -> None:
    path = GOLDEN / f"{case}.json"
    # One command per line: a change of the ruleset shows as the lines it changes.
    assert isinstance(commands, list)
    text = "[\n" + ",\n".join(json.dumps(c, sort_keys=True) for c in commands) + "\n]\n"
    if os.environ.get("GUESTFENCE_REGEN_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text(), f"{case}: compiled JSON differs from {path} (GUESTFENCE_REGEN_GOLDEN=1 to regenerate)"


def test_golden_routed_guest_ruleset() -> None:
    vm = guest(allow=("tcp://@gateway:8080", "api.example.com:443", "icmp://*", "udp://*:53"),
               deny=("tcp://@host:22", "gone.example:443"), masquerade=True, comment="web VM")  # fmt: skip
    check_golden("routed_ruleset", list(compile_ruleset([vm], Settings(), NAMES).commands))


def test_golden_bridged_guest_add_and_remove() -> None:
    vm = guest("br1", 2, mac="02:00:00:00:00:02", bridge="br0")
    check_golden("bridged_add", list(compile_add(vm, Settings(), {}, others=Others.of([]), replaces=None).commands))
    check_golden("bridged_remove", list(compile_remove(vm, Settings(), {}, others=[]).commands))


def test_golden_flush() -> None:
    check_golden("flush", list(compile_flush().commands))


def _rules(commands: tuple[dict, ...], chain: str) -> list[list[dict]]:
    return [c["add"]["rule"]["expr"] for c in commands if "rule" in c.get("add", {}) and c["add"]["rule"]["chain"] == chain]


def _profile(commands: tuple[dict, ...], part: str | None = None) -> str:
    """The chain of the (only) profile in ``commands``."""
    (entry,) = {c["add"]["chain"]["name"] for c in commands if c.get("add", {}).get("chain", {}).get("name", "").count(".") == 1
                and c["add"]["chain"]["name"].startswith("policy.")}  # fmt: skip
    return entry if part is None else f"{entry}.{part}"


def _verdicts(rules: list[list[dict]]) -> list[str]:
    return [next(k for k in rule[-1]) + ("" if "goto" not in rule[-1] else ":" + rule[-1]["goto"]["target"]) for rule in rules]


def test_every_object_lives_in_our_tables() -> None:
    plan = compile_ruleset([guest(), guest("vm2", 2, bridge="br0", mac="02:00:00:00:00:02")], Settings(), NAMES)
    for command in plan.commands:
        (_, objects), = command.items()
        (kind, body), = objects.items()
        assert body["family"] in FAMILIES
        assert (body["name"] if kind == "table" else body["table"]) == TABLE


def test_adding_a_guest_touches_only_its_own_objects_whatever_the_number_of_guests() -> None:
    others = [guest(f"g{i}", i) for i in range(2, 60)]
    small = compile_add(guest(), Settings(), {}, others=Others.of(others[:1]), replaces=None).commands
    large = compile_add(guest(), Settings(), {}, others=Others.of(others), replaces=None).commands
    assert small == large
    named = [c for c in large for body in c.values() for obj in body.values() if isinstance(obj, dict) and "name" in obj]
    owners = {guest_of(obj["name"]) for c in named for body in c.values() for obj in body.values()}
    assert owners <= {None, "vm1"}
    for command in large:
        for body in command.values():
            for kind, obj in body.items():
                if kind == "element":
                    assert "vmtap-g" not in json.dumps(obj["elem"]), "no element of another guest"


def test_guests_of_one_policy_share_one_profile_and_own_only_elements() -> None:
    many = [guest(f"g{i}", i) for i in range(1, 40)]
    commands = compile_ruleset(many, Settings(), {}).commands
    chains = [c["add"]["chain"]["name"] for c in commands if "chain" in c.get("add", {})]
    assert len([c for c in chains if c.startswith("policy.")]) == 3, "one profile: entry, host, out"
    assert len([c for c in chains if c.startswith("guest.")]) == len(many), "one ND-target chain per guest with IPv6"
    def rule_count(guests: list[Guest]) -> int:
        return sum("rule" in c.get("add", {}) for c in compile_ruleset(guests, Settings(), {}).commands)

    assert rule_count(many) == rule_count(many[:1]) + len(many) - 1, "a guest more: its ND-target rule, nothing else"


def test_removing_the_last_guest_of_a_profile_removes_the_profile_and_only_then() -> None:
    first, second = guest(), guest("vm2", 2)
    deletes = {json.dumps(c) for c in compile_remove(first, Settings(), {}, others=[second]).commands if "delete" in c}
    assert not any("policy." in d for d in deletes), "vm2 still uses it"
    deletes = {json.dumps(c) for c in compile_remove(first, Settings(), {}, others=[]).commands if "delete" in c}
    assert len([d for d in deletes if "policy." in d]) == 3


def test_echo_is_the_policys_and_only_what_the_link_needs_is_accepted_before_it() -> None:
    commands = compile_ruleset([guest(allow=("tcp://@gateway:8080", "udp://*:53"), deny=("icmp://@host",))], Settings(), {}).commands
    entry = _rules(commands, _profile(commands))
    verdicts = _verdicts(entry)
    link = next(i for i, r in enumerate(entry) if "@link_icmpv6" in json.dumps(r))
    to_host = {"match": {"op": "==", "left": {"fib": {"flags": ["daddr"], "result": "type"}}, "right": "@to_host"}}
    assert to_host in entry[link] and verdicts[link] == "accept", "what the link needs, to the host only"
    deny = link + 1
    assert to_host in entry[deny] and '@icmp_protos' in json.dumps(entry[deny]) and verdicts[deny] == "goto:guest_drop"
    gateway = [i for i, r in enumerate(entry) if "@gateways" in json.dumps(r)]
    assert len(gateway) == 2 and min(gateway) > deny and all(verdicts[i] == "accept" for i in gateway), "@gateway: after every deny"
    assert not any("echo-request" in json.dumps(r) for r in commands), "no fixed accept of ping"
    host = _rules(commands, _profile(commands, "host"))
    assert _verdicts(host)[-1] == "goto:guest_drop" and not any("@gateways" in json.dumps(r) for r in host)


def test_host_means_every_type_the_host_receives() -> None:
    commands = compile_ruleset([guest()], Settings(), {}).commands
    sets = {c["add"]["set"]["name"]: c["add"]["set"].get("elem") for c in commands if "set" in c.get("add", {})}
    assert sorted(sets["to_host"]) == ["anycast", "broadcast", "local", "multicast"]


def test_translated_connections_are_dispatched_again_after_nat() -> None:
    commands = compile_ruleset([guest()], Settings(), {}).commands

    def chain(name: str) -> list[str]:
        return [json.dumps(c["add"]["rule"]["expr"]) for c in commands
                if c.get("add", {}).get("rule", {}).get("chain") == name and c["add"]["rule"]["family"] == "inet"]  # fmt: skip

    for hook in ("input", "forward"):
        (rule,) = chain(hook)
        assert '"dnat"' in rule and '"new"' in rule and '"target": "redispatch"' in rule, hook
    assert chain("redispatch") == chain("prerouting")[:-1], "every dispatch rule but the unregistered interfaces'"


def test_default_allow_accepts_at_the_end_but_other_guests_stay_out_of_reach() -> None:
    commands = compile_ruleset([guest(allow=(), default="allow")], Settings(), {}).commands
    out = _rules(commands, _profile(commands, "out"))
    assert _verdicts(out)[-1] == "accept"
    assert [r[0]["match"]["right"] for r in out[:2]] == [f"@{GUEST_ADDRS[4]}", f"@{GUEST_ADDRS[6]}"]


def test_wildcard_allows_come_after_the_other_guests_drop_and_named_ones_before() -> None:
    commands = compile_ruleset([guest(allow=("tcp://*:80", "tcp://198.51.100.0/24:7000"))], Settings(), {}).commands
    out = _rules(commands, _profile(commands, "out"))
    rights = [json.dumps(r) for r in out]
    named = next(i for i, r in enumerate(rights) if "198.51.100.0" in r)
    others = next(i for i, r in enumerate(rights) if "@guest_addrs4" in r)
    wildcard = next(i for i, r in enumerate(rights) if '"right": 80' in r)
    assert named < others < wildcard


def test_unresolved_names_decide_closed() -> None:
    commands = compile_ruleset([guest(allow=("nowhere.example:443",), deny=("gone.example:22",))], Settings(), {}).commands
    host = json.dumps(_rules(commands, _profile(commands, "host")))
    assert '"right": 443' not in host, "an allow about an unresolved name matches nothing"
    deny = [r for r in _rules(commands, _profile(commands)) if '"right": 22' in json.dumps(r)]
    assert len(deny) == 1 and "daddr" not in json.dumps(deny[0]), "a deny about it matches every destination"


def test_resolved_names_become_one_rule_per_family() -> None:
    commands = compile_ruleset([guest(allow=("api.example.com:443",))], Settings(), NAMES).commands
    rules = [json.dumps(r) for r in _rules(commands, _profile(commands, "out")) if '"right": 443' in json.dumps(r)]
    assert len(rules) == 2 and "203.0.113.7" in rules[0] and "2001:db8::7" in rules[1]


def test_gateway_rules_without_a_gateway_are_refused() -> None:
    lacking = parse_guest(name="vm1", iface="vmtap-a", addresses=["192.0.2.2/30"],
                          policy=Policy.parse(allow=["tcp://@gateway:8080"]))  # fmt: skip
    with pytest.raises(PlanError, match=r"rule tcp://@gateway:8080 uses @gateway but the guest has no gateway"):
        compile_ruleset([lacking], Settings(), {})


def test_gateway_of_a_family_the_guest_lacks_is_refused() -> None:
    lacking = parse_guest(name="vm1", iface="vmtap-a", addresses=["192.0.2.2/30"], gateways=["2001:db8::1"])
    with pytest.raises(PlanError, match="gateway 2001:db8::1 is IPv6 but the guest has no IPv6 address"):
        compile_add(lacking, Settings(), {}, others=Others.of([]), replaces=None)


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (dict(name="vm2", iface="vmtap-vm1", addresses=["192.0.2.10/30"]), "interface vmtap-vm1 already belongs to guest vm1"),
        (dict(name="vm2", iface="vmtap-b", addresses=["192.0.2.6/30"]), "address 192.0.2.6 already belongs to guest vm1"),
    ],
)
def test_guests_may_not_share_interfaces_or_addresses(second: dict, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        compile_add(parse_guest(**second), Settings(), {}, others=Others.of([guest()]), replaces=None)


def test_pattern_can_be_turned_off() -> None:
    commands = compile_ruleset([], Settings(pattern=""), {}).commands
    assert "vmtap" not in json.dumps(commands)


def test_unspecified_source_is_dropped_for_everything_but_icmpv6() -> None:
    from guestfence.guests.antispoof import bridge_screen_rules

    prerouting = [json.dumps(r) for r in _rules(compile_ruleset([guest()], Settings(), {}).commands, "prerouting")]
    for rules in (prerouting, [json.dumps(r) for r in bridge_screen_rules()]):
        unspecified = [r for r in rules if '"right": "::"' in r]
        assert any('"l4proto"' in r and '"op": "!="' in r and "ipv6-icmp" in r for r in unspecified), "UDP/TCP from :: drop"
        assert any("@unspecified_source_icmpv6" in r for r in unspecified), "ICMPv6 from :: only for DAD and MLD"
    checks = [i for i, r in enumerate(prerouting) if '"right": "::"' in r and '"@drops"' in r]
    dispatch = [i for i, r in enumerate(prerouting) if '"right": "::"' in r and '"@guests"' in r]
    assert len(checks) == 2 and len(dispatch) == 1 and max(checks) < dispatch[0], "checked before it is dispatched"


def test_martian_destinations_are_dropped_before_new_connections_are_decided() -> None:
    commands = compile_ruleset([guest()], Settings(), {}).commands
    entry = [json.dumps(r) for r in _rules(commands, _profile(commands))]
    assert '"established"' in entry[0] and '"related"' not in entry[0], "established: past the source check, accepted"
    assert entry[1] == json.dumps([{"jump": {"target": "screen"}}]), "the shared checks before anything else"
    assert '"related"' in entry[2], "ICMP errors (redirects are errors) are screened first"
    screen = [json.dumps(r) for r in _rules(commands, "screen")]
    state = next(i for i, r in enumerate(screen) if '"invalid"' in r)
    martians = [i for i, r in enumerate(screen) if '"daddr"' in r and '"goto": {"target": "guest_drop"}' in r]
    assert len(martians) == 3 and max(martians) < state
    sets = {c["add"]["set"]["name"]: c["add"]["set"] for c in commands if "set" in c.get("add", {})}
    listed = " ".join(screen[i] for i in martians) + json.dumps(sets["martians6"]["elem"])
    assert all(net in listed for net in ('"0.0.0.0"', '"127.0.0.0"', '"::"', '"::1"', '"::ffff:0:0"'))
    assert sets["martians6"]["flags"] == ["interval"]


def test_the_nat_chain_exists_only_while_a_guest_masquerades() -> None:
    """A nat chain makes the kernel run NAT hooks for every packet on the host."""
    def nat_rules(commands: tuple[dict, ...]) -> int:
        return len(_rules(commands, "postrouting"))

    plain, masked = guest(), guest("vm2", 2, masquerade=True)
    assert nat_rules(compile_ruleset([plain], Settings(), {}).commands) == 0
    assert {"delete": {"chain": {"family": "inet", "table": TABLE, "name": "postrouting"}}} in compile_ruleset([plain], Settings(), {}).commands
    assert nat_rules(compile_ruleset([plain, masked], Settings(), {}).commands) == 2
    assert nat_rules(compile_add(plain, Settings(), {}, others=Others.of([masked]), replaces=None).commands) == 2
    removal = compile_remove(masked, Settings(), {}, others=[plain]).commands
    assert nat_rules(removal) == 0 and {"delete": {"chain": {"family": "inet", "table": TABLE, "name": "postrouting"}}} in removal


def test_a_guest_is_removed_with_the_profile_its_own_names_compiled_to() -> None:
    """Two guests resolved one name to different addresses (added at different
    times): each profile follows its guest's record, so removing one re-adds
    its elements (to delete them) with the verdicts they have; another
    verdict would make the kernel refuse the whole transaction."""
    first, second = guest("vm1", 1, allow=("api.example.com:443",)), guest("vm2", 2, allow=("api.example.com:443",))
    own = {id(first): NAMES, id(second): {"api.example.com": frozenset({ipaddress.ip_address("203.0.113.99")})}}

    def names_of(member: Guest) -> dict:
        return own[id(member)]

    def targets(commands: tuple[dict, ...], iface: str) -> set[str]:
        return {e[1]["goto"]["target"] for c in commands if c.get("add", {}).get("element", {}).get("name") == "dispatch4"
                for e in c["add"]["element"]["elem"] if e[0]["concat"][0] == iface}  # fmt: skip

    installed = compile_ruleset([first, second], Settings(), names_of).commands
    assert targets(installed, "vmtap-vm1") != targets(installed, "vmtap-vm2"), "control: two resolutions, two profiles"
    removal = compile_remove(first, Settings(), names_of, others=[second]).commands
    assert targets(removal, "vmtap-vm1") == targets(installed, "vmtap-vm1")


def test_the_dispatch_of_bridge_ports_exists_only_while_a_guest_is_one() -> None:
    """Its lookups would cost every packet of the host's own that reaches prerouting."""
    def bridged_lookups(commands: tuple[dict, ...]) -> int:
        return sum("@bridged" in json.dumps(r) for r in _rules(commands, "prerouting"))

    routed, port = guest(), guest("br1", 2, mac="02:00:00:00:00:02", bridge="br0")
    assert bridged_lookups(compile_ruleset([routed], Settings(), {}).commands) == 0
    assert bridged_lookups(compile_ruleset([routed, port], Settings(), {}).commands) == 7
    assert bridged_lookups(compile_add(port, Settings(), {}, others=Others.of([routed]), replaces=None).commands) == 7
    assert bridged_lookups(compile_remove(port, Settings(), {}, others=[routed]).commands) == 0
