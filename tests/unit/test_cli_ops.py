"""What an operator meets first: version, privilege, pipes, bad bytes, help, the Python API."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import guestfence
from tests.lab.netlab import GUESTFENCE
from tests.unit.test_cli import run


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("guestfence ") and out.strip() != "guestfence"


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv to drop privilege")
@pytest.mark.parametrize("argv", [("status",), ("restore",), ("flush",), ("apply", "/dev/null"),
                                  ("guest", "remove", "vm1"), ("audit", "--netns", "x")])  # fmt: skip
def test_privileged_commands_without_privilege_exit_3_saying_run_as_root(tmp_path: Path, argv: tuple[str, ...]) -> None:
    tmp_path.chmod(0o777)
    state = tmp_path / "state"
    done = subprocess.run(["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "--inh-caps=-all",
                           GUESTFENCE, *argv, "--state-dir", str(state)], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 3 and "run as root" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not state.exists(), "no lock file, no directory"


def test_reading_commands_create_no_lock_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "guest", "list", "--state-dir", str(tmp_path / "s"))[0] == 0
    assert not (tmp_path / "s").exists()


def test_output_into_a_closed_pipe_is_no_traceback(tmp_path: Path) -> None:
    reader = "import sys; sys.stdin.read(1)"
    with subprocess.Popen([GUESTFENCE, "explain", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as writer:
        assert writer.stdout is not None
        subprocess.run([sys.executable, "-c", reader], stdin=writer.stdout, check=True)
        writer.stdout.close()
        _, err = writer.communicate()
    assert b"Traceback" not in err and b"BrokenPipe" not in err


def test_a_policy_file_that_is_not_utf8_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.toml"
    path.write_bytes(b'allow = ["\xff\xfe"]\n')
    code, _, err = run(capsys, "check", str(path))
    assert code == 2 and str(path) in err and "Traceback" not in err


def test_policy_options_are_listed_once_and_rootless_says_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    out = run(capsys, "guest", "add", "--help")[1]
    assert out.count("--net-allow RULE") == 2  # usage line and the option
    assert "macvtap is not covered" in " ".join(out.split())
    assert "default: allow, with every host address denied" in " ".join(run(capsys, "rootless", "--help")[1].split())


def test_python_api_shows_the_sandbox_and_loads_toml(tmp_path: Path) -> None:
    assert {"Sandbox", "Denial", "load_policy"} <= set(dir(guestfence)) and "Sandbox" in guestfence.__doc__
    path = tmp_path / "p.toml"
    path.write_text('allow = ["tcp://192.0.2.1:22"]\n')
    assert [str(r) for r in guestfence.load_policy(str(path)).allow] == ["tcp://192.0.2.1:22"]
    with pytest.raises(TypeError, match=r"takes a list of rules, not one string: allow=\['tcp://x:1'\]"):
        guestfence.Policy.parse(allow="tcp://x:1")


def test_gateway_without_a_gateway_is_never_silent(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "explain", "--net-deny", "tcp://@gateway:22", "tcp://192.0.2.1:22")
    assert code == 0 and "tcp://@gateway:22 uses @gateway, which is not defined without --gateway" in err
    assert "matches every destination of its protocol and ports" in err
    assert "uses @gateway" not in run(capsys, "explain", "--gateway", "192.0.2.1", "--net-deny", "tcp://@gateway:22",
                                      "tcp://192.0.2.1:22")[2]  # fmt: skip


def test_guest_add_and_apply_name_the_unix_rules_a_vm_cannot_be_held_to(capsys: pytest.CaptureFixture[str],
                                                                        tmp_path: Path) -> None:  # fmt: skip
    state = ("--state-dir", str(tmp_path / "state"))
    code, _, err = run(capsys, "guest", "add", "vm1", "--iface", "vmtap-u", "--address", "192.0.2.2/30",
                       "--net-allow", "unix:///run/x.sock", "--net-deny", "unix://@*", "--dry-run", *state)  # fmt: skip
    assert code == 0
    assert "guest vm1: unix:// rules do not apply to a VM or container guest" in err
    assert "allow unix:///run/x.sock, deny unix://@*" in err
    config = tmp_path / "guests.toml"
    config.write_text('[[guest]]\nname = "vm2"\niface = "vmtap-v"\naddress = "192.0.2.6/30"\n'
                      'net_allow = ["udp://*:53", "unix:///run/y.sock"]\n')  # fmt: skip
    code, _, err = run(capsys, "apply", "--dry-run", str(config), *state)
    assert code == 0 and "guest vm2: unix:// rules" in err and "allow unix:///run/y.sock" in err
    code, _, err = run(capsys, "guest", "add", "vm3", "--iface", "vmtap-w", "--address", "192.0.2.10/30",
                       "--net-allow", "udp://*:53", "--dry-run", *state)  # fmt: skip
    assert code == 0 and "unix://" not in err
