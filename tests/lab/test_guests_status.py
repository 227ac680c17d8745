"""``status`` against hand edits of the live ruleset, with real packets.

Each edit below opens a port the guest's policy denies (the probe from the
guest shows it, the host's listener accepting is the judge); ``status``
must then exit 1 naming what changed, and ``restore`` must close it again.
A crash between a change's transaction and its record must show up the
same way, and ``restore`` with a bad record installs every good guest."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.lab.netlab import Lab, sh
from tests.lab.guests_lab import GuestLink, Scene

pytestmark = pytest.mark.lab

POLICY = ("--net-allow", "tcp://@gateway:8080", "--net-allow", "tcp://*:22", "--net-deny", "tcp://@host:22")
"""8080 on the gateway allowed; 22 allowed elsewhere but denied on the host; 5432 denied by default."""


@pytest.fixture
def scene(lab: Lab, tmp_path: Path) -> Iterator[Scene]:
    """name: scene; scope: function; depends on lab. A host namespace with listeners."""
    yield Scene(lab, tmp_path / "state")


def nft(scene: Scene, *argv: str) -> str:
    return sh("nft", *argv, netns=scene.host).stdout


def rule_handle(scene: Scene, chain: str, position: int) -> int:
    listed = json.loads(nft(scene, "-a", "-j", "list", "chain", "inet", "guestfence", chain))["nftables"]
    return [item["rule"]["handle"] for item in listed if "rule" in item][position]


def profile_of(scene: Scene, link: GuestLink) -> str:
    """The policy profile chain the guest's interface is dispatched to."""
    listed = json.loads(nft(scene, "-j", "list", "map", "inet", "guestfence", "guests"))["nftables"]
    (entry,) = [e for item in listed if "map" in item for e in item["map"]["elem"]
                if (e[0]["elem"]["val"] if isinstance(e[0], dict) else e[0]) == link.iface]  # fmt: skip
    return str(entry[1]["goto"]["target"])


def replace_rule_with_accept(chain: str, position: int) -> Callable[[Scene, GuestLink], None]:
    """``chain`` may name ``{profile}``, the guest's policy profile."""
    def edit(scene: Scene, link: GuestLink) -> None:
        name = chain.format(profile=profile_of(scene, link))
        nft(scene, "replace", "rule", "inet", "guestfence", name, "handle", str(rule_handle(scene, name, position)), "accept")

    return edit


def recreate_prerouting_empty(scene: Scene, link: GuestLink) -> None:
    nft(scene, "delete", "chain", "inet", "guestfence", "prerouting")
    nft(scene, "add", "chain", "inet", "guestfence", "prerouting", "{ type filter hook prerouting priority -110; policy accept; }")


EDITS: dict[str, tuple[Callable[[Scene, GuestLink], None], str]] = {
    "prerouting flushed and re-added empty": (
        recreate_prerouting_empty, "chain inet prerouting: rule 1 `meta iifname . ip saddr vmap @dispatch4` is missing"),
    "accept inserted before the dispatch": (
        lambda scene, link: nft(scene, "insert", "rule", "inet", "guestfence", "prerouting", "accept"),
        "chain inet prerouting: unexpected rule at position 1: `accept`",
    ),
    "policy's final drop replaced by accept": (
        replace_rule_with_accept("{profile}.host", -1), "guest g1: chain inet {profile}.host: rule"),
    "drop chain's counted drop replaced by accept": (
        replace_rule_with_accept("guest_drop", 1), "chain inet guest_drop: rule 2 `meta iifname @dropped drop`"),
    "local removed from to_host": (
        lambda scene, link: nft(scene, "delete", "element", "inet", "guestfence", "to_host", "{ local }"),
        "set inet to_host: element local is missing",
    ),
    "drop chain flushed": (
        lambda scene, link: nft(scene, "flush", "chain", "inet", "guestfence", "guest_drop"),
        "chain inet guest_drop: rule 1",
    ),
}  # fmt: skip


