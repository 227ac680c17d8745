"""``guestfence run``: exit status, logs and resolution, from argv to output."""

from __future__ import annotations

import errno
import json
import re
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
    name = Path(sys.executable).name
    assert re.search(rf"^\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ guestfence\[{re.escape(name)}\]: denied sendto "
                     rf"udp://127.0.0.1:{udp_server.port} .*deny udp://127.0.0.0/8:\*$", err, re.M), err  # fmt: skip


def test_refused_attempts_are_summed_up_on_exit_unless_quiet(capsys: pytest.CaptureFixture[str], tcp_server: Listener) -> None:
    guest = ("import socket\nfor port in (1, 2, 3, 4):\n"
             "    socket.socket().connect_ex(('127.0.0.2', port))")  # fmt: skip
    code, _, err = run(capsys, "run", "--", sys.executable, "-c", guest)
    assert code == 0
    (summary,) = err.splitlines()
    assert "refused 4 attempt(s): tcp://127.0.0.2:1, tcp://127.0.0.2:2, tcp://127.0.0.2:3, ... (default deny)" in summary
    assert run(capsys, "run", "--quiet", "--", sys.executable, "-c", guest)[2] == ""
    verbose = run(capsys, "run", "--verbose", "--", sys.executable, "-c", guest)[2].splitlines()
    assert len([line for line in verbose if "]: denied connect tcp://127.0.0.2:" in line]) == 4


def test_json_log_without_a_file_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    guest = "import socket; socket.socket().connect_ex(('127.0.0.2', 9))"
    code, _, err = run(capsys, "run", "--quiet", "--json-log", "--", sys.executable, "-c", guest)
    (entry,) = [json.loads(line) for line in err.splitlines()]
    assert entry["destination"] == "tcp://127.0.0.2:9" and entry["command"] == Path(sys.executable).name and entry["time"]


def test_a_refused_dns_lookup_is_called_out_with_the_rule_that_allows_it(capsys: pytest.CaptureFixture[str]) -> None:
    guest = "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'q', ('127.0.0.53', 53))"
    code, _, err = run(capsys, "run", "--net-allow", "localhost:443", "--", sys.executable, "-c", guest)
    assert code == 1
    assert ("a DNS lookup to udp://127.0.0.53:53 was refused while the policy names hosts (localhost); "
            "allow it with --net-allow udp://127.0.0.53:53") in err  # fmt: skip


def test_verbose_prints_resolved_names(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "run", "--verbose", "--net-allow", "localhost:80", "--", "true")
    assert code == 0 and "guestfence: localhost -> 127.0.0.1" in err


def test_gateway_in_a_sandbox_policy_without_a_gateway_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "run", "--quiet", "--net-allow", "udp://@gateway:53", "--", "true")
    assert code == 2 and "udp://@gateway:53: @gateway needs a gateway address, and none is given" in err
