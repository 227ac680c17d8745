"""The command line: argv in, exit status and output out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guestfence.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_check_prints_the_normalised_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.toml"
    path.write_text('allow = ["192.0.2.1:22", "tcp://*:443,80"]\n')
    code, out, _ = run(capsys, "check", str(path))
    assert code == 0
    assert out == 'default = "deny"\nallow = [\n    "tcp://*:80,443",\n    "tcp://192.0.2.1:22",\n]\ndeny = []\n'


def test_check_reports_each_problem_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.toml"
    path.write_text('allow = ["tcp://x:0", "tcp://[::1:22"]\n')
    code, out, err = run(capsys, "check", str(path))
    assert code == 2 and out == ""
    assert f"{path}:1:19: port 0 is out of range (expected 1-65535)" in err
    assert f"{path}:1:30: missing ']' after the IPv6 address" in err
    assert "Traceback" not in err


def test_explain_json_names_the_deciding_rule(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "explain", "--json", "--gateway", "192.0.2.1",
        "--net-allow", "tcp://@gateway:8080", "--net-deny", "tcp://192.0.2.0/24:*",
        "tcp://192.0.2.1:8080", "udp://192.0.2.1:8080", "icmp://203.0.113.9",
    )  # fmt: skip
    assert code == 0
    got = [(d["destination"], d["verdict"], d["rule"]) for d in json.loads(out)]
    assert got == [
        ("tcp://192.0.2.1:8080", "deny", "tcp://192.0.2.0/24:*"),
        ("udp://192.0.2.1:8080", "deny", None),
        ("icmp://203.0.113.9", "deny", None),
    ]


def test_explain_table_for_people(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[policy.dns]\nallow = ["udp://[2001:db8::53]:53"]\n')
    code, out, _ = run(capsys, "explain", "--policy", f"{path}:dns", "udp://[2001:db8::53]:53", "tcp://[2001:db8::53]:53")
    assert code == 0
    assert out.splitlines() == [
        "DESTINATION              VERDICT  DECIDED BY",
        "udp://[2001:db8::53]:53  allow    allow udp://[2001:db8::53]:53",
        "tcp://[2001:db8::53]:53  deny     default deny",
    ]


def test_explain_rejects_bad_destinations_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "explain", "tcp://example.com:80")
    assert code == 2
    assert "destination 'tcp://example.com:80':7: 'example.com' is not an IP address" in err


def test_bad_rule_on_the_command_line_names_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "explain", "--net-allow", "udp://x", "tcp://192.0.2.1:1")
    assert code == 2
    assert err.startswith("--net-allow 'udp://x':7: missing port for udp")


@pytest.mark.parametrize("command", ["check", "explain", "demo"])
def test_every_command_has_help_with_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, command, "--help")
    assert code == 0 and "example" in out


def test_demo_runs_and_shows_protocol_isolation(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "demo")
    assert code == 0
    assert "udp://192.0.2.1:8080         deny     default deny" in out


def test_run_refuses_gateway_rules_without_a_gateway(capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, "run", "--net-allow", "tcp://@gateway:8080", "--", "true")
    assert code == 2 and "tcp://@gateway:8080: @gateway needs a gateway address" in err and "--gateway" in err
    code, _out, err = run(capsys, "run", "--gateway", "not-an-address", "--", "true")
    assert code == 2 and "--gateway 'not-an-address' is not an IP address" in err


def test_explain_decides_a_translated_destination_twice(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "explain", "--net-allow", "tcp://203.0.113.0/24:*", "--default", "allow",
                       "--net-deny", "tcp://@host:*", "--dnat", "tcp://203.0.113.80:80=tcp://127.0.0.1:22", "--json",
                       "tcp://203.0.113.80:80", "tcp://203.0.113.81:80")
    assert code == 0
    answer, untranslated = json.loads(out)
    assert untranslated["verdict"] == "allow" and "delivered_to" not in untranslated
    assert answer["verdict"] == "deny" and answer["delivered_to"] == "tcp://127.0.0.1:22"
    assert answer["rule"] == "tcp://@host:*" and "translates" in answer["reason"]


def test_explain_guest_needs_a_registered_guest_and_no_policy_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "explain", "--guest", "vm9", "--state-dir", str(tmp_path), "tcp://192.0.2.1:22")
    assert code == 2 and "'vm9' is not a registered guest" in err
    code, _, err = run(capsys, "explain", "--guest", "vm9", "--default", "allow", "--state-dir", str(tmp_path), "tcp://192.0.2.1:22")
    assert code == 2 and "--default cannot be given with it" in err
