"""apply_lockdown's contract with sysctl files redirected to a temp dir and
a recording libnftables handle: read-compare-write, old values recorded,
everything undone when the transaction fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from guestfence.errors import ApplyError
from guestfence.lockdown.apply import apply_lockdown
from guestfence.lockdown.pattern import parse_patterns
from guestfence.lockdown.plan import SYSCTLS, Link, plan_add, plan_remove
from guestfence.lockdown.state import LockdownState, SysctlStep

LINK = Link(name="vlan7", ifindex=7)


class RecordingNft:
    def __init__(self, rc: int = 0) -> None:
        self.rc = rc
        self.batches: list[dict[str, Any]] = []

    def json_cmd(self, json_root: dict[str, Any]) -> tuple[int, Any, str]:
        self.batches.append(json_root)
        return self.rc, "", "" if self.rc == 0 else "Error: Could not process rule: Operation not supported"

    def set_dry_run(self, onoff: bool) -> bool:
        return False


@pytest.fixture
def proc_sys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Sysctl files of one interface, all at the kernel's defaults, under tmp_path."""
    monkeypatch.setattr(SysctlStep, "path", property(lambda s: str(tmp_path / s.family / s.interface / s.key)))
    for family, key, _, _ in SYSCTLS:
        (tmp_path / family / LINK.name).mkdir(parents=True, exist_ok=True)
        (tmp_path / family / LINK.name / key).write_text({"accept_ra": "1", "autoconf": "1"}.get(key, "0") + "\n")
    return tmp_path


def values(root: Path) -> dict[str, str]:
    return {f"{family}/{key}": (root / family / LINK.name / key).read_text().strip() for family, key, _, _ in SYSCTLS}


def test_add_writes_what_differs_records_old_values_and_runs_one_batch(proc_sys: Path) -> None:
    (proc_sys / "ipv4" / LINK.name / "rp_filter").write_text("1\n")
    nft = RecordingNft()
    plan = plan_add(LockdownState(), parse_patterns(["vlan*"]), links=(LINK,), protected={})
    state = apply_lockdown(plan, nft, LockdownState())
    assert values(proc_sys) == {f"{family}/{key}": value for family, key, value, _ in SYSCTLS}
    assert len(nft.batches) == 1
    (record,) = state.interfaces
    recorded = {c.step.key + "@" + c.step.family: c.old for c in record.changes}
    assert "rp_filter@ipv4" not in recorded  # already 1: not written, not recorded
    assert recorded["accept_ra@ipv6"] == "1" and recorded["disable_ipv6@ipv6"] == "0"

    removed = apply_lockdown(plan_remove(state, parse_patterns(["vlan*"]), links=(LINK,)), nft, state)
    assert removed == LockdownState(generation=2)  # every change counts, written into the tables too
    assert values(proc_sys)["ipv6/accept_ra"] == "1" and values(proc_sys)["ipv4/rp_filter"] == "1"


def test_a_failed_transaction_undoes_every_sysctl_write(proc_sys: Path) -> None:
    before = values(proc_sys)
    plan = plan_add(LockdownState(), parse_patterns(["vlan*"]), links=(LINK,), protected={})
    with pytest.raises(ApplyError, match="nftables: lockdown rules failed: Error: Could not process rule"):
        apply_lockdown(plan, RecordingNft(rc=1), LockdownState())
    assert values(proc_sys) == before


def test_a_missing_ipv6_stack_is_skipped_but_a_missing_interface_is_an_error(proc_sys: Path) -> None:
    for path in (proc_sys / "ipv6" / LINK.name).iterdir():
        path.unlink()
    plan = plan_add(LockdownState(), parse_patterns(["vlan*"]), links=(LINK,), protected={})
    state = apply_lockdown(plan, RecordingNft(), LockdownState())
    assert {c.step.family for c in state.interfaces[0].changes} == {"ipv4"}
    (proc_sys / "ipv4" / LINK.name / "arp_ignore").unlink()
    with pytest.raises(ApplyError, match="arp_ignore does not exist"):
        apply_lockdown(plan, RecordingNft(), LockdownState())