def targets(link: GuestLink) -> list[str]:
    return [f"tcp://{link.gateway4}:{port}" for port in (8080, 22, 5432)]


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_hand_edit_that_opens_a_denied_port_is_drift_until_restore(scene: Scene, edit: str) -> None:
    link = scene.add_guest("g1", 1)
    scene.register(link, *POLICY)
    allowed = {f"tcp://{link.gateway4}:8080"}
    assert scene.reachable(link.netns, targets(link)) == allowed
    assert scene.gf("status").returncode == 0
    change, named = EDITS[edit]
    named = named.format(profile=profile_of(scene, link))
    change(scene, link)
    opened = scene.reachable(link.netns, targets(link), timeout=3.0) - allowed
    assert opened, f"control: {edit} should open a denied port"
    status = scene.gf("status", check=False)
    assert status.returncode == 1 and named in status.stdout, status.stdout
    report = json.loads(scene.gf("status", "--json", check=False).stdout)
    assert report["drifted"] and any(named.removeprefix("guest g1: ") in line
                                     for line in report["drift"] + report["guests"][0]["drift"])  # fmt: skip
    scene.gf("restore")
    assert scene.gf("status").returncode == 0
    assert scene.reachable(link.netns, targets(link)) == allowed


def test_status_counts_what_a_guest_sent(scene: Scene) -> None:
    link = scene.add_guest("g1", 1)
    scene.register(link, *POLICY)
    scene.reachable(link.netns, targets(link))
    (guest,) = json.loads(scene.gf("status", "--json").stdout)["guests"]
    assert guest["accepted"] > 0 and guest["accepted_bytes"] > 0 and guest["dropped"] > 0 and guest["drift"] == []


@pytest.mark.parametrize("form", ["section", "change"])
def test_a_change_applied_but_not_recorded_is_seen_and_restore_keeps_it(scene: Scene, form: str) -> None:
    from guestfence.guests.firewall import plan_add_recorded, salvage_registry

    first, second = scene.add_guest("g1", 1), scene.add_guest("g2", 2)
    scene.register(first, *POLICY)
    record = (scene.state_dir / "state.json").read_text()
    scene.register(second, *POLICY)
    # A crash after the transaction, before the record: the pending intent is
    # what was written last. Rebuild that file: committed g1, pending g1+g2,
    # as a whole section (apply FILE, restore, earlier versions) or as the
    # change `guest add` records.
    after = json.loads((scene.state_dir / "state.json").read_text())
    crashed = json.loads(record)
    crashed["guests"]["pending"] = after["guests"]
    if form == "change":
        added = salvage_registry(after["guests"], where="state").find("g2")
        assert added is not None
        crashed["guests"]["pending"] = plan_add_recorded(crashed["guests"], added, where="state").pending
        assert crashed["guests"]["pending"]["generation"] == after["guests"]["generation"]
    (scene.state_dir / "state.json").write_text(json.dumps(crashed))
    status = scene.gf("status", check=False)
    assert status.returncode == 1 and "applied but not recorded" in status.stdout
    restored = scene.gf("restore")
    assert "kept the interrupted change" in restored.stdout
    assert scene.gf("status").returncode == 0
    assert [g["name"] for g in json.loads(scene.gf("guest", "list", "--json").stdout)["guests"]] == ["g1", "g2"]


def test_a_change_recorded_but_never_applied_is_seen_and_restore_drops_it(scene: Scene) -> None:
    first, second = scene.add_guest("g1", 1), scene.add_guest("g2", 2)
    scene.register(first, *POLICY)
    scene.register(second, *POLICY)
    both = json.loads((scene.state_dir / "state.json").read_text())["guests"]
    scene.gf("guest", "remove", "g2")
    # A crash before the transaction: g2's intent recorded, the tables without it.
    record = json.loads((scene.state_dir / "state.json").read_text())
    record["guests"]["pending"] = {**both, "generation": record["guests"]["generation"] + 1}
    (scene.state_dir / "state.json").write_text(json.dumps(record))
    status = scene.gf("status", check=False)
    assert status.returncode == 1 and "never applied" in status.stdout
    restored = scene.gf("restore")
    assert "dropped an interrupted change" in restored.stdout
    assert scene.gf("status").returncode == 0
    assert [g["name"] for g in json.loads(scene.gf("guest", "list", "--json").stdout)["guests"]] == ["g1"]
    assert scene.reachable(second.netns, [f"tcp://{second.gateway4}:8080"]) == set(), "g2 was never applied: vmtap dropped"


