"""plan_targets: which (protocol, host address, port) each listener serves."""

from __future__ import annotations

import ipaddress

import pytest

from guestfence.audit.collect import plan_targets
from guestfence.audit.model import Listener, Process
from guestfence.policy.model import Proto

HOST = [ipaddress.ip_address(a) for a in ("127.0.0.1", "192.0.2.1", "::1", "2001:db8::1", "fe80::1")]


def listener(address: str, port: int = 80, *, proto: Proto = Proto.TCP, v6only: bool = False, pid: int = 1) -> Listener:
    return Listener(
        proto=proto, address=ipaddress.ip_address(address), port=port, v6only=v6only, inode=pid,
        owners=(Process(pid=pid, name=f"svc{pid}"),),
    )  # fmt: skip


def served(*listeners: Listener) -> set[str]:
    return {str(t) for t in plan_targets(listeners, HOST)}


@pytest.mark.parametrize(
    ("bound", "v6only", "expected"),
    [
        ("0.0.0.0", False, {"tcp://127.0.0.1:80", "tcp://192.0.2.1:80"}),
        ("::", True, {"tcp://[::1]:80", "tcp://[2001:db8::1]:80", "tcp://[fe80::1]:80"}),
        ("::", False, {"tcp://127.0.0.1:80", "tcp://192.0.2.1:80", "tcp://[::1]:80", "tcp://[2001:db8::1]:80",
                       "tcp://[fe80::1]:80"}),
        ("192.0.2.1", False, {"tcp://192.0.2.1:80"}),
        ("127.0.0.1", False, {"tcp://127.0.0.1:80"}),
        ("2001:db8::1", True, {"tcp://[2001:db8::1]:80"}),
    ],
)  # fmt: skip
def test_each_listener_expands_to_the_host_addresses_it_accepts(bound: str, v6only: bool, expected: set[str]) -> None:
    assert served(listener(bound, v6only=v6only)) == expected


def test_an_address_the_host_does_not_own_is_never_a_target() -> None:
    assert served(listener("203.0.113.9")) == set()


def test_listeners_on_the_same_target_are_kept_together() -> None:
    targets = plan_targets([listener("0.0.0.0", pid=7), listener("192.0.2.1", pid=9)], HOST)
    by_text = {str(t): t for t in targets}
    assert [p.pid for lst in by_text["tcp://192.0.2.1:80"].listeners for p in lst.owners] == [7, 9]
    assert by_text["tcp://192.0.2.1:80"].owned_by == "svc7[7], svc9[9]"
    assert by_text["tcp://127.0.0.1:80"].owned_by == "svc7[7]"


def test_udp_and_tcp_on_one_port_are_two_targets() -> None:
    assert served(listener("192.0.2.1", 53), listener("192.0.2.1", 53, proto=Proto.UDP)) == {
        "tcp://192.0.2.1:53",
        "udp://192.0.2.1:53",
    }


def test_targets_come_in_a_stable_order() -> None:
    texts = [str(t) for t in plan_targets([listener("::", 22), listener("0.0.0.0", 8080)], HOST)]
    assert texts == [
        "tcp://127.0.0.1:22", "tcp://127.0.0.1:8080", "tcp://192.0.2.1:22", "tcp://192.0.2.1:8080",
        "tcp://[::1]:22", "tcp://[2001:db8::1]:22", "tcp://[fe80::1]:22",
    ]  # fmt: skip
