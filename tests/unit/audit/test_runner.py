"""The probe runner's protocol, parent side."""

from __future__ import annotations

import json

import pytest

from guestfence.audit.model import Status
from guestfence.audit.runner import decode_results, encode_request
from guestfence.errors import HostError
from tests.unit.audit.helpers import observed

TARGETS = [observed("tcp://192.0.2.1:22", Status.REACHABLE).target, observed("udp://[2001:db8::1]:53", Status.REACHABLE).target]


def test_request_carries_targets_bounds_and_interfaces() -> None:
    request = json.loads(encode_request(TARGETS, timeout=1.5, parallel=8, interfaces=[(2, "eth0")]))
    assert request == {
        "timeout": 1.5, "parallel": 8, "interfaces": [[2, "eth0"]],
        "targets": [{"proto": "tcp", "address": "192.0.2.1", "port": 22},
                    {"proto": "udp", "address": "2001:db8::1", "port": 53}],
    }  # fmt: skip


def test_results_become_observations_of_the_same_targets() -> None:
    answer = json.dumps([{"status": "REACHABLE", "detail": "connected"}, {"status": "NO_ANSWER", "detail": "quiet"}])
    first, second = decode_results(TARGETS, answer)
    assert (first.target, first.status, first.detail) == (TARGETS[0], Status.REACHABLE, "connected")
    assert (second.target, second.status) == (TARGETS[1], Status.NO_ANSWER)


@pytest.mark.parametrize(
    "answer",
    ["", "[]", '[{"status": "OPEN", "detail": ""}, {"status": "OPEN", "detail": ""}]', '{"a": 1}', "[1, 2]"],
)
def test_a_malformed_answer_is_a_host_error(answer: str) -> None:
    with pytest.raises(HostError, match="the probe runner answered nonsense"):
        decode_results(TARGETS, answer)
