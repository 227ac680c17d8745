"""The CNI plugin in a real chain: Debian's bridge + host-local, then guestfence.

The container namespace gets its veth, address and default route from the
real plugins; the judge of what it reaches is the host namespace's
listeners. Without guestfence in the chain it reaches every host service
(the control); with it, only the allowed gateway port. DEL must leave the
ruleset and the record exactly as they were before ADD.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.cni_lab import DEBIAN_CNI_DIR, Chain, PluginFailed, plugin_dir
from tests.lab.netlab import Lab, sh, unique
from tests.lab.guests_lab import SERVICE_TCP, SERVICE_UDP, Scene

pytestmark = pytest.mark.lab

GATEWAY = "203.0.113.1"
POLICY = {"default": "deny", "allow": ["tcp://@gateway:8080"], "deny": []}


@pytest.fixture
def scene(lab: Lab, tmp_path: Path) -> Iterator[Scene]:
    """name: scene; scope: function; depends on lab. A host namespace with listeners."""
    if not (DEBIAN_CNI_DIR / "bridge").exists():
        pytest.fail("containernetworking-plugins is not installed (make test installs it)")
    yield Scene(lab, tmp_path / "state")


def make_chain(scene: Scene, tmp_path: Path, *, with_guestfence: bool, policy: dict[str, Any] = POLICY) -> Chain:
    plugins: list[dict[str, Any]] = [
        {
            "type": "bridge", "bridge": unique("gfcbr"), "isGateway": True, "isDefaultGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "203.0.113.0/28", "gateway": GATEWAY}]],
                     "dataDir": str(tmp_path / "ipam")},
        },
    ]  # fmt: skip
    if with_guestfence:
        plugins.append({"type": "guestfence", "policy": policy, "stateDir": str(scene.state_dir)})
    conflist = {"cniVersion": "1.0.0", "name": unique("gfnet"), "plugins": plugins}
    return Chain(conflist, host_netns=scene.host, container_netns=scene.lab.netns("gfcc"),
                 cni_path=plugin_dir(tmp_path / "cni-bin"), container_id=unique("ctr") + "0" * 40)  # fmt: skip


def targets() -> list[str]:
    return [f"{proto}://{a}:{p}" for a in (GATEWAY, "198.51.100.7") for proto, ports in (("tcp", SERVICE_TCP), ("udp", SERVICE_UDP)) for p in ports]


def recorded(scene: Scene) -> Any:
    path = scene.state_dir / "state.json"
    return json.loads(path.read_text()) if path.exists() else None


def test_without_guestfence_the_container_reaches_every_host_service(scene: Scene, tmp_path: Path) -> None:
    chain = make_chain(scene, tmp_path, with_guestfence=False)
    chain.add()
    assert scene.reachable(chain.container_netns, targets()) == set(targets())
    chain.delete()


def test_container_reaches_the_allowed_gateway_port_and_nothing_else(scene: Scene, tmp_path: Path) -> None:
    chain = make_chain(scene, tmp_path, with_guestfence=True)
    result = chain.add()
    assert [i["name"] for i in result["interfaces"] if i.get("sandbox")] == ["eth0"], "the chain's result is prevResult"
    listed = json.loads(scene.gf("guest", "list", "--json").stdout)["guests"]
    bridge = chain.conflist["plugins"][0]["bridge"]
    assert [(g["bridge"], g["gateway"]) for g in listed] == [(bridge, [GATEWAY])], "registered as a port of the bridge"
    assert scene.reachable(chain.container_netns, targets()) == {f"tcp://{GATEWAY}:8080"}
    chain.check()


def test_del_leaves_the_ruleset_and_record_as_before_add(scene: Scene, tmp_path: Path) -> None:
    # A skeleton table exists before ADD (another guest came and went), so
    # "as before" is an exact comparison of our tables and the record.
    other = scene.add_guest("other", 1)
    scene.register(other)
    scene.gf("guest", "remove", "other")
    ruleset_before, record_before = scene.ruleset(), recorded(scene)
    chain = make_chain(scene, tmp_path, with_guestfence=True)
    chain.add()
    assert scene.ruleset() != ruleset_before
    chain.delete()
    assert scene.ruleset() == ruleset_before
    assert _without_generation(recorded(scene)) == _without_generation(record_before)
    chain.exec_plugin(chain.conflist["plugins"][1], "DEL", None)  # nothing to remove: still success


def _without_generation(record: dict | None) -> dict | None:
    """The record but its change counter, which every change bumps."""
    if record is None:
        return None
    return {**record, "guests": {k: v for k, v in record["guests"].items() if k != "generation"}}


def test_check_fails_when_the_rules_are_gone(scene: Scene, tmp_path: Path) -> None:
    chain = make_chain(scene, tmp_path, with_guestfence=True)
    chain.add()
    sh("nft", "delete", "table", "inet", "guestfence", netns=scene.host)
    with pytest.raises(PluginFailed) as failed:
        chain.check()
    assert failed.value.error is not None and failed.value.error["code"] == 102
    chain.delete()


def test_a_bad_policy_fails_add_in_the_cni_error_format_and_registers_nothing(scene: Scene, tmp_path: Path) -> None:
    chain = make_chain(scene, tmp_path, with_guestfence=True, policy={"allow": ["tcp://@gateway:70000"]})
    with pytest.raises(PluginFailed) as failed:
        chain.add()
    error = failed.value.error
    assert error is not None and error["code"] == 7 and error["cniVersion"] == "1.0.0"
    assert "70000" in error["details"]
    assert recorded(scene) is None


@pytest.mark.parametrize("fenced", [False, True], ids=["control", "fenced"])
def test_a_container_that_changes_its_mac_or_address_reaches_nothing(scene: Scene, tmp_path: Path, fenced: bool) -> None:
    # The bridge-port guest is told apart by port and MAC: a container (root
    # in its namespace) that takes another MAC or address must not fall
    # outside its rules into the host's default accept. The control shows
    # that each change alone still reaches the host without guestfence.
    chain = make_chain(scene, tmp_path, with_guestfence=fenced)
    chain.add()
    netns = chain.container_netns
    expected = set() if fenced else set(targets())
    sh("ip", "addr", "add", "203.0.113.9/28", "dev", "eth0", netns=netns)
    assert scene.reachable(netns, targets(), source="203.0.113.9") == expected, "a spoofed source"
    sh("ip", "link", "set", "eth0", "address", "02:00:5e:10:00:01", netns=netns)
    assert scene.reachable(netns, targets()) == expected, "a changed MAC"
