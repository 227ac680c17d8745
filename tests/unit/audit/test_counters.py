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


def test_counting_elements_of_a_set_a_drop_rule_looks_up_are_summed() -> None:
    def counting(name: str, *packets: int) -> dict:
        return {"set": {"family": "inet", "table": "guestfence", "name": name, "type": "ifname", "stmt": [{"counter": None}],
                        "elem": [{"elem": {"val": f"vmtap-{i}", "counter": {"packets": p, "bytes": 9}}} for i, p in enumerate(packets)]}}

    def lookup(name: str) -> dict:
        return {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": f"@{name}"}}

    items = [counting("dropped", 4, 6), counting("accepted", 50), rule(lookup("dropped"), {"drop": None}),
             rule(lookup("accepted"), {"accept": None})]  # fmt: skip
    assert sum_drop_counters(items) == 10
