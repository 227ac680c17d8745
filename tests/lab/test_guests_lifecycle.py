"""The ruleset over a guest's life: add, remove, flush, restore, apply FILE,
failed transactions and names crafted to inject rules. Every command runs
as ``ip netns exec HOST guestfence ...`` on that namespace's ruleset."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.netlab import Lab, sh
from tests.lab.guests_lab import Scene

pytestmark = pytest.mark.lab

OTHER_TABLES = """\
table inet other {
    chain input {
        type filter hook input priority 10; policy accept;
        tcp dport 9 counter accept
    }
}
table ip filter {
    chain forward {
        type filter hook forward priority 0; policy accept;
    }
}
"""


@pytest.fixture
def scene(lab: Lab, tmp_path: Path) -> Iterator[Scene]:
    """name: scene; scope: function; depends on lab. A host namespace with listeners."""
    yield Scene(lab, tmp_path / "state")


def test_guest_remove_leaves_no_trace(scene: Scene) -> None:
    stays, goes = scene.add_guest("g1", 1), scene.add_guest("g2", 2, kind="tap")
    scene.register(stays, "--net-allow", "tcp://@gateway:8080")
    before = scene.ruleset()
    scene.register(goes, "--net-allow", "tcp://@gateway:8080", "--net-allow", "udp://*:53", extra=("--masquerade",))
    assert scene.ruleset() != before
    scene.gf("guest", "remove", "g2")
    assert scene.ruleset() == before
    assert "g2" not in json.dumps(scene.ruleset())


def test_flush_removes_our_tables_and_leaves_the_others_alone(scene: Scene) -> None:
    sh("nft", "-f", "-", netns=scene.host, input=OTHER_TABLES)
    others = scene.other_tables()
    scene.register(scene.add_guest("g1", 1), "--net-allow", "tcp://@gateway:8080")
    scene.gf("flush")
    assert scene.ruleset() == []
    assert scene.other_tables() == others


def test_restore_after_flush_reproduces_the_same_ruleset(scene: Scene) -> None:
    first, second = scene.add_guest("g1", 1), scene.add_guest("g2", 2, kind="tap")
    scene.register(first, "--net-allow", "tcp://@gateway:8080", "--net-deny", "tcp://*:22")
    scene.register(second, "--net-allow", "udp://@gateway:53", extra=("--mac", second.mac, "--masquerade"))
    applied = scene.ruleset()
    scene.gf("flush")
    status = scene.gf("status", check=False)
    assert status.returncode == 1 and "missing" in status.stdout
    scene.gf("restore")
    assert scene.ruleset() == applied
    assert scene.gf("status").returncode == 0
    assert scene.reachable(first.netns, [f"tcp://{first.gateway4}:8080", f"tcp://{first.gateway4}:22"]) == {
        f"tcp://{first.gateway4}:8080"
    }


def test_failed_transaction_leaves_ruleset_and_record_as_they_were(scene: Scene) -> None:
    first, second = scene.add_guest("g1", 1), scene.add_guest("g2", 2)
    scene.register(first, "--net-allow", "tcp://@gateway:8080")
    # Someone else put an entry for g2's interface into our map: the kernel
    # refuses our element in the middle of the batch.
    sh("nft", "add", "element", "inet", "guestfence", "guests", f'{{ "{second.iface}" : goto unregistered }}', netns=scene.host)
    ruleset, record = scene.ruleset(), (scene.state_dir / "state.json").read_text()
    failed = scene.gf("guest", "add", "g2", "--iface", second.iface, "--address", f"{second.address4}/30", "--address",
                      f"{second.address6}/64", "--gateway", second.gateway4, "--gateway", second.gateway6, check=False)  # fmt: skip
    assert failed.returncode == 4 and "add guest g2 failed" in failed.stderr and "Traceback" not in failed.stderr
    assert scene.ruleset() == ruleset
    assert (scene.state_dir / "state.json").read_text() == record


def test_apply_file_keeps_unnamed_guests_and_with_prune_removes_them(scene: Scene, tmp_path: Path) -> None:
    first, second, third = scene.add_guest("g1", 1), scene.add_guest("g2", 2), scene.add_guest("g3", 3)
    scene.register(first, "--net-allow", "tcp://@gateway:8080")
    scene.register(second, "--net-allow", "tcp://@gateway:8080")
    config = tmp_path / "guests.toml"
    config.write_text(f"""
[policy.ssh]
allow = ["tcp://@gateway:22"]

