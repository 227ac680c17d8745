"""compare(policy, observations, context) -> findings. Pure: no I/O.

Each observation is decided by the policy core (``decide``, the single
source of truth) and placed in one of five verdicts:

    probe saw            policy allows    policy denies
    reachable            ALLOWED          VIOLATION
    not reachable        MISSING          BLOCKED
    cannot tell (UDP)    UNKNOWN          UNKNOWN

Only a VIOLATION fails an audit: a UDP silence proves nothing either way,
so it is reported as unknown, never counted as blocked.

``audit_context`` builds the decision context from what was observed:
``@host`` is every host address the audit found, ``@gateway`` the guest's
gateways as the guest sees them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from guestfence.audit.model import Finding, Observation, Verdict
from guestfence.policy.decide import decide
from guestfence.policy.model import Address, Context, Policy, local_types


def audit_context(
    *,
    host_addresses: Iterable[Address],
    gateways: Iterable[Address],
    names: Mapping[str, frozenset[Address]] | None = None,
) -> Context:
    hosts = frozenset(host_addresses)
    return Context(gateways=frozenset(gateways), address_type=local_types(hosts), names=dict(names or {}))


def compare(policy: Policy, observations: Iterable[Observation], context: Context) -> tuple[Finding, ...]:
    return tuple(_finding(policy, o, context) for o in observations)


def _finding(policy: Policy, observation: Observation, context: Context) -> Finding:
    decision = decide(policy, observation.target.flow, context)
    if not observation.status.known:
        verdict = Verdict.UNKNOWN
    elif observation.status.reachable:
        verdict = Verdict.ALLOWED if decision.allowed else Verdict.VIOLATION
    else:
        verdict = Verdict.MISSING if decision.allowed else Verdict.BLOCKED
    return Finding(observation=observation, decision=decision, verdict=verdict)


def violations(findings: Iterable[Finding]) -> tuple[Finding, ...]:
    return tuple(f for f in findings if f.verdict is Verdict.VIOLATION)
