"""``guestfence audit`` argument handling: bad input exits 2 before any probe."""

from __future__ import annotations

import pytest

from tests.unit.test_cli import run


def test_bad_rule_exits_2_naming_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "audit", "--netns", "gf-never-made", "--net-allow", "tcp://@host:0")
    assert code == 2 and out == ""
    assert err.startswith("--net-allow 'tcp://@host:0':13: port 0 is out of range")


@pytest.mark.parametrize("value", ["0", "-1", "61", "soon"])
def test_timeout_must_be_a_sane_number_of_seconds(capsys: pytest.CaptureFixture[str], value: str) -> None:
    code, _, err = run(capsys, "audit", "--netns", "x", "--timeout", value)
    assert code == 2
    assert "is not a number of seconds between 0 and 60" in err


def test_netns_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "audit")
    assert code == 2 and "--netns" in err


def test_help_explains_probe_results_and_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "audit", "--help")
    assert code == 0
    assert "dropped (UDP, a drop counter of table inet guestfence rose)" in out
    assert "Exit status: 1 if any reachable service is denied by the policy, else 0." in out


def test_netns_and_sandbox_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "audit", "--netns", "x", "--sandbox")
    assert code == 2 and "not allowed with argument" in err
