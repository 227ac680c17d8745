"""``guestfence audit`` against the VM guests ruleset (``guestfence guest add``):
the audit reports exactly what the ruleset lets through, flags what the
compared policy denies, and exits accordingly."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab.audit_scene import (
    GUEST_LOCAL,
    GUESTFENCE,
    REACHABLE_WITHOUT_RULES,
    UDP_SILENT,
    build_scene,
    grouped,
)
from tests.lab.netlab import Lab, sh

pytestmark = pytest.mark.lab

ALLOWED = {"tcp://192.0.2.1:8080", "udp://192.0.2.1:7"}


def test_audit_reports_exactly_what_the_guest_ruleset_lets_through(lab: Lab, tmp_path: Path) -> None:
    scene = build_scene(lab)
    state = str(tmp_path / "state")
    sh(
        GUESTFENCE, "guest", "add", "vm1", "--state-dir", state, "--iface", "h0",
        "--address", "192.0.2.2/24", "--address", "2001:db8::2/64",
        "--gateway", "192.0.2.1", "--gateway", "2001:db8::1",
        "--net-allow", "tcp://@gateway:8080", "--net-allow", "udp://@gateway:7",
        netns=scene.host,
    )  # fmt: skip
    guest = ("--guest", "vm1", "--state-dir", state, "--udp", "--timeout", "1")

    code, report = scene.audit_json(*guest)
    probes = grouped(report, "probe")
    assert probes["reachable"] == ALLOWED
    assert probes["filtered"] == {s for s in REACHABLE_WITHOUT_RULES - ALLOWED if s.startswith("tcp")}
    assert probes["dropped"] == UDP_SILENT | {"udp://198.51.100.1:7"}
    assert probes["guest's own address"] == GUEST_LOCAL
    assert report["policy"]["allow"] == ["tcp://@gateway:8080", "udp://@gateway:7"]
    assert report["gateways"] == ["192.0.2.1", "2001:db8::1"]
    assert "violation" not in grouped(report, "verdict")
    assert code == 0

    stricter, report = scene.audit_json(*guest, "--net-allow", "udp://@gateway:7")
    assert grouped(report, "verdict")["violation"] == {"tcp://192.0.2.1:8080"}
    assert stricter == 1

    looser, report = scene.audit_json(*guest, "--net-allow", "tcp://@gateway:*", "--net-allow", "udp://@gateway:7")
    missing = grouped(report, "verdict")["allowed but unreachable"]
    assert missing == {"tcp://192.0.2.1:2222", "tcp://192.0.2.1:9000", "tcp://[2001:db8::1]:2222",
                       "tcp://[2001:db8::1]:9443"}  # fmt: skip
    assert looser == 0


def test_the_same_scene_without_the_ruleset_leaks(lab: Lab) -> None:
    scene = build_scene(lab)
    code, report = scene.audit_json("--net-allow", "tcp://@gateway:8080", "--net-allow", "udp://@gateway:7", "--udp")
    assert grouped(report, "verdict")["violation"] == REACHABLE_WITHOUT_RULES - ALLOWED
    assert code == 1


def test_an_unknown_guest_is_bad_input(lab: Lab, tmp_path: Path) -> None:
    scene = build_scene(lab)
    done = scene.audit("--guest", "nobody", "--state-dir", str(tmp_path))
    assert done.returncode == 2
    assert "no registered guest 'nobody' (registered: none)" in done.stderr
