"""Rootless stacks: the guard policy, the command lines, the guest's view, the CLI plan."""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import tempfile
from pathlib import Path

import pytest

from guestfence.errors import PolicyError
from guestfence.policy.decide import decide
from guestfence.policy.grammar import parse_destination
from guestfence.policy.model import parse_policy
from guestfence.policy.model import Action, Context, PortRange, local_types
from guestfence.rootless.guard import complement, host_guard
from guestfence.rootless.preflight import check_socket, socket_path
from guestfence.rootless.stacks import Stack, guest_view, passt_command, slirp4netns_command
from tests.unit.test_cli import run

HOST = {ipaddress.ip_address(a) for a in ("127.0.0.1", "198.51.100.1", "2001:db8:1::1")}
CONTEXT = Context(address_type=local_types(HOST))


@pytest.mark.parametrize(
    ("dest", "verdict"),
    [
        ("tcp://198.51.100.1:22", "deny"),
        ("udp://127.0.0.1:53", "deny"),
        ("icmp://198.51.100.1", "deny"),
        ("tcp://[2001:db8:1::1]:8080", "allow"),  # carved out of the deny
        ("tcp://[::ffff:127.0.0.1]:8080", "allow"),
        ("tcp://127.0.0.1:8081", "deny"),
        ("tcp://203.0.113.9:22", "allow"),  # not the host
    ],
)
def test_guard_denies_the_host_except_its_allowed_ports(dest: str, verdict: str) -> None:
    policy = host_guard(parse_policy(allow=["tcp://@host:8080"]))
    assert decide(policy, parse_destination(dest), CONTEXT).action.value == verdict


def test_guard_keeps_the_users_denies_and_default() -> None:
    policy = host_guard(parse_policy(deny=["udp://203.0.113.9:53"]), default=Action.DENY)
    assert policy.default is Action.DENY
    assert [str(r) for r in policy.deny] == ["icmp://@host", "tcp://@host:*", "udp://203.0.113.9:53", "udp://@host:*"]


def test_complement_of_ports() -> None:
    assert complement([PortRange(1, 10), PortRange(20, 65535)]) == [PortRange(11, 19)]
    assert complement([]) == [PortRange(1, 65535)]


def test_slirp_command_and_its_loopback_mapping() -> None:
    command = slirp4netns_command("/run/netns/g", "tap0", ["--enable-ipv6"])
    assert command.argv == ("slirp4netns", "--configure", "--mtu=65520", "--netns-type=path", "--enable-ipv6",
                            "/run/netns/g", "tap0")
    assert guest_view(command, ipaddress.ip_address("127.0.0.1")) == ipaddress.ip_address("10.0.2.2")
    assert guest_view(command, ipaddress.ip_address("198.51.100.1")) == ipaddress.ip_address("198.51.100.1")
    closed = slirp4netns_command("42", "tap0", ["--disable-host-loopback"])
    assert guest_view(closed, ipaddress.ip_address("127.0.0.1")) is None


def test_passt_runs_in_the_foreground_and_needs_ptrace() -> None:
    assert passt_command(Stack.PASTA, ["--config-net"]).argv == ("pasta", "-f", "--config-net")
    assert passt_command(Stack.PASST, ["--foreground"]).argv == ("passt", "--foreground")
    assert Stack.PASST.needs_ptrace_capability and not Stack.SLIRP4NETNS.needs_ptrace_capability


def test_cli_dry_run_prints_the_command_and_policy(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "rootless", "slirp4netns", "4242", "--net-allow", "tcp://@host:8080",
                       "--dry-run", "--", "--disable-host-loopback")
    assert code == 0
    plan = json.loads(out)
    assert plan["command"] == ["slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback", "4242", "tap0"]
    assert plan["deny"] == ["icmp://@host", "tcp://@host:1-8079,8081-65535", "udp://@host:*"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["rootless", "slirp4netns"], "slirp4netns needs the PID"),
        (["rootless", "pasta", "42"], "pasta takes no PID"),
        (["rootless", "slirp4netns", "42", "--net-deny", "tcp://@host"], "missing port for tcp"),
    ],
)
def test_cli_refuses_bad_input_with_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, _, err = run(capsys, *argv, "--dry-run")
    assert code == 2 and message in err


