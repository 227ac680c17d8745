"""``guestfence audit --netns``: real listeners in a host namespace, probed from
a guest namespace over a veth, with and without nftables rules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.lab.audit_scene import GUEST_LOCAL, REACHABLE_WITHOUT_RULES, UDP_SILENT, Scene, build_scene, grouped
from tests.lab.netlab import Lab

pytestmark = pytest.mark.lab


@pytest.fixture
def scene(lab: Lab) -> Iterator[Scene]:
    yield build_scene(lab)


def test_without_rules_every_reachable_service_is_a_violation(scene: Scene) -> None:
    code, report = scene.audit_json("--udp")
    probes = grouped(report, "probe")
    assert probes["reachable"] == REACHABLE_WITHOUT_RULES
    assert probes["guest's own address"] == GUEST_LOCAL
    assert probes["no answer (open|filtered)"] == UDP_SILENT
    assert set(probes) == {"reachable", "guest's own address", "no answer (open|filtered)"}
    assert grouped(report, "verdict")["violation"] == REACHABLE_WITHOUT_RULES
    assert code == 1 and report["violations"] == len(REACHABLE_WITHOUT_RULES)
    services = scene.lab.processes[0].pid
    owners = {o["pid"] for f in report["findings"] for o in f["owners"]}
    assert owners == {services}
    assert report["gateways"] == ["192.0.2.1", "2001:db8::1"]


def test_without_udp_only_tcp_is_probed(scene: Scene) -> None:
    code, report = scene.audit_json()
    assert {f["proto"] for f in report["findings"]} == {"tcp"}
    assert grouped(report, "probe")["reachable"] == {s for s in REACHABLE_WITHOUT_RULES if s.startswith("tcp")}
    assert code == 1


def test_policy_names_violations_and_allowed_services_out_of_reach(scene: Scene) -> None:
    code, report = scene.audit_json(
        "--udp",
        "--net-allow", "tcp://@gateway:8080", "--net-allow", "udp://@host:7",
        "--net-allow", "tcp://@host:5432", "--net-deny", "tcp://198.51.100.1:*",
    )  # fmt: skip
    verdicts = grouped(report, "verdict")
    allowed = {"tcp://192.0.2.1:8080", "udp://192.0.2.1:7", "udp://198.51.100.1:7"}
    assert verdicts["allowed"] == allowed
    assert verdicts["violation"] == REACHABLE_WITHOUT_RULES - allowed
    assert verdicts["allowed but unreachable"] == {"tcp://127.0.0.1:5432", "udp://127.0.0.1:7"}
    assert verdicts["unknown"] == UDP_SILENT
    decided = {f["service"]: f["decided_by"] for f in report["findings"]}
    assert decided["tcp://198.51.100.1:8080"] == "deny tcp://198.51.100.1:*"
    assert code == 1


def test_policy_that_allows_everything_reachable_exits_0(scene: Scene) -> None:
    done = scene.audit("--udp", "--net-allow", "tcp://@host:*", "--net-allow", "udp://@host:7")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "violation" not in done.stdout
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["VERDICT", "SERVICE", "OWNER", "PROBE", "POLICY", "WHY"]
    assert lines[-1].endswith(
        f"18 services probed: allowed but unreachable: {len(GUEST_LOCAL) - 1}, unknown: 2, allowed: 10, blocked: 1"
    )


def test_drop_and_reject_rules_show_as_filtered_dropped_refused_unreachable(scene: Scene) -> None:
    table = {"family": "inet", "table": "guestfence"}

    def rule(proto: str, port: int, verdict: dict) -> dict:
        return {"add": {"rule": {**table, "chain": "input", "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "h0"}},
            {"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "dport"}}, "right": port}},
            {"counter": {"packets": 0, "bytes": 0}},
            verdict,
        ]}}}  # fmt: skip

    scene.apply_nft([
        {"add": {"table": {"family": "inet", "name": "guestfence"}}},
        {"add": {"chain": {**table, "name": "input", "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}}},
        rule("tcp", 2222, {"drop": None}),
        rule("udp", 5353, {"drop": None}),
        rule("tcp", 9000, {"reject": {"type": "tcp reset"}}),
        rule("tcp", 9443, {"reject": {"type": "icmpx", "expr": "admin-prohibited"}}),
    ])  # fmt: skip
    code, report = scene.audit_json("--udp", "--timeout", "2.5")  # an IPv6 reject answers the SYN retransmit, at 1 s
    probes = grouped(report, "probe")
    assert probes["filtered"] == {s for s in REACHABLE_WITHOUT_RULES if s.endswith(":2222")}
    assert probes["dropped"] == UDP_SILENT
    assert probes["refused"] == {"tcp://192.0.2.1:9000"}
    assert probes["unreachable"] == {"tcp://[2001:db8::1]:9443"}
    assert probes["reachable"] == {
        "tcp://192.0.2.1:8080", "tcp://198.51.100.1:8080", "udp://192.0.2.1:7", "udp://198.51.100.1:7",
    }  # fmt: skip
    assert code == 1
    allowed = scene.audit("--net-allow", "tcp://@host:8080", "--timeout", "1")
    assert allowed.returncode == 0, allowed.stdout


def test_probes_go_only_to_host_addresses(scene: Scene) -> None:
    host_v4 = {"set": ["192.0.2.1", "198.51.100.1", "127.0.0.1"]}
    host_v6 = {"set": ["2001:db8::1", "fe80::1", "::1"]}
    table = {"family": "inet", "table": "audit_watch"}

    def count(match: dict) -> dict:
        return {"add": {"rule": {**table, "chain": "out", "expr": [match, {"counter": {"packets": 0, "bytes": 0}}]}}}

    scene.apply_nft([
        {"add": {"table": {"family": "inet", "name": "audit_watch"}}},
        {"add": {"chain": {**table, "name": "out", "type": "filter", "hook": "output", "prio": 0, "policy": "accept"}}},
        count({"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": host_v4}}),
        count({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": host_v4}}),
        {"add": {"rule": {**table, "chain": "out", "expr": [
            {"match": {"op": "!=", "left": {"meta": {"key": "l4proto"}}, "right": "ipv6-icmp"}},
            {"match": {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": host_v6}},
            {"counter": {"packets": 0, "bytes": 0}},
        ]}}},
    ], netns=scene.guest)  # fmt: skip
    scene.audit("--udp", "--timeout", "1")
    elsewhere_v4, to_host_v4, elsewhere_v6 = scene.counters(scene.guest, "audit_watch")
    assert to_host_v4 > 0
    assert elsewhere_v4 == 0 and elsewhere_v6 == 0


def test_unknown_namespace_is_reported_without_traceback(scene: Scene) -> None:
    done = scene.audit("--netns", "gf-no-such-ns")
    assert done.returncode == 3
    assert "network namespace 'gf-no-such-ns' not found" in done.stderr
    assert "Traceback" not in done.stderr
