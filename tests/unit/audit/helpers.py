"""Values for audit unit tests."""

from __future__ import annotations

import ipaddress

from guestfence.audit.compare import audit_context, compare
from guestfence.audit.model import Finding, Listener, Observation, Process, Status, Target
from guestfence.policy.model import parse_policy
from guestfence.policy.model import Proto

HOST = tuple(ipaddress.ip_address(a) for a in ("127.0.0.1", "192.0.2.1", "198.51.100.1", "2001:db8::1"))
GATEWAY = ipaddress.ip_address("192.0.2.1")


def observed(service: str, status: Status, detail: str = "", owner: str = "svc") -> Observation:
    proto, rest = service.split("://")
    host, port = rest.rsplit(":", 1)
    listener = Listener(
        proto=Proto(proto), address=ipaddress.ip_address("::"), port=int(port), inode=1,
        owners=(Process(pid=42, name=owner),),
    )  # fmt: skip
    target = Target(
        proto=Proto(proto), address=ipaddress.ip_address(host.strip("[]")), port=int(port), listeners=(listener,)
    )
    return Observation(target=target, status=status, detail=detail)


def findings(observations: list[Observation], allow: tuple[str, ...] = (), deny: tuple[str, ...] = ()) -> tuple[Finding, ...]:
    policy = parse_policy(allow=allow, deny=deny)
    return compare(policy, observations, audit_context(host_addresses=HOST, gateways=[GATEWAY]))
