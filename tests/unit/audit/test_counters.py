"""sum_drop_counters: packets counted by drop rules, anonymous or named counters."""

from __future__ import annotations

from guestfence.audit.counters import sum_drop_counters


def rule(*expr: dict) -> dict:
    return {"rule": {"family": "inet", "table": "guestfence", "chain": "c", "expr": list(expr)}}


def test_counts_only_counters_on_drop_rules() -> None:
    items = [
        {"table": {"family": "inet", "name": "guestfence"}},
        rule({"counter": {"packets": 5, "bytes": 300}}, {"drop": None}),
        rule({"counter": {"packets": 7, "bytes": 400}}, {"accept": None}),
        rule({"counter": {"packets": 2, "bytes": 100}}, {"reject": None}),
        rule({"counter": {"packets": 3, "bytes": 100}}, {"drop": None}),
    ]
    assert sum_drop_counters(items) == 8


def test_named_counters_are_looked_up() -> None:
    items = [
        {"counter": {"family": "inet", "table": "guestfence", "name": "guest_drops", "packets": 11, "bytes": 9}},
        rule({"counter": "guest_drops"}, {"drop": None}),
        rule({"counter": "unknown"}, {"drop": None}),
    ]
    assert sum_drop_counters(items) == 11


def test_a_drop_rule_without_a_counter_counts_nothing() -> None:
    assert sum_drop_counters([rule({"drop": None})]) == 0


def test_counters_named_through_a_map_are_summed() -> None:
    items = [
        {"counter": {"family": "inet", "table": "guestfence", "name": "guest.a.dropped", "packets": 4, "bytes": 9}},
        {"counter": {"family": "inet", "table": "guestfence", "name": "guest.b.dropped", "packets": 6, "bytes": 9}},
        {"counter": {"family": "inet", "table": "guestfence", "name": "guest.a.accepted", "packets": 50, "bytes": 9}},
        {"map": {"family": "inet", "table": "guestfence", "name": "dropped", "map": "counter",
                 "elem": [["vmtap-a", "guest.a.dropped"], ["vmtap-b", "guest.b.dropped"]]}},
        {"map": {"family": "inet", "table": "guestfence", "name": "accepted", "map": "counter",
                 "elem": [["vmtap-a", "guest.a.accepted"]]}},
        rule({"counter": {"map": {"key": {"meta": {"key": "iifname"}}, "data": "@dropped"}}}, {"drop": None}),
        rule({"counter": {"map": {"key": {"meta": {"key": "iifname"}}, "data": "@accepted"}}}, {"accept": None}),
    ]
    assert sum_drop_counters(items) == 10
