"""The Prometheus renderer, read back by prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from guestfence.prometheus import GuestMetrics, LockdownMetrics, Metrics, render

METRICS = Metrics(
    guests=[
        GuestMetrics(name="vm1", iface="vmtap-a", rules=12, accepted_packets=5, accepted_bytes=300,
                     dropped_packets=7, dropped_bytes=420, drift=0),
        GuestMetrics(name='we"ird\\', iface="vmtap-b", rules=9, accepted_packets=None, accepted_bytes=None,
                     dropped_packets=None, dropped_bytes=None, drift=2),
    ],  # fmt: skip
    lockdown=[LockdownMetrics(pattern="vlan*", hook="inet prerouting", in_force=True, dropped_packets=3, dropped_bytes=180)],
    drift=1,
)


def parsed(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_every_family_has_help_and_type_and_counters_end_in_total() -> None:
    text = render(METRICS)
    families = list(text_string_to_metric_families(text))
    assert families and all(f.name.startswith("guestfence_") and f.documentation for f in families)
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind in ("counter", "gauge") and (kind == "counter") == name.endswith("_total"), line


def test_values_and_labels_survive_the_reference_parser() -> None:
    values = parsed(render(METRICS))
    vm1 = (("guest", "vm1"), ("iface", "vmtap-a"))
    assert values["guestfence_guest_accepted_packets_total"] == {vm1: 5}, "a missing counter has no sample"
    assert values["guestfence_guest_dropped_bytes_total"][vm1] == 420
    assert values["guestfence_guest_rules"][vm1] == 12
    assert values["guestfence_guest_drift"][(("guest", 'we"ird\\'), ("iface", "vmtap-b"))] == 2
    assert values["guestfence_drift"][()] == 3
    assert values["guestfence_guests"][()] == 2
    rule = (("hook", "inet prerouting"), ("pattern", "vlan*"))
    assert values["guestfence_lockdown_dropped_packets_total"][rule] == 3
    assert values["guestfence_lockdown_rule_in_force"][rule] == 1
    assert METRICS.drifted and not Metrics().drifted


def test_nothing_registered_is_still_a_valid_exposition() -> None:
    values = parsed(render(Metrics()))
    assert values["guestfence_guests"][()] == 0 and values["guestfence_drift"][()] == 0
