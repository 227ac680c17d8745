"""One audit, start to finish (I/O): which policy, which targets, probed
from where, compared how. ``guestfence audit`` parses its arguments, calls
``collect_audit`` and renders the ``Audit`` it returns.

- The policy is the caller's, or a registered guest's own (``guest``
  without a policy); a registered guest's DNS names are the addresses they
  resolved to when it was applied, a given policy's are resolved here once
  (``resolve=False``: not at all), and names that did not resolve are
  returned for the caller to show (``Audit.unresolved``).
- ``@gateway`` is the registered guest's gateways, else the gateways the
  guest's namespace routes through (a sandbox has none).
- ``netns``: probes from inside that namespace; None: from a child
  sandboxed under the policy, plus the host's unix listeners.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import final

from guestfence.audit.collect import collect_listeners, plan_targets
from guestfence.audit.compare import audit_context, compare
from guestfence.audit.counters import open_counters
from guestfence.audit.probe import DEFAULT_TIMEOUT, probe_netns
from guestfence.audit.report import AuditReport
from guestfence.audit.sandboxed import probe_sandboxed
from guestfence.audit.unixsock import UnixFinding, collect_unix_listeners, compare_unix, probe_unix_sandboxed
from guestfence.errors import PolicyError
from guestfence.netinfo import collect_host_addresses
from guestfence.guests.firewall import Registered
from guestfence.operations import read_registry
from guestfence.policy.model import Policy
from guestfence.resolve import resolve_names
from guestfence.state import state_dir


@final
@dataclass(frozen=True, kw_only=True)
class Audit:
    report: AuditReport
    unresolved: Mapping[str, str] = field(default_factory=dict, hash=False)


def collect_audit(
    *, netns: str | None, policy: Policy | None, guest: str | None = None, state_dir: str | None = None,
    udp: bool = False, timeout: float = DEFAULT_TIMEOUT, resolve: bool = True,
) -> Audit:  # fmt: skip
    """Audit from ``netns`` (None: a sandboxed child) against ``policy``, or
    against registered ``guest``'s own when ``policy`` is None."""
    registered = _registered(guest, state_dir) if guest is not None else None
    unresolved: Mapping[str, str] = {}
    if policy is None:
        if registered is None:
            raise PolicyError("no policy to audit against: give a policy or a registered guest")
        policy, names = registered.guest.policy, dict(registered.names)
    elif resolve and policy.names():
        resolution = resolve_names(policy.names())
        names, unresolved = dict(resolution.addresses), resolution.failures
    else:
        names = {}
    host_addresses = collect_host_addresses()
    targets = plan_targets(collect_listeners(udp=udp), host_addresses)
    unix_findings: tuple[UnixFinding, ...] = ()
    if netns is None:
        probed = probe_sandboxed(targets, policy, timeout=timeout)
        unix_findings = compare_unix(policy, probe_unix_sandboxed(collect_unix_listeners(), policy, timeout=timeout))
    else:
        probed = probe_netns(targets, netns, timeout=timeout, nft=open_counters() if udp else None)
    seen_gateways = registered.guest.gateways if registered is not None else probed.view.gateways
    gateways = tuple(sorted(seen_gateways, key=lambda a: (a.version, int(a))))
    context = audit_context(host_addresses=host_addresses, gateways=gateways, names=names)
    report = AuditReport(
        guest="sandbox" if netns is None else f"netns {netns}",
        policy=policy,
        host_addresses=host_addresses,
        gateways=gateways,
        findings=compare(policy, probed.observations, context),
        generated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        udp=udp,
        unix_findings=unix_findings,
    )
    return Audit(report=report, unresolved=unresolved)


def _registered(name: str, directory: str | None) -> Registered:
    registry = read_registry(directory or state_dir())
    found = registry.find(name)
    if found is None:
        known = ", ".join(g.name for g in registry.guests()) or "none"
        raise PolicyError(f"no registered guest {name!r} (registered: {known})")
    return found

