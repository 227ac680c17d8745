"""The CLI imports only what the chosen command needs (bench/bench_cli.py measures the time)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from guestfence.cli import COMMANDS

HEAVY = ("pyroute2", "nftables", "seccomp", "importlib.metadata")

IMPORTED_AFTER = """
import json, sys
from guestfence.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def imported_modules(*argv: str) -> set[str]:
    """Every module name imported by ``guestfence ARGV`` (packages and their parents: pyroute2, importlib.metadata)."""
    result = subprocess.run([sys.executable, "-c", IMPORTED_AFTER, *argv], capture_output=True, text=True, timeout=60)
    return set(json.loads(result.stderr.strip().splitlines()[-1]))


@pytest.mark.parametrize("argv", [(), ("--help",), ("check", "--help"), ("explain", "--help"),
                                  ("explain", "--net-allow", "tcp://192.0.2.1:22", "tcp://192.0.2.1:22")])
def test_help_check_and_explain_import_no_kernel_library(argv: tuple[str, ...]) -> None:
    assert set(HEAVY) & imported_modules(*argv) == set()


def test_check_of_a_file_imports_no_kernel_library(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('default = "deny"\nallow = ["tcp://192.0.2.1:22"]\n')
    assert set(HEAVY) & imported_modules("check", str(policy)) == set()


# What check and explain of a plain policy do without: the guest and lockdown
# models, DNS (socket), pathlib and shutil (argparse's formatter would import it),
# dataclasses (with inspect, ast, dis; the values they load are guestfence.value.Value).
NOT_FOR_A_POLICY = ("guestfence.guests.guest", "guestfence.lockdown.pattern", "socket", "pathlib", "shutil",
                    "dataclasses", "inspect")


def test_check_and_explain_of_a_policy_import_only_the_policy_core(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('default = "deny"\nallow = ["tcp://@gateway:8080"]\n')
    assert set(NOT_FOR_A_POLICY) & imported_modules("check", str(policy)) == set()
    assert set(NOT_FOR_A_POLICY) & imported_modules("explain", "--policy", str(policy), "--gateway", "192.0.2.1",
                                                    "tcp://192.0.2.1:8080", "udp://192.0.2.53:53") == set()
    # The control: a file with a guest needs the guest model.
    policy.write_text('[[guest]]\nname = "vm1"\niface = "vmtap-1"\naddress = "192.0.2.2/30"\n')
    assert "guestfence.guests.guest" in imported_modules("check", str(policy))


def test_the_guard_sees_a_heavy_import() -> None:
    # The control: a command that needs libseccomp does import it.
    assert "seccomp" in imported_modules("run", "--help")
    assert "importlib.metadata" in imported_modules("--version")


def test_the_command_list_matches_what_the_modules_register() -> None:
    for module_name in sorted({module for module, _ in COMMANDS.values()}):
        subparsers = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(f"guestfence.cli.{module_name}").register(subparsers)
        registered = {action.dest: action.help for action in subparsers._choices_actions}
        expected = {name: summary for name, (module, summary) in COMMANDS.items() if module == module_name}
        assert registered == expected, module_name


def test_guest_add_reads_the_kernel_without_pyroute2_and_loads_no_dataclass(tmp_path: Path) -> None:
    # guest add checks the interface against the host's (guestfence.rtnl), every time.
    imported = imported_modules("guest", "add", "vm1", "--iface", "vmtap-gfstart", "--address", "192.0.2.2/30",
                                "--gateway", "192.0.2.1", "--dry-run", "--state-dir", str(tmp_path))
    assert "guestfence.rtnl" in imported
    assert "pyroute2" not in imported
    # Its values (guests, their record, the plans) are guestfence.value.Value, not dataclasses.
    assert {"dataclasses", "inspect"} & imported == set()
    if importlib.util.find_spec("_sha256") is not None:  # the profile digest without OpenSSL (guests.compile)
        assert "_hashlib" not in imported


def test_explain_of_rules_on_the_command_line_reads_no_toml(tmp_path: Path) -> None:
    assert "tomllib" not in imported_modules("explain", "--net-allow", "tcp://192.0.2.1:22", "tcp://192.0.2.1:22")
    # The control: a policy file needs the TOML parser.
    policy = tmp_path / "policy.toml"
    policy.write_text('default = "deny"\nallow = ["tcp://192.0.2.1:22"]\n')
    assert "tomllib" in imported_modules("explain", "--policy", str(policy), "tcp://192.0.2.1:22")
