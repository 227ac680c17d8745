"""The CLI imports only what the chosen command needs (bench/bench_cli.py measures the time)."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from guestfence.cli import COMMANDS

HEAVY = ("pyroute2", "nftables", "seccomp")

IMPORTED_AFTER = """
import json, sys
from guestfence.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})), file=sys.stderr)
"""


def top_level_modules(*argv: str) -> set[str]:
    result = subprocess.run([sys.executable, "-c", IMPORTED_AFTER, *argv], capture_output=True, text=True, timeout=60)
    return set(json.loads(result.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize("argv", [(), ("--help",), ("check", "--help"), ("explain", "--help"),
                                  ("explain", "--net-allow", "tcp://192.0.2.1:22", "tcp://192.0.2.1:22")])
def test_help_check_and_explain_import_no_kernel_library(argv: tuple[str, ...]) -> None:
    assert set(HEAVY) & top_level_modules(*argv) == set()


def test_check_of_a_file_imports_no_kernel_library(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('default = "deny"\nallow = ["tcp://192.0.2.1:22"]\n')
    assert set(HEAVY) & top_level_modules("check", str(policy)) == set()


def test_the_guard_sees_a_heavy_import() -> None:
    # The control: a command that needs libseccomp does import it.
    assert "seccomp" in top_level_modules("run", "--help")


def test_the_command_list_matches_what_the_modules_register() -> None:
    for module_name in sorted({module for module, _ in COMMANDS.values()}):
        subparsers = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(f"guestfence.cli.{module_name}").register(subparsers)
        registered = {action.dest: action.help for action in subparsers._choices_actions}
        expected = {name: summary for name, (module, summary) in COMMANDS.items() if module == module_name}
        assert registered == expected, module_name
