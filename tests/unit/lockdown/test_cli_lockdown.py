"""`guestfence lockdown` argv in, exit status and output out (no changes made)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.test_cli import run


def test_dry_run_prints_the_transaction_and_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "lockdown", "add", "gfnone*", "--dry-run", "--state-dir", str(tmp_path))
    assert code == 0
    shown = json.loads(out)
    assert {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "gfnone*"}} in [
        c["add"]["rule"]["expr"][0] for c in shown["nftables"] if "rule" in c.get("add", {})
    ]
    assert shown["sysctls"] == [] and shown["write_back"] == []
    assert "`lockdown watch` sets the sysctls when one appears" in err
    assert not (tmp_path / "state.json").exists()


def test_a_bad_pattern_exits_2_with_its_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "lockdown", "add", "vm?", "--state-dir", str(tmp_path))
    assert code == 2 and out == ""
    assert "pattern 'vm?':3: '?' is not an nftables wildcard" in err and "Traceback" not in err


def test_removing_what_is_not_locked_down_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "lockdown", "remove", "vlan*", "--state-dir", str(tmp_path))
    assert code == 2
    assert "not locked down: 'vlan*' (locked down: none)" in err


def test_a_damaged_record_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "state.json").write_text(json.dumps({"version": 1, "lockdown": {"patterns": ["a*b"]}}))
    code, _, err = run(capsys, "lockdown", "add", "vlan*", "--dry-run", "--state-dir", str(tmp_path))
    assert code == 2
    assert "recorded lockdown: the recorded lockdown state is damaged" in err
