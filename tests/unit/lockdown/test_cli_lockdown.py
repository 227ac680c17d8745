"""`guestfence lockdown` argv in, exit status and output out (no changes made)."""

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


def test_dry_run_prints_the_transaction_and_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "lockdown", "add", "gfnone*", "--dry-run", "--state-dir", str(tmp_path / "st"))
    assert code == 0
    batch = json.loads(out[out.index("{"):out.index("\nsysctls")])
    assert {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "gfnone*"}} in [
        c["add"]["rule"]["expr"][0] for c in batch["nftables"] if "rule" in c.get("add", {})
    ]
    assert "`lockdown watch` sets them when one appears" in out
    assert out.rstrip().endswith("dry run: nothing changed")
    assert not (tmp_path / "st").exists()


def test_a_bad_pattern_exits_2_with_its_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "lockdown", "add", "vm?", "--state-dir", str(tmp_path))
    assert code == 2 and out == ""
    assert "pattern 'vm?':3: '?' is not an nftables wildcard" in err and "Traceback" not in err


def test_removing_what_is_not_locked_down_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "lockdown", "remove", "vlan*", "--state-dir", str(tmp_path))
    assert code == 2
    assert "not locked down: 'vlan*' (locked down: none)" in err


def test_a_damaged_state_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "lockdown.json").write_text("{not json")
    code, _, err = run(capsys, "lockdown", "add", "vlan*", "--dry-run", "--state-dir", str(tmp_path))
    assert code == 2
    assert f"{tmp_path}/lockdown.json: not JSON" in err
