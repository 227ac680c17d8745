"""The README's VM-guest examples run as written, in a namespace of their own."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab.netlab import GUESTFENCE, Lab, sh
from tests.unit.test_readme import readme_commands

pytestmark = pytest.mark.lab


def test_readme_guest_examples_run_as_written(lab: Lab, tmp_path: Path) -> None:
    host = lab.netns("gfr")
    commands = [argv for argv in readme_commands(("guest", "status")) if argv[:2] != ["guest", "remove"]]
    assert [argv[:2] for argv in commands][:3] == [["guest", "add"], ["guest", "list"], ["status"]]
    for argv in commands:
        done = sh(GUESTFENCE, *argv, "--state-dir", str(tmp_path), netns=host, check=False)
        assert done.returncode == 0 and "Traceback" not in done.stderr, f"{argv}: {done.stderr}"