def test_nft_mode_compiles_the_guard_for_one_user() -> None:
    from guestfence.rootless.nftmode import compile_owner, compile_release

    commands = compile_owner(1234, host_guard(parse_policy(allow=["tcp://@host:8080"])), {})
    rules = [c["add"]["rule"]["expr"] for c in commands if "rule" in c.get("add", {})]
    owner_rules = [r for r in rules if not any("vmap" in e for e in r)]
    assert owner_rules[0][0]["match"]["left"] == {"ct": {"key": "state"}}
    verdicts = [r[-1] for r in owner_rules]
    assert verdicts == [{"accept": None}, {"reject": None}, {"reject": {"type": "tcp reset"}}, {"reject": None},
                        {"accept": None}, {"accept": None}]
    element = next(c["add"]["element"] for c in commands if "element" in c.get("add", {}))
    assert element["elem"] == [[1234, {"jump": {"target": "owner.1234"}}]]
    assert compile_release(1234)[1] == {"delete": {"chain": {"family": "inet", "table": "guestfence_rootless",
                                                             "name": "owner.1234"}}}


def test_nft_mode_refuses_gateway_rules() -> None:
    from guestfence.errors import PolicyError
    from guestfence.rootless.nftmode import compile_owner

    with pytest.raises(PolicyError, match="@gateway"):
        compile_owner(1234, parse_policy(allow=["tcp://@gateway:80"]), {})


@pytest.mark.parametrize("mode", ["sandbox", "nft"])
def test_rootless_refuses_gateway_rules_before_running_anything(mode: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, "rootless", "--mode", mode, "--dry-run", "--net-deny", "udp://@gateway:53", "pasta")
    assert code == 2 and "@gateway needs a gateway address" in err and "Traceback" not in err


def test_the_socket_option_is_found_in_each_spelling() -> None:
    assert socket_path(["-f", "--socket", "/run/a.sock"]) == "/run/a.sock"
    assert socket_path(["--socket=/run/b.sock"]) == "/run/b.sock"
    assert socket_path(["-s", "/run/c.sock", "-t", "80"]) == "/run/c.sock"
    assert socket_path(["--config-net"]) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to ask as another user")
def test_a_socket_the_stack_user_cannot_create_is_refused_up_front() -> None:
    nobody = pwd.getpwnam("nobody")
    with tempfile.TemporaryDirectory(dir="/tmp") as top:  # pytest's own tmp is closed to other users
        os.chmod(top, 0o755)
        closed = Path(top) / "closed"
        closed.mkdir(mode=0o755)
        with pytest.raises(PolicyError, match=rf"--socket {closed}/p.sock: nobody cannot create a file in {closed}"):
            check_socket(["--socket", str(closed / "p.sock")], nobody)
        os.chown(closed, nobody.pw_uid, nobody.pw_gid)
        check_socket(["--socket", str(closed / "p.sock")], nobody)


def test_prepare_launch_is_the_whole_plan_without_the_cli_and_changes_nothing() -> None:
    """Orchestration lives in guestfence.rootless.launch: the nft mode's rules
    come out as data for the stack's user, the argv runs the stack as that user."""
    from guestfence.rootless.launch import Mode, prepare_launch

    nobody = pwd.getpwnam("nobody")
    launch = prepare_launch(Stack.SLIRP4NETNS, target="4242", tap="tap0", netns=None, extra=[],
                            chosen=parse_policy(allow=["tcp://@host:8080"]), explicit_default=False,
                            mode=Mode.NFT, user="nobody", as_user=None)  # fmt: skip
    element = next(c["add"]["element"] for c in launch.rules if "element" in c.get("add", {}))
    assert element["elem"] == [[nobody.pw_uid, {"jump": {"target": f"owner.{nobody.pw_uid}"}}]]
    assert launch.argv[-3:] == ("--mtu=65520", "4242", "tap0") and launch.unresolved == {}
    if os.geteuid() == 0:
        assert launch.argv[:2] == ("setpriv", f"--reuid={nobody.pw_uid}")
    assert launch.shown() == {"command": list(launch.argv), "nftables": list(launch.rules)}
    with pytest.raises(PolicyError, match="--user root"):
        prepare_launch(Stack.PASTA, target="", tap="tap0", netns=None, extra=[], chosen=parse_policy(),
                       explicit_default=False, mode=Mode.NFT, user="root", as_user=None)  # fmt: skip
