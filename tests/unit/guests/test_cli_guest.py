"""``guestfence guest ...``, ``apply``: argv in, exit status and output out, no root.

Everything here fails, or is a --dry-run, before libnftables is touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guestfence.cli import main
from guestfence.config import parse_config
from guestfence.errors import PolicyError

ADD = ("guest", "add", "vm1", "--iface", "vmtap-a", "--address", "192.0.2.2/30")


def run(capsys: pytest.CaptureFixture[str], tmp_path: Path, *argv: str) -> tuple[int, str, str]:
    try:
        code = main([*argv, "--state-dir", str(tmp_path)])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--net-allow", "tcp://@gateway:8080"), "uses @gateway but the guest has no gateway"),
        (("--gateway", "192.0.2.1", "--net-allow", "tcp://@gateway:0"), "port 0 is out of range"),
        (("--mac", "nonsense"), "invalid MAC"),
    ],
)
def test_refused_before_anything_is_applied_or_recorded(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                         extra: tuple[str, ...], message: str) -> None:  # fmt: skip
    code, out, err = run(capsys, tmp_path, *ADD, *extra)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "state.json").exists()


def test_injection_crafted_name_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, tmp_path, "guest", "add", 'vm1"; flush ruleset', "--iface", "vmtap-a", "--address", "192.0.2.2/30")
    assert code == 2 and "invalid guest name" in err


def test_dry_run_prints_the_batch_and_records_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, tmp_path, *ADD, "--gateway", "192.0.2.1", "--net-allow", "tcp://@gateway:8080", "--dry-run")
    assert code == 0 and out == "would add guest vm1 on vmtap-a\n"
    assert "interface vmtap-a does not exist yet" in err
    code, out, _ = run(capsys, tmp_path, *ADD, "--gateway", "192.0.2.1", "--net-allow", "tcp://@gateway:8080", "--dry-run", "--json")
    assert code == 0
    batch = json.loads(out)["nftables"]
    assert batch[0] == {"metainfo": {"json_schema_version": 1}}
    assert {"add": {"element": {"family": "inet", "table": "guestfence", "name": "accepted", "elem": ["vmtap-a"]}}} in batch
    assert not (tmp_path / "state.json").exists()


def test_list_and_remove_with_nothing_registered(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(capsys, tmp_path, "guest", "list")[1] == "no guests registered\n"
    assert json.loads(run(capsys, tmp_path, "guest", "list", "--json")[1]) == {"pattern": "vmtap*", "guests": [], "problems": []}
    code, _, err = run(capsys, tmp_path, "guest", "remove", "vm1")
    assert code == 2 and "no guest named 'vm1' is registered" in err


def test_apply_dry_run_compiles_the_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "guests.toml"
    config.write_text('[[guest]]\nname = "vm1"\niface = "vmtap-a"\naddress = "192.0.2.2/30"\nnet_allow = ["udp://*:53"]\n')
    code, out, _ = run(capsys, tmp_path, "apply", "--dry-run", str(config))
    assert code == 0 and "would add guest vm1 on vmtap-a" in out
    assert not tmp_path.joinpath(".lock").exists()
    code, out, _ = run(capsys, tmp_path, "apply", "--dry-run", "--json", str(config))
    assert code == 0
    commands = json.loads(out)["guests"]["nftables"]
    assert {"delete": {"table": {"family": "inet", "name": "guestfence"}}} in commands


GUESTS_TOML = """\
allow = ["icmp://*"]

[policy.web]
allow = ["tcp://*:80"]

[[guest]]
name = "a"
iface = "vmtap-a"
address = "192.0.2.2/30"
gateway = "192.0.2.1"
policy = "web"
net_allow = ["tcp://@gateway:8080"]
default = "deny"

[[guest]]
name = "b"
iface = "vmtap-b"
address = ["192.0.2.6/30", "2001:db8::6/64"]
mac = "02:00:00:00:00:0B"
masquerade = true
"""


def test_guest_tables_mirror_the_flags_and_combine_policies() -> None:
    config = parse_config(GUESTS_TOML, source="g.toml")
    a, b = config.guests
    assert [str(r) for r in a.policy.allow] == ["tcp://*:80", "tcp://@gateway:8080"]
    assert [str(r) for r in b.policy.allow] == ["icmp://*"], "without policy = ..., the unnamed policy"
    assert (b.mac, b.masquerade, len(b.addresses)) == ("02:00:00:00:00:0b", True, 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[guest]]\nname = "a"\niface = "vmtap-a"\naddress = "192.0.2.2/30"\ncolor = 1\n', "g.toml:5: unknown key 'color' in [[guest]] #1"),
        ('[[guest]]\nname = "a"\niface = "vmtap-a"\naddress = "192.0.2.2/30"\npolicy = "nope"\n', "no [policy.nope] in this file"),
        ('[[guest]]\nname = "a.b"\niface = "vmtap-a"\naddress = "192.0.2.2/30"\n', "g.toml: [[guest]] #1: invalid guest name 'a.b'"),
        ('[[guest]]\nname = "a"\niface = "vmtap-a"\naddress = "192.0.2.2/30"\nnet_allow = ["tcp://x:0"]\n', "g.toml:5:23: port 0 is out of range"),
        ('guest_pattern = "vm*tap"\n', "invalid guest interface pattern"),
    ],
)
def test_guest_table_errors_name_the_file_and_the_guest(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_config(text, source="g.toml")
    assert message in str(caught.value)
