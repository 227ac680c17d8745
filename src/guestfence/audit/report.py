"""An audit's findings as a table for people, JSON for machines and one
self-contained HTML page for sharing. Pure: values in, text out.

The HTML page has its style inline and no script, so it opens from a file,
a mail attachment or a ticket without a server. Every value in it is
escaped: service owners and interface names come from the host and are
not trusted as markup.
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass
from typing import Any, final

from guestfence.audit.model import Finding, Verdict
from guestfence.audit.unixsock import UnixFinding
from guestfence.policy.model import Address, Policy

VERDICT_ORDER = (Verdict.VIOLATION, Verdict.MISSING, Verdict.UNKNOWN, Verdict.ALLOWED, Verdict.BLOCKED)
"""Rows are shown worst first."""


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class AuditReport:
    guest: str
    """What was audited: ``netns NAME`` or ``sandbox``."""
    policy: Policy
    host_addresses: tuple[Address, ...]
    gateways: tuple[Address, ...]
    findings: tuple[Finding, ...]
    generated: str = ""
    udp: bool = False
    unix_findings: tuple[UnixFinding, ...] = ()
    """Host unix listeners probed (``audit --sandbox`` only)."""

    @property
    def rows(self) -> tuple[Finding, ...]:
        return tuple(sorted(self.findings, key=_row_key))

    @property
    def unix_rows(self) -> tuple[UnixFinding, ...]:
        return tuple(sorted(self.unix_findings, key=lambda f: (VERDICT_ORDER.index(f.verdict), str(f.listener))))

    @property
    def summary(self) -> dict[str, int]:
        counts = Counter(f.verdict for f in (*self.findings, *self.unix_findings))
        return {v.value: counts.get(v, 0) for v in VERDICT_ORDER}

    @property
    def violations(self) -> int:
        return self.summary[Verdict.VIOLATION.value]


def format_report_table(report: AuditReport) -> list[tuple[str, ...]]:
    """Header plus one row per finding: the service, its owner, what the probe
    saw, what the policy says and why."""
    rows = [("VERDICT", "SERVICE", "OWNER", "PROBE", "POLICY", "WHY")]
    for f in report.rows:
        rows.append((
            f.verdict.value,
            str(f.target),
            f.target.owned_by,
            f.observation.status.value,
            f.decision.decided_by,
            f.observation.detail,
        ))  # fmt: skip
    for u in report.unix_rows:
        rows.append((u.verdict.value, str(u.listener), u.listener.owned_by, u.status.value,
                     u.decision.decided_by, u.detail))
    return rows


def format_summary(report: AuditReport) -> str:
    parts = [f"{verdict}: {count}" for verdict, count in report.summary.items() if count]
    probed = len(report.findings) + len(report.unix_findings)
    return f"{report.guest}: {probed} services probed: " + (", ".join(parts) or "none")


def report_json(report: AuditReport) -> dict[str, Any]:
    return {
        "guest": report.guest,
        "generated": report.generated,
        "udp": report.udp,
        "policy": {
            "default": report.policy.default.value,
            "allow": [str(r) for r in report.policy.allow + report.policy.allow_unix],
            "deny": [str(r) for r in report.policy.deny + report.policy.deny_unix],
        },
        "host_addresses": [str(a) for a in report.host_addresses],
        "gateways": [str(a) for a in report.gateways],
        "summary": report.summary,
        "violations": report.violations,
        "findings": [_finding_json(f) for f in report.rows],
        "unix_findings": [_unix_finding_json(u) for u in report.unix_rows],
    }


def _unix_finding_json(u: UnixFinding) -> dict[str, Any]:
    return {
        "service": str(u.listener.flow),
        "type": str(u.listener).rpartition("(")[2].rstrip(")"),
        "bound_as": u.listener.address,
        "owners": [{"pid": p.pid, "name": p.name} for p in u.listener.owners],
        "probe": u.status.value,
        "detail": u.detail,
        "policy": u.decision.action.value,
        "decided_by": u.decision.decided_by,
        "verdict": u.verdict.value,
    }


def _finding_json(f: Finding) -> dict[str, Any]:
    target = f.target
    return {
        "service": str(target),
        "proto": target.proto.value,
        "address": str(target.address),
        "port": target.port,
        "owners": sorted(
            ({"pid": p.pid, "name": p.name} for lst in target.listeners for p in lst.owners),
            key=lambda p: p["pid"],
        ),
        "listeners": [
            {"address": str(lst.address), "port": lst.port, "v6only": lst.v6only, "device": lst.device}
            for lst in target.listeners
        ],
        "probe": f.observation.status.value,
        "detail": f.observation.detail,
        "policy": f.decision.action.value,
        "decided_by": f.decision.decided_by,
        "verdict": f.verdict.value,
    }


_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: .2em; }
.meta { color: #555; margin: .2em 0 1em; }
.summary span { display: inline-block; margin-right: 1em; padding: .2em .6em; border-radius: .3em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35em .6em; border-bottom: 1px solid #ddd; vertical-align: top; }
th { background: #f2f2f2; }
td.service { font-family: ui-monospace, monospace; white-space: nowrap; }
.violation { background: #fbd5d5; }
.allowed-but-unreachable { background: #fdf0c8; }
.unknown { background: #e8e8f4; }
.allowed { background: #dcf2dc; }
.blocked { background: #f7f7f7; }
code { font-family: ui-monospace, monospace; }
"""


