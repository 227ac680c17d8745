"""compare: what the probe saw against what the policy says."""

from __future__ import annotations

import pytest

from guestfence.audit.compare import violations
from guestfence.audit.model import Status, Verdict
from tests.unit.audit.helpers import findings, observed


@pytest.mark.parametrize(
    ("status", "allow", "verdict"),
    [
        (Status.REACHABLE, (), Verdict.VIOLATION),
        (Status.REACHABLE, ("tcp://@gateway:22",), Verdict.ALLOWED),
        (Status.REFUSED, (), Verdict.BLOCKED),
        (Status.FILTERED, (), Verdict.BLOCKED),
        (Status.UNREACHABLE, (), Verdict.BLOCKED),
        (Status.GUEST_LOCAL, (), Verdict.BLOCKED),
        (Status.FILTERED, ("tcp://@gateway:22",), Verdict.MISSING),
        (Status.GUEST_LOCAL, ("tcp://@host:*",), Verdict.MISSING),
    ],
)
def test_tcp_verdicts(status: Status, allow: tuple[str, ...], verdict: Verdict) -> None:
    (finding,) = findings([observed("tcp://192.0.2.1:22", status)], allow=allow)
    assert finding.verdict is verdict


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (Status.REACHABLE, Verdict.VIOLATION),
        (Status.REFUSED, Verdict.BLOCKED),
        (Status.DROPPED, Verdict.BLOCKED),
        (Status.NO_ANSWER, Verdict.UNKNOWN),
    ],
)
def test_udp_silence_is_unknown_unless_a_drop_was_counted(status: Status, verdict: Verdict) -> None:
    (finding,) = findings([observed("udp://192.0.2.1:53", status)])
    assert finding.verdict is verdict


def test_a_udp_silence_the_policy_allows_is_unknown_too() -> None:
    (finding,) = findings([observed("udp://192.0.2.1:53", Status.NO_ANSWER)], allow=("udp://@host:53",))
    assert finding.verdict is Verdict.UNKNOWN


def test_host_means_every_address_found_and_gateway_the_guests_gateway() -> None:
    seen = [observed(s, Status.REACHABLE) for s in ("tcp://192.0.2.1:80", "tcp://198.51.100.1:80", "tcp://[2001:db8::1]:80")]
    assert [f.verdict for f in findings(seen, allow=("tcp://@gateway:80",))] == [
        Verdict.ALLOWED, Verdict.VIOLATION, Verdict.VIOLATION,
    ]  # fmt: skip
    assert {f.verdict for f in findings(seen, allow=("tcp://@host:80",))} == {Verdict.ALLOWED}


def test_deny_beats_allow_and_names_the_rule() -> None:
    (finding,) = findings(
        [observed("tcp://198.51.100.1:5432", Status.REACHABLE)], allow=("tcp://@host:*",), deny=("tcp://198.51.100.1:5432",)
    )
    assert finding.verdict is Verdict.VIOLATION
    assert finding.decision.decided_by == "deny tcp://198.51.100.1:5432"


def test_a_udp_rule_does_not_allow_tcp() -> None:
    (finding,) = findings([observed("tcp://192.0.2.1:53", Status.REACHABLE)], allow=("udp://@host:53",))
    assert finding.verdict is Verdict.VIOLATION


def test_violations_are_only_reachable_denied_services() -> None:
    result = findings([
        observed("tcp://192.0.2.1:22", Status.REACHABLE),
        observed("tcp://192.0.2.1:80", Status.REACHABLE),
        observed("udp://192.0.2.1:53", Status.NO_ANSWER),
        observed("tcp://192.0.2.1:443", Status.FILTERED),
    ], allow=("tcp://@host:80,443",))  # fmt: skip
    assert [str(f.target) for f in violations(result)] == ["tcp://192.0.2.1:22"]
