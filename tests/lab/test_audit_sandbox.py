"""``guestfence audit --sandbox``: the probes run as a child of the seccomp
sandbox, in the host's own namespace, so loopback services are real targets."""

from __future__ import annotations

import json

import pytest

from tests.lab.audit_scene import GUESTFENCE, GUEST_LOCAL, REACHABLE_WITHOUT_RULES, UDP_SILENT, build_scene, grouped
from tests.lab.netlab import Lab, sh

pytestmark = pytest.mark.lab

POLICY = ("--net-allow", "tcp://@host:8080", "--net-allow", "tcp://127.0.0.1:5432", "--net-allow", "udp://192.0.2.1:7")
ALLOWED = {
    "tcp://127.0.0.1:8080", "tcp://192.0.2.1:8080", "tcp://198.51.100.1:8080", "tcp://127.0.0.1:5432",
    "udp://192.0.2.1:7",
}  # fmt: skip
EVERY_SERVICE = REACHABLE_WITHOUT_RULES | GUEST_LOCAL | UDP_SILENT


def test_sandboxed_probes_reach_exactly_what_the_policy_allows(lab: Lab) -> None:
    scene = build_scene(lab)
    done = sh(GUESTFENCE, "audit", "--sandbox", "--udp", "--json", *POLICY, netns=scene.host, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["guest"] == "sandbox"
    probes = grouped(report, "probe")
    assert probes["reachable"] == ALLOWED
    assert probes["refused"] == EVERY_SERVICE - ALLOWED
    details = {f["service"]: f["detail"] for f in report["findings"]}
    assert details["tcp://127.0.0.1:2222"] == "refused by the sandbox (default deny)"
    assert grouped(report, "verdict") == {"allowed": ALLOWED, "blocked": EVERY_SERVICE - ALLOWED}


def test_without_the_sandbox_the_same_probes_reach_everything(lab: Lab) -> None:
    scene = build_scene(lab)
    code, report = scene.audit_json("--netns", scene.host, "--udp", *POLICY)
    probes = grouped(report, "probe")
    assert probes["reachable"] == (REACHABLE_WITHOUT_RULES | GUEST_LOCAL) - {"udp://127.0.0.1:5353"}
    assert "tcp://127.0.0.1:2222" in grouped(report, "verdict")["violation"]
    assert code == 1
