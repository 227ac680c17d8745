"""``status --prometheus`` against a real ruleset with real packets.

The judge of the values is the kernel: each figure must cover the packets
the test sent (other link traffic may add to them, never take away), and
agree with nft's own counter read afterwards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.lab.netlab import Lab, sh
from tests.lab.guests_lab import Scene

pytestmark = pytest.mark.lab


@pytest.fixture
def scene(lab: Lab, tmp_path: Path) -> Iterator[Scene]:
    """name: scene; scope: function; depends on lab. A host namespace with listeners."""
    yield Scene(lab, tmp_path / "state")


def metrics(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def nft_counter(scene: Scene, family: str, counting: str, iface: str) -> tuple[int, int]:
    """The counter of ``iface``'s element of the counting set ``counting``."""
    listed = json.loads(sh("nft", "-j", "list", "set", family, "guestfence", counting, netns=scene.host).stdout)["nftables"]
    body = next(e["elem"]["counter"] for item in listed if "set" in item for e in item["set"]["elem"] if e["elem"]["val"] == iface)
    return int(body["packets"]), int(body["bytes"])


def test_counters_follow_the_packets_and_drift_shows(scene: Scene, tmp_path: Path) -> None:
    link = scene.add_guest("m1", 1)
    scene.register(link, "--net-allow", "tcp://@gateway:8080")
    scene.gf("lockdown", "add", "gfnone*")
    denied = [f"udp://{link.gateway4}:53", f"tcp://{link.gateway4}:22", "tcp://198.51.100.7:5432"]
    assert scene.reachable(link.netns, denied + [f"tcp://{link.gateway4}:8080"]) == {f"tcp://{link.gateway4}:8080"}

    done = scene.gf("status", "--prometheus")
    assert done.returncode == 0, done.stderr
    values = metrics(done.stdout)
    labels = (("guest", "m1"), ("iface", link.iface))
    dropped_packets = values["guestfence_guest_dropped_packets_total"][labels]
    assert dropped_packets >= len(denied), "every denied probe was dropped and counted"
    assert values["guestfence_guest_dropped_bytes_total"][labels] >= 28 * len(denied)
    assert values["guestfence_guest_accepted_packets_total"][labels] >= 1
    late_packets, _ = nft_counter(scene, "inet", "dropped", link.iface)
    assert dropped_packets <= late_packets, "never more than the kernel counted"
    assert values["guestfence_guest_rules"][labels] > 0
    assert values["guestfence_drift"][()] == 0
    assert values["guestfence_lockdown_rule_in_force"][(("hook", "inet prerouting"), ("pattern", "gfnone*"))] == 1

    textfile = tmp_path / "node-exporter" / "guestfence.prom"
    textfile.parent.mkdir()
    listed = json.loads(sh("nft", "-j", "list", "map", "inet", "guestfence", "guests", netns=scene.host).stdout)["nftables"]
    (profile,) = {e[1]["goto"]["target"] for item in listed if "map" in item for e in item["map"]["elem"]}
    sh("nft", "flush", "chain", "inet", "guestfence", profile, netns=scene.host)
    done = scene.gf("status", "--prometheus-textfile", str(textfile), check=False)
    assert done.returncode == 1, "drift: the exit status says so too"
    assert os.listdir(textfile.parent) == ["guestfence.prom"], "written atomically: no temporary left"
    assert oct(textfile.stat().st_mode & 0o777) == "0o644"
    values = metrics(textfile.read_text())
    assert values["guestfence_guest_drift"][labels] >= 1 and values["guestfence_drift"][()] >= 1