def test_restore_with_a_bad_record_installs_the_good_guests_and_keeps_the_bad_one_closed(scene: Scene) -> None:
    good, bad = scene.add_guest("g1", 1), scene.add_guest("g2", 2)
    bad_iface = "bad-g2"
    sh("ip", "link", "set", bad.iface, "down", netns=scene.host)
    sh("ip", "link", "set", bad.iface, "name", bad_iface, netns=scene.host)
    sh("ip", "link", "set", bad_iface, "up", netns=scene.host)
    scene.lab.addr(scene.host, bad_iface, f"{bad.gateway6}/64")  # a link going down loses its IPv6 addresses
    scene.register(good, *POLICY)
    scene.gf("guest", "add", "g2", "--iface", bad_iface, "--address", f"{bad.address4}/30", "--address", f"{bad.address6}/64",
             "--gateway", bad.gateway4, "--gateway", bad.gateway6, "--default", "allow")  # fmt: skip
    assert scene.reachable(bad.netns, [f"tcp://{bad.gateway4}:5432"]) == {f"tcp://{bad.gateway4}:5432"}
    state = json.loads((scene.state_dir / "state.json").read_text())
    del state["guests"]["members"][1]["policy"]
    (scene.state_dir / "state.json").write_text(json.dumps(state))
    written = (scene.state_dir / "state.json").read_text()
    scene.gf("flush")  # a reboot: no tables
    assert scene.reachable(bad.netns, [f"tcp://{bad.gateway4}:5432"]) == {f"tcp://{bad.gateway4}:5432"}, "control"
    restored = scene.gf("restore", check=False)
    assert restored.returncode == 2 and "recorded guest g2" in restored.stderr and f"{bad_iface} kept closed" in restored.stderr
    assert scene.reachable(good.netns, targets(good)) == {f"tcp://{good.gateway4}:8080"}
    assert scene.reachable(bad.netns, [f"tcp://{bad.gateway4}:5432", f"tcp://{bad.gateway4}:8080"]) == set()
    assert json.loads((scene.state_dir / "state.json").read_text())["guests"]["members"][1] == json.loads(written)["guests"]["members"][1]
    status = scene.gf("status", check=False)
    assert status.returncode == 1 and "recorded guest g2" in status.stdout


def test_a_truncated_state_file_is_refused_and_left_as_it_is(scene: Scene) -> None:
    link = scene.add_guest("g1", 1)
    scene.register(link, *POLICY)
    path = scene.state_dir / "state.json"
    path.write_text(path.read_text()[:40])
    truncated = path.read_text()
    for argv in (("restore",), ("status",), ("guest", "remove", "g1"), ("apply", "--prune", "/dev/null")):
        done = scene.gf(*argv, check=False)
        assert done.returncode == 3 and "not valid JSON" in done.stderr and "Traceback" not in done.stderr
    assert path.read_text() == truncated


def test_status_finds_nothing_through_a_guests_life(scene: Scene, tmp_path: Path) -> None:
    """No false drift: every way of reaching a ruleset compares equal to what the record compiles to."""
    host, lab = scene.host, scene.lab
    first, second = scene.add_guest("g1", 1), scene.add_guest("g2", 2, kind="tap")
    sh("ip", "link", "add", "br0", "type", "bridge", netns=host)
    sh("ip", "link", "set", "br0", "up", netns=host)
    lab.addr(host, "br0", "203.0.113.1/24")
    bridged = lab.netns("gfb")
    lab.veth(host, "vmtap-b1", bridged, "eth0")
    sh("ip", "link", "set", "vmtap-b1", "master", "br0", netns=host)

    def clean() -> None:
        status = scene.gf("status", check=False)
        assert status.returncode == 0, status.stdout

    scene.register(first, *POLICY, "--net-allow", "udp://localhost:53", "--net-deny", "gone.invalid:443", extra=("--masquerade",))
    clean()
    scene.register(second, "--net-allow", "icmp://*", "--default", "allow", extra=("--comment", "tap guest, rack 4"))
    clean()
    scene.gf("guest", "add", "b1", "--iface", "vmtap-b1", "--bridge", "br0", "--mac", "02:00:00:00:00:b1",
             "--address", "203.0.113.11/24", "--gateway", "203.0.113.1", "--net-allow", "tcp://@gateway:8080")  # fmt: skip
    clean()
    scene.register(first, "--net-allow", "tcp://@gateway:22")  # replaced
    clean()
    scene.gf("guest", "remove", "g2")
    clean()
    config = tmp_path / "guests.toml"
    config.write_text(f'guest_pattern = "vmtap*"\n[[guest]]\nname = "g2"\niface = "{second.iface}"\n'
                      f'address = "{second.address4}/30"\ngateway = "{second.gateway4}"\n')  # fmt: skip
    scene.gf("apply", str(config))
    clean()
    scene.gf("restore")
    clean()
    report = json.loads(scene.gf("status", "--json").stdout)
    assert sorted(g["name"] for g in report["guests"]) == ["b1", "g1", "g2"] and not report["drifted"]


