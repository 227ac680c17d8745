"""``guestfence run``: exit status, logs and resolution, from argv to output."""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import pytest

from tests.sandbox.conftest import Listener
from tests.unit.test_cli import run


def test_exit_status_is_the_commands_own(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "run", "--", "sh", "-c", "exit 7")[0] == 7
    assert run(capsys, "run", "--", "sh", "-c", "kill -TERM $$")[0] == 128 + 15


def test_missing_command_is_127_and_no_command_is_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "run", "--", "/nonexistent/cmd")[0] == 127
    code, _, err = run(capsys, "run")
    assert code == 2 and "no command given" in err


def test_bad_rule_exits_2_before_running(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    code, _, err = run(capsys, "run", "--net-allow", "tcp://x:0", "--", "touch", str(marker))
    assert code == 2 and "port 0" in err and not marker.exists()


def test_denials_are_logged_as_json(capsys: pytest.CaptureFixture[str], tmp_path: Path, tcp_server: Listener) -> None:
    log = tmp_path / "denied.log"
    guest = f"import socket; s = socket.socket(); raise SystemExit(s.connect_ex(('127.0.0.2', {tcp_server.port})))"
    code, _, _ = run(capsys, "run", "--net-allow", f"tcp://127.0.0.1:{tcp_server.port}", "--log", str(log),
                     "--json-log", "--", sys.executable, "-c", guest)
    assert code == errno.ECONNREFUSED
    (entry,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert entry["destination"] == f"tcp://127.0.0.2:{tcp_server.port}"
    assert (entry["syscall"], entry["protocol"], entry["decided_by"]) == ("connect", "tcp", "default deny")
    assert entry["pid"] > 0


def test_text_log_names_the_deciding_rule(capsys: pytest.CaptureFixture[str], udp_server: Listener) -> None:
    guest = f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {udp_server.port}))"
    code, _, err = run(capsys, "run", "--default", "allow", "--net-deny", "udp://127.0.0.0/8:*", "--log", "-",
                       "--deny-errno", "EPERM", "--", sys.executable, "-c", guest)
    assert code == 1  # the guest died of its PermissionError
    assert f"guestfence: denied sendto udp://127.0.0.1:{udp_server.port}" in err
    assert "deny udp://127.0.0.0/8:*" in err


def test_verbose_prints_resolved_names(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "run", "--verbose", "--net-allow", "localhost:80", "--", "true")
    assert code == 0 and "guestfence: localhost -> 127.0.0.1" in err