def render_html(report: AuditReport) -> str:
    """The whole report as one HTML document."""
    e = html.escape
    summary = "".join(
        f'<span class="{_css_class(verdict)}">{count} {e(verdict)}</span>' for verdict, count in report.summary.items()
    )
    rows = "".join(
        f'<tr class="{_css_class(f.verdict.value)}">'
        f"<td>{e(f.verdict.value)}</td>"
        f'<td class="service">{e(str(f.target))}</td>'
        f"<td>{e(f.target.owned_by)}</td>"
        f"<td>{e(f.observation.status.value)}</td>"
        f"<td>{e(f.decision.decided_by)}</td>"
        f"<td>{e(f.observation.detail)}</td></tr>\n"
        for f in report.rows
    ) + "".join(
        f'<tr class="{_css_class(u.verdict.value)}">'
        f"<td>{e(u.verdict.value)}</td>"
        f'<td class="service">{e(str(u.listener))}</td>'
        f"<td>{e(u.listener.owned_by)}</td>"
        f"<td>{e(u.status.value)}</td>"
        f"<td>{e(u.decision.decided_by)}</td>"
        f"<td>{e(u.detail)}</td></tr>\n"
        for u in report.unix_rows
    )
    policy = report.policy
    rules = [f"default {policy.default.value}"]
    rules += [f"allow {r}" for r in policy.allow + policy.allow_unix]
    rules += [f"deny {r}" for r in policy.deny + policy.deny_unix]
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>guestfence audit: {e(report.guest)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>What {e(report.guest)} can reach on its host</h1>
<p class="meta">Generated {e(report.generated or "(time unknown)")} by <code>guestfence audit</code>.
Host addresses: {e(", ".join(map(str, report.host_addresses)) or "none")}.
Guest's gateways: {e(", ".join(map(str, report.gateways)) or "none")}.
UDP {"probed" if report.udp else "not probed"}.</p>
<p class="meta">Policy: {"; ".join(f"<code>{e(r)}</code>" for r in rules)}</p>
<p class="summary">{summary}</p>
<table id="findings">
<thead><tr><th>Verdict</th><th>Service</th><th>Owner</th><th>Probe</th><th>Policy</th><th>Why</th></tr></thead>
<tbody>
{rows}</tbody>
</table>
</body>
</html>
"""


def _css_class(verdict: str) -> str:
    return verdict.replace(" ", "-")


def _row_key(f: Finding) -> tuple[int, str, int, int, int]:
    t = f.target
    return (VERDICT_ORDER.index(f.verdict), t.proto.value, t.address.version, int(t.address), t.port)