def test_restore_with_an_unreadable_lockdown_record_still_installs_the_guests(scene: Scene) -> None:
    link = scene.add_guest("g1", 1)
    scene.register(link, *POLICY)
    path = scene.state_dir / "state.json"
    state = json.loads(path.read_text())
    state["lockdown"] = {"patterns": 7}
    path.write_text(json.dumps(state))
    flushed = scene.gf("flush", check=False)
    assert flushed.returncode == 2 and "not done: lockdown:" in flushed.stderr and scene.ruleset() == []
    restored = scene.gf("restore", check=False)
    assert restored.returncode == 2 and "not done: lockdown" in restored.stderr and "Traceback" not in restored.stderr
    assert scene.reachable(link.netns, targets(link)) == {f"tcp://{link.gateway4}:8080"}
    assert json.loads(path.read_text())["lockdown"] == {"patterns": 7}, "left for a human, not rewritten"


def test_what_status_does_not_build_twice_is_listed_as_the_kernel_lists_it(scene: Scene) -> None:
    """``status`` takes the counters and set elements of the expected ruleset
    from the batch itself (drift.split_direct), not from the scratch
    namespace: for guests of every kind, that equals what the kernel lists
    when the whole batch is applied."""
    from guestfence.guests.compile import Settings, compile_ruleset
    from guestfence.guests.drift import compare_listings, expected_listing, split_direct
    from guestfence.guests.guest import parse_guest
    from guestfence.policy.model import Policy

    policy = Policy.parse(allow=["tcp://@gateway:8080", "api.example:443", "icmp://*"], deny=["tcp://@host:22"])
    names = {"api.example": frozenset({ipaddress.ip_address("203.0.113.7"), ipaddress.ip_address("2001:db8::7")})}
    guests = [
        parse_guest(name="r1", iface="vmtap-r1", addresses=["192.0.2.2/30", "2001:db8:1::2/64", "2001:db8:1::a:b/64"],
                    gateways=["192.0.2.1", "2001:db8:1::1"], policy=policy, mac="02:00:00:00:00:01", masquerade=True,
                    comment="rack 4, é"),
        parse_guest(name="r2", iface="vmtap-r2", addresses=["192.0.2.6/30"], gateways=["192.0.2.5"], policy=policy),
        parse_guest(name="b1", iface="vmtap-b1", addresses=["203.0.113.11/24", "2001:db8:2::11/64"], gateways=["203.0.113.1"],
                    policy=policy, mac="02:00:00:00:00:b1", bridge="br0"),
    ]  # fmt: skip
    commands = list(compile_ruleset(guests, Settings(generation=3, closed=("vmtap-x",)), names).commands)
    built, direct = split_direct(commands)
    assert len(direct) > 20 and len(built) < len(commands), "control: the bulk is taken directly"
    sh("nft", "-j", "-f", "-", netns=scene.host, input=json.dumps({"nftables": commands}))
    listed = [item for family in ("inet", "arp", "bridge")
              for item in json.loads(nft(scene, "-j", "list", "table", family, "guestfence"))["nftables"]]  # fmt: skip
    expected, _ = expected_listing(commands, meanwhile=lambda: None)
    assert compare_listings(expected, listed) == []
    without_r2 = [{"set": {**i["set"], "elem": [e for e in i["set"]["elem"] if e["elem"]["val"] != "vmtap-r2"]}}
                  if i.get("set", {}).get("name") == "dropped" and i["set"]["family"] == "inet" else i for i in listed]  # fmt: skip
    assert [d.text for d in compare_listings(expected, without_r2)] == ["set inet dropped: element vmtap-r2 is missing"], "control"
