"""``make install-system`` staged with DESTDIR: every link points into this
checkout's venv and works, every unit names it and is valid systemd syntax."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """name: staged; scope: module. The tree `make install-system` would install, under a temporary DESTDIR."""
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip("the tests do not run from this checkout's .venv")
    destdir = tmp_path_factory.mktemp("destdir")
    subprocess.run(["make", "-s", "-C", str(ROOT), "install-system", f"DESTDIR={destdir}"], check=True, capture_output=True, timeout=600)
    return destdir


def test_guestfence_is_on_path_as_a_link_to_the_venv(staged: Path) -> None:
    link = staged / "usr/local/bin/guestfence"
    assert link.is_symlink() and Path(os.readlink(link)) == VENV_BIN / "guestfence"
    assert subprocess.run([str(link), "--help"], capture_output=True, timeout=60).returncode == 0


def test_the_cni_plugin_is_where_cni_runtimes_look(staged: Path) -> None:
    for directory in ("usr/lib/cni", "opt/cni/bin"):
        plugin = staged / directory / "guestfence"
        done = subprocess.run([str(plugin)], input='{"cniVersion": "1.0.0"}', env={**os.environ, "CNI_COMMAND": "VERSION"},
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert json.loads(done.stdout)["supportedVersions"] == ["0.4.0", "1.0.0"]


def test_qemu_scripts_and_libvirt_hook_are_installed(staged: Path) -> None:
    for path, script in (
        ("usr/local/libexec/guestfence/qemu-ifup", "guestfence-qemu-ifup"),
        ("usr/local/libexec/guestfence/qemu-ifdown", "guestfence-qemu-ifdown"),
        ("etc/libvirt/hooks/qemu.d/guestfence", "guestfence-libvirt-hook"),
    ):
        assert Path(os.readlink(staged / path)) == VENV_BIN / script


def test_units_name_the_venv_and_have_no_inline_comments(staged: Path) -> None:
    units = sorted((staged / "etc/systemd/system").iterdir())
    assert {u.name for u in units} == {
        "guestfence-restore.service", "guestfence-lockdown-watch.service", "guestfence-metrics.service", "guestfence-metrics.timer",
    }  # fmt: skip
    for unit in units:
        text = unit.read_text()
        assert "@" not in text.replace("@.", ""), f"{unit.name}: a template variable is left"
        for line in text.splitlines():
            # systemd has no inline comments: a '#' after a value is part of the value.
            assert line.startswith("#") or "#" not in line, f"{unit.name}: {line}"
            if line.startswith("ExecStart="):
                assert line.split("=", 1)[1].split()[0] == str(VENV_BIN / "guestfence")
