"""Prometheus text exposition (format 0.0.4) of guestfence's metrics. Pure.

``render`` takes plain data (``Metrics``; guestfence.metrics collects it)
and returns the text ``status --prometheus`` prints and node-exporter's
textfile collector reads. Every family has HELP and TYPE lines; counters
end in ``_total``; all names start with ``guestfence_``. A counter the
kernel does not have (its chain is missing) has no sample: that shows as
drift, not as a reset to zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import final


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class GuestMetrics:
    name: str
    iface: str
    rules: int
    accepted_packets: int | None
    accepted_bytes: int | None
    dropped_packets: int | None
    dropped_bytes: int | None
    drift: int
    """How many ways the guest's live rules differ from the record."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class LockdownMetrics:
    pattern: str
    hook: str
    in_force: bool
    dropped_packets: int
    dropped_bytes: int


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class Metrics:
    guests: Sequence[GuestMetrics] = ()
    lockdown: Sequence[LockdownMetrics] = ()
    drift: int = 0
    """Drift no guest owns (a missing table, a stray guest)."""

    @property
    def drifted(self) -> bool:
        return bool(self.drift) or any(g.drift for g in self.guests)


Sample = tuple[dict[str, str], int | float]

_FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("guestfence_guests", "gauge", "Guests registered with the nftables firewall."),
    ("guestfence_guest_rules", "gauge", "Rules in force for the guest, as recorded."),
    ("guestfence_guest_accepted_packets_total", "counter", "Packets from the guest accepted by its policy."),
    ("guestfence_guest_accepted_bytes_total", "counter", "Bytes from the guest accepted by its policy."),
    ("guestfence_guest_dropped_packets_total", "counter", "Packets from the guest dropped (policy, anti-spoofing, L2)."),
    ("guestfence_guest_dropped_bytes_total", "counter", "Bytes from the guest dropped (policy, anti-spoofing, L2)."),
    ("guestfence_guest_drift", "gauge", "Differences between the guest's live rules and the record (0: none)."),
    ("guestfence_drift", "gauge", "Differences between the live ruleset and the record, guests' and others (0: none)."),
    ("guestfence_lockdown_rule_in_force", "gauge", "1 if the lockdown rule of the pattern and hook is in the kernel."),
    ("guestfence_lockdown_dropped_packets_total", "counter", "Packets a lockdown rule kept from the host's stack."),
    ("guestfence_lockdown_dropped_bytes_total", "counter", "Bytes a lockdown rule kept from the host's stack."),
)


def samples(metrics: Metrics) -> dict[str, list[Sample]]:
    """Each family's samples (labels, value), in output order."""
    out: dict[str, list[Sample]] = {name: [] for name, _, _ in _FAMILIES}
    out["guestfence_guests"].append(({}, len(metrics.guests)))
    for g in metrics.guests:
        labels = {"guest": g.name, "iface": g.iface}
        out["guestfence_guest_rules"].append((labels, g.rules))
        for family, value in (
            ("guestfence_guest_accepted_packets_total", g.accepted_packets),
            ("guestfence_guest_accepted_bytes_total", g.accepted_bytes),
            ("guestfence_guest_dropped_packets_total", g.dropped_packets),
            ("guestfence_guest_dropped_bytes_total", g.dropped_bytes),
        ):
            if value is not None:
                out[family].append((labels, value))
        out["guestfence_guest_drift"].append((labels, g.drift))
    out["guestfence_drift"].append(({}, metrics.drift + sum(g.drift for g in metrics.guests)))
    for rule in metrics.lockdown:
        labels = {"pattern": rule.pattern, "hook": rule.hook}
        out["guestfence_lockdown_rule_in_force"].append((labels, int(rule.in_force)))
        out["guestfence_lockdown_dropped_packets_total"].append((labels, rule.dropped_packets))
        out["guestfence_lockdown_dropped_bytes_total"].append((labels, rule.dropped_bytes))
    return out


def render(metrics: Metrics) -> str:
    lines = []
    by_family = samples(metrics)
    for name, kind, help_text in _FAMILIES:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in by_family[name]:
            shown = ",".join(f'{key}="{_escape(text)}"' for key, text in labels.items())
            lines.append(f"{name}{{{shown}}} {value}" if shown else f"{name} {value}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
