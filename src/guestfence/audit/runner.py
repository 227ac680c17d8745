"""The probe runner: a small program that probes from wherever it runs.

``guestfence audit --sandbox`` starts it as a sandboxed child
(``python -m guestfence.audit.runner``), so the probes meet the same seccomp
supervisor a sandboxed guest would. Protocol, one JSON document each way:

    stdin   {"timeout": S, "parallel": N, "interfaces": [[index, name], ...],
             "targets": [{"proto": "tcp", "address": "192.0.2.1", "port": 22}, ...]}
    stdout  [{"status": "REACHABLE", "detail": "connected"}, ...]   one per target, in order

The runner opens only the probe sockets (no netlink: the host's interfaces
come on stdin), so nothing but the probes meets the supervisor.
``encode_request``/``decode_results`` are the parent's side; both pure.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
from collections.abc import Sequence
from typing import Any

from guestfence.audit.model import Observation, Status, Target
from guestfence.audit.probe import probe_targets
from guestfence.errors import HostError
from guestfence.policy.model import Proto


def encode_request(
    targets: Sequence[Target], *, timeout: float, parallel: int, interfaces: Sequence[tuple[int, str]]
) -> str:
    return json.dumps({
        "timeout": timeout,
        "parallel": parallel,
        "interfaces": [list(i) for i in interfaces],
        "targets": [{"proto": t.proto.value, "address": str(t.address), "port": t.port} for t in targets],
    })  # fmt: skip


def decode_results(targets: Sequence[Target], text: str) -> tuple[Observation, ...]:
    """The runner's answer as observations of ``targets``. Raises HostError if malformed."""
    try:
        results = json.loads(text)
        if len(results) != len(targets):
            raise ValueError(f"{len(results)} results for {len(targets)} targets")
        return tuple(
            Observation(target=t, status=Status[r["status"]], detail=str(r["detail"])) for t, r in zip(targets, results)
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise HostError(f"the probe runner answered nonsense: {exc}") from exc


def main() -> int:
    request: dict[str, Any] = json.load(sys.stdin)
    targets = [
        Target(proto=Proto(t["proto"]), address=ipaddress.ip_address(t["address"]), port=int(t["port"]))
        for t in request["targets"]
    ]
    observations = probe_targets(
        targets,
        open_sockets=lambda specs: [socket.socket(family, kind) for family, kind in specs],
        interfaces=[(int(index), str(name)) for index, name in request["interfaces"]],
        timeout=float(request["timeout"]),
        parallel=int(request["parallel"]),
    )
    json.dump([{"status": o.status.name, "detail": o.detail} for o in observations], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
