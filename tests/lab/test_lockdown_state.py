"""Lockdown as part of the recorded state: `apply FILE` with a [lockdown]
section (adding; with --prune, the whole set), `flush` (tables gone,
sysctls written back, record kept), `restore` (everything back, as after a
reboot, also from a damaged record: what can be read is installed), and
read-only commands that create no state directory or lock file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.lab.netlab import Lab, sh
from tests.lab.test_lockdown_receive import guestfence
from tests.lab.test_lockdown_watch import hardened, sysctl

pytestmark = pytest.mark.lab


def lockdown_tables(netns: str) -> list[str]:
    return [line for line in sh("nft", "list", "tables", netns=netns).stdout.splitlines() if "guestfence_lockdown" in line]


def recorded_patterns(state: Path) -> list[str]:
    return json.loads((state / "state.json").read_text())["lockdown"]["patterns"]


def test_apply_file_flush_and_restore_carry_lockdown(lab: Lab, tmp_path: Path) -> None:
    host, switch = lab.netns("gfh"), lab.netns("gfs")
    lab.veth(switch, "sw0", host, "up0")
    state = tmp_path / "state"
    locked = tmp_path / "locked.toml"
    locked.write_text('[lockdown]\ninterfaces = ["up*"]\n')

    applied = guestfence(host, "apply", str(locked), "--state-dir", str(state))
    assert applied.returncode == 0, applied.stderr
    assert len(lockdown_tables(host)) == 3 and hardened(host, "up0")
    assert recorded_patterns(state) == ["up*"]

    unrelated = tmp_path / "guests-only.toml"
    unrelated.write_text('default = "deny"\n')
    assert guestfence(host, "apply", str(unrelated), "--state-dir", str(state)).returncode == 0
    assert len(lockdown_tables(host)) == 3 and recorded_patterns(state) == ["up*"]

    assert guestfence(host, "flush", "--state-dir", str(state)).returncode == 0
    assert lockdown_tables(host) == []
    assert sysctl(host, "ipv6", "up0", "disable_ipv6") == "0"
    assert recorded_patterns(state) == ["up*"]

    restored = guestfence(host, "restore", "--state-dir", str(state))
    assert restored.returncode == 0, restored.stderr
    assert len(lockdown_tables(host)) == 3 and hardened(host, "up0")

    emptied = tmp_path / "empty.toml"
    emptied.write_text("[lockdown]\ninterfaces = []\n")
    dry = guestfence(host, "apply", "--dry-run", str(emptied), "--state-dir", str(state))
    assert dry.returncode == 0 and "would keep up* (not in the file; --prune removes it)" in dry.stdout
    kept = guestfence(host, "apply", str(emptied), "--state-dir", str(state))
    assert kept.returncode == 0 and "lockdown: keep up* (not in the file; --prune removes it)" in kept.stdout
    assert len(lockdown_tables(host)) == 3 and recorded_patterns(state) == ["up*"]  # kept: not named, no --prune
    more = tmp_path / "more.toml"
    more.write_text('[lockdown]\ninterfaces = ["vlan*"]\n')
    added = guestfence(host, "apply", str(more), "--state-dir", str(state))
    assert added.returncode == 0 and "lockdown: lock down vlan*" in added.stdout
    assert recorded_patterns(state) == ["up*", "vlan*"]
    pruned = guestfence(host, "apply", "--prune", str(emptied), "--state-dir", str(state))
    assert pruned.returncode == 0 and "lockdown: unlock up*" in pruned.stdout
    assert lockdown_tables(host) == [] and sysctl(host, "ipv4", "up0", "arp_ignore") == "0"


def test_apply_file_refuses_the_uplink_unless_the_section_forces_it(lab: Lab, tmp_path: Path) -> None:
    host, switch = lab.netns("gfh"), lab.netns("gfs")
    lab.veth(switch, "sw0", host, "up0")
    lab.addr(host, "up0", "192.0.2.2/24")
    sh("ip", "route", "add", "default", "via", "192.0.2.254", netns=host)
    state = tmp_path / "state"
    path = tmp_path / "uplink.toml"
    path.write_text('[lockdown]\ninterfaces = ["up0"]\n')

    refused = guestfence(host, "apply", str(path), "--state-dir", str(state))

    assert refused.returncode == 2 and "'up0' matches up0 (default route, IPv4)" in refused.stderr
    assert lockdown_tables(host) == []
    path.write_text('[lockdown]\ninterfaces = ["up0"]\nforce = true\n')
    assert guestfence(host, "apply", str(path), "--state-dir", str(state)).returncode == 0
    assert hardened(host, "up0")


def test_restore_installs_what_a_damaged_record_still_says_and_leaves_the_record_alone(lab: Lab, tmp_path: Path) -> None:
    host, switch = lab.netns("gfh"), lab.netns("gfs")
    lab.veth(switch, "sw0", host, "up0")
    state = tmp_path / "state"
    state.mkdir()
    damaged = {"version": 1, "lockdown": {
        "patterns": ["up*", 5, "vm?"],
        "interfaces": [{"interface": "gone0", "ifindex": "seven", "sysctls": []}],
    }}  # fmt: skip
    text = json.dumps(damaged)
    (state / "state.json").write_text(text)

    restored = guestfence(host, "restore", "--state-dir", str(state))

    assert restored.returncode != 0
    assert "lockdown: pattern 5: not a string" in restored.stderr
    assert "lockdown: pattern 'vm?'" in restored.stderr and "not an nftables wildcard" in restored.stderr
    assert "lockdown: record of interface 'gone0'" in restored.stderr and "Traceback" not in restored.stderr
    assert len(lockdown_tables(host)) == 3 and hardened(host, "up0")  # the good pattern holds
    assert (state / "state.json").read_text() == text  # not rewritten: it was not understood


def test_read_only_commands_create_no_state_directory_or_lock_file(lab: Lab, tmp_path: Path) -> None:
    host = lab.netns("gfh")
    missing = tmp_path / "missing"
    for argv in (("lockdown", "list"), ("lockdown", "list", "--json"), ("lockdown", "add", "up0", "--dry-run")):
        ran = guestfence(host, *argv, "--state-dir", str(missing))
        assert ran.returncode == 0, ran.stderr
    assert not missing.exists()
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    (recorded / "state.json").write_text(json.dumps({"version": 1, "lockdown": {"patterns": ["up*"], "interfaces": []}}))
    assert guestfence(host, "lockdown", "list", "--state-dir", str(recorded)).returncode == 0
    assert sorted(p.name for p in recorded.iterdir()) == ["state.json"]


def _record(state: Path) -> dict:
    return json.loads((state / "state.json").read_text())


def _lockdown(host: str, state: Path, *argv: str) -> str:
    ran = guestfence(host, *argv, "--state-dir", str(state))
    assert ran.returncode == 0, ran.stderr
    return ran.stdout


def _crashed(state: Path, committed: dict, pending: dict) -> None:
    """The file a crash between the intent and the record leaves: the
    committed section with the change it was making as ``pending``."""
    whole = _record(state)
    whole["lockdown"] = {**committed, "pending": pending}
    (state / "state.json").write_text(json.dumps(whole))


def test_a_lockdown_change_applied_but_not_recorded_is_named_and_restore_keeps_it(lab: Lab, tmp_path: Path) -> None:
    host, switch = lab.netns("gfh"), lab.netns("gfs")
    lab.veth(switch, "sw0", host, "up0")
    lab.veth(switch, "sw1", host, "vl0")
    state = tmp_path / "state"
    _lockdown(host, state, "lockdown", "add", "up*")
    committed = _record(state)["lockdown"]
    _lockdown(host, state, "lockdown", "add", "vl*")
    applied = _record(state)["lockdown"]
    assert "pending" not in applied and applied["generation"] == committed["generation"] + 1
    _crashed(state, committed, applied)  # the kernel has vl*, the record only its intent

    listed = json.loads(_lockdown(host, state, "lockdown", "list", "--json"))
    assert len(listed["interrupted"]) == 1 and "applied but not recorded" in listed["interrupted"][0]
    assert "interrupted: " in _lockdown(host, state, "lockdown", "list")
    status = guestfence(host, "status", "--state-dir", str(state))
    assert status.returncode == 1 and "drift: lockdown: an interrupted change" in status.stdout

    restored = _lockdown(host, state, "restore")
    assert "kept the interrupted change" in restored
    after = _record(state)["lockdown"]
    assert after["patterns"] == ["up*", "vl*"] and "pending" not in after
    assert [r["interface"] for r in after["interfaces"]] == ["up0", "vl0"] and hardened(host, "vl0")
    assert json.loads(_lockdown(host, state, "lockdown", "list", "--json"))["interrupted"] == []
    assert guestfence(host, "status", "--state-dir", str(state)).returncode == 0


def test_a_lockdown_change_recorded_but_never_applied_is_rolled_back_with_its_sysctls(lab: Lab, tmp_path: Path) -> None:
    host, switch = lab.netns("gfh"), lab.netns("gfs")
    lab.veth(switch, "sw0", host, "up0")
    lab.veth(switch, "sw1", host, "vl0")
    state = tmp_path / "state"
    _lockdown(host, state, "lockdown", "add", "up*")
    first = _record(state)["lockdown"]
    _lockdown(host, state, "lockdown", "add", "vl*")
    intended = _record(state)["lockdown"]  # vl0's record holds the values its sysctls had
    # A crash after vl0's sysctl writes, before the transaction: the rules
    # are the first change's (restored from its record alone), vl0 stays
    # hardened, and the record carries the change as pending only.
    (state / "state.json").write_text(json.dumps({"version": 1, "lockdown": first}))
    _lockdown(host, state, "restore")
    committed = _record(state)["lockdown"]
    assert hardened(host, "vl0"), "control: the interrupted change's sysctl writes are in place"
    _crashed(state, committed, {**intended, "generation": committed["generation"] + 1})

    listed = json.loads(_lockdown(host, state, "lockdown", "list", "--json"))
    assert len(listed["interrupted"]) == 1 and "recorded but never applied" in listed["interrupted"][0]

    restored = _lockdown(host, state, "restore")
    assert "rolled back an interrupted change" in restored
    after = _record(state)["lockdown"]
    assert after["patterns"] == ["up*"] and "pending" not in after
    assert [r["interface"] for r in after["interfaces"]] == ["up0"]
    assert sysctl(host, "ipv4", "vl0", "arp_ignore") == "0" and sysctl(host, "ipv6", "vl0", "disable_ipv6") == "0"
    assert hardened(host, "up0")
    assert json.loads(_lockdown(host, state, "lockdown", "list", "--json"))["interrupted"] == []
    assert guestfence(host, "status", "--state-dir", str(state)).returncode == 0


def test_the_intent_is_taken_back_when_the_kernel_refuses_the_transaction(lab: Lab, tmp_path: Path) -> None:
    host, switch = lab.netns("gfh"), lab.netns("gfs")
    lab.veth(switch, "sw0", host, "up0")
    state = tmp_path / "state"
    _lockdown(host, state, "lockdown", "add", "up*", "zz*")
    before = (state / "state.json").read_text()
    # A rule of someone else's using up*'s counter: deleting it (remove) fails, EBUSY.
    sh("nft", "add", "chain", "inet", "guestfence_lockdown", "theirs", netns=host)
    sh("nft", "add", "rule", "inet", "guestfence_lockdown", "theirs", "counter", "name", "prerouting_up_2a", netns=host)
    refused = guestfence(host, "lockdown", "remove", "up*", "--state-dir", str(state))
    assert refused.returncode == 4 and "Traceback" not in refused.stderr, refused.stderr
    assert (state / "state.json").read_text() == before and hardened(host, "up0")