[[guest]]
name = "g2"
iface = "{second.iface}"
address = "{second.address4}/30"
gateway = "{second.gateway4}"
policy = "ssh"

[[guest]]
name = "g3"
iface = "{third.iface}"
address = ["{third.address4}/30"]
gateway = ["{third.gateway4}"]
net_allow = ["tcp://@gateway:8080"]
""")
    kept = scene.gf("apply", str(config))
    assert "guests: keep guest g1 (not in the file; --prune removes it)" in kept.stdout
    assert "guests: change guest g2" in kept.stdout and "guests: add guest g3 on" in kept.stdout
    names = [g["name"] for g in json.loads(scene.gf("guest", "list", "--json").stdout)["guests"]]
    assert names == ["g1", "g2", "g3"]
    assert scene.reachable(first.netns, [f"tcp://{first.gateway4}:8080"]) == {f"tcp://{first.gateway4}:8080"}
    dry = scene.gf("apply", "--prune", "--dry-run", str(config))
    assert dry.stdout.splitlines()[0] == "would remove guest g1"
    assert [g["name"] for g in json.loads(scene.gf("guest", "list", "--json").stdout)["guests"]] == ["g1", "g2", "g3"]
    scene.gf("apply", "--prune", str(config))
    names = [g["name"] for g in json.loads(scene.gf("guest", "list", "--json").stdout)["guests"]]
    assert names == ["g2", "g3"]
    assert scene.reachable(second.netns, [f"tcp://{second.gateway4}:22", f"tcp://{second.gateway4}:8080"]) == {
        f"tcp://{second.gateway4}:22"
    }
    assert scene.reachable(third.netns, [f"tcp://{third.gateway4}:8080"]) == {f"tcp://{third.gateway4}:8080"}
    assert scene.reachable(first.netns, [f"tcp://{first.gateway4}:8080"]) == set(), "g1 is gone, its vmtap is unregistered"


def test_names_crafted_to_inject_rules_stay_data(scene: Scene) -> None:
    sh("nft", "-f", "-", netns=scene.host, input=OTHER_TABLES)
    others = scene.other_tables()
    link = scene.add_guest("g1", 1)
    for name in ('x" ; flush ruleset', "a.b", "vm1}", "@guests"):
        refused = scene.gf("guest", "add", name, "--iface", link.iface, "--address", f"{link.address4}/30", check=False)
        assert refused.returncode == 2 and "invalid guest name" in refused.stderr
    for iface in ("@guests", "vmtap*", 'x";flush'):
        refused = scene.gf("guest", "add", "g1", "--iface", iface, "--address", f"{link.address4}/30", check=False)
        assert refused.returncode == 2 and "invalid interface name" in refused.stderr
    assert scene.ruleset() == []
    crafted = '"; flush ruleset; add table ip evil { chain c { type filter hook input priority 0; policy drop; } }'
    refused = scene.gf("guest", "add", "g1", "--iface", link.iface, "--address", f"{link.address4}/30",
                       "--comment", crafted, check=False)  # fmt: skip
    assert refused.returncode == 2 and "invalid comment" in refused.stderr and scene.ruleset() == []
    comment = "; flush ruleset; add table ip evil { chain c { } } \\\\ é"
    scene.register(link, "--net-allow", "tcp://@gateway:8080", extra=("--comment", comment))
    assert scene.other_tables() == others
    listed = sh("nft", "-j", "list", "ruleset", netns=scene.host).stdout
    # The comment is the guest's element of the dispatch map by interface (a guest has no rule of its own).
    comments = [e[0]["elem"].get("comment") for item in json.loads(listed)["nftables"]
                if item.get("map", {}).get("name") == "guests" and item["map"]["family"] == "inet"
                for e in item["map"].get("elem", []) if isinstance(e[0], dict) and "elem" in e[0]]  # fmt: skip
    assert comments == [f"guest g1: {comment}"]
    # What nft lists loads back as it was: no table injected, the comment whole.
    saved, ours = sh("nft", "list", "ruleset", netns=scene.host).stdout, scene.ruleset()
    sh("nft", "flush", "ruleset", netns=scene.host)
    sh("nft", "-f", "-", netns=scene.host, input=saved)
    assert scene.ruleset() == ours and scene.other_tables() == others
    assert scene.reachable(link.netns, [f"tcp://{link.gateway4}:8080"]) == {f"tcp://{link.gateway4}:8080"}
