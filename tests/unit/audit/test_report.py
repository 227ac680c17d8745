"""The table, the JSON and the HTML page of an audit."""

from __future__ import annotations

import json
from html.parser import HTMLParser

from guestfence.audit.model import Status
from guestfence.audit.report import AuditReport, format_report_table, format_summary, render_html, report_json
from guestfence.policy.model import parse_policy
from tests.unit.audit.helpers import GATEWAY, HOST, findings, observed

ALLOW = ("tcp://@gateway:8080",)


def sample(owner: str = "svc") -> AuditReport:
    seen = [
        observed("tcp://192.0.2.10:22", Status.FILTERED, "no answer within the time bound", owner),
        observed("tcp://192.0.2.1:8080", Status.REACHABLE, "connected", owner),
        observed("tcp://192.0.2.1:22", Status.REACHABLE, "connected", owner),
        observed("udp://192.0.2.1:53", Status.NO_ANSWER, "no reply and no ICMP error", owner),
        observed("tcp://192.0.2.1:9000", Status.REFUSED, "connection refused", owner),
    ]
    return AuditReport(
        guest="netns g1", policy=parse_policy(allow=ALLOW), host_addresses=HOST, gateways=(GATEWAY,),
        findings=findings(seen, allow=ALLOW), generated="2026-01-01 00:00:00 UTC", udp=True,
    )  # fmt: skip


def test_table_shows_violations_first_with_owner_probe_and_rule() -> None:
    rows = format_report_table(sample())
    assert rows[0] == ("VERDICT", "SERVICE", "OWNER", "PROBE", "POLICY", "WHY")
    assert rows[1] == ("violation", "tcp://192.0.2.1:22", "svc[42]", "reachable", "default deny", "connected")
    assert [r[0] for r in rows[1:]] == ["violation", "unknown", "allowed", "blocked", "blocked"]
    assert [r[1] for r in rows[4:]] == ["tcp://192.0.2.1:9000", "tcp://192.0.2.10:22"]


def test_summary_counts_each_verdict() -> None:
    assert format_summary(sample()) == "netns g1: 5 services probed: violation: 1, unknown: 1, allowed: 1, blocked: 2"


def test_json_is_complete_for_machines() -> None:
    data = json.loads(json.dumps(report_json(sample())))
    assert data["violations"] == 1
    assert data["policy"] == {"default": "deny", "allow": ["tcp://@gateway:8080"], "deny": []}
    assert data["gateways"] == ["192.0.2.1"]
    first = data["findings"][0]
    assert first == {
        "service": "tcp://192.0.2.1:22", "proto": "tcp", "address": "192.0.2.1", "port": 22,
        "owners": [{"pid": 42, "name": "svc"}],
        "listeners": [{"address": "::", "port": 22, "v6only": False, "device": None}],
        "probe": "reachable", "detail": "connected", "policy": "deny", "decided_by": "default deny",
        "verdict": "violation",
    }  # fmt: skip


class Cells(HTMLParser):
    """The text of each table row of the page, and any script it carries."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.tags: set[str] = set()
        self._in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag == "tr":
            self.rows.append([])
        self._in_cell = tag in ("td", "th")
        if self._in_cell:
            self.rows[-1].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data: str) -> None:
        if self._in_cell:
            self.rows[-1][-1] += data


def test_html_page_carries_the_same_rows_as_the_table() -> None:
    page = render_html(sample())
    cells = Cells()
    cells.feed(page)
    assert cells.rows == [
        ["Verdict", "Service", "Owner", "Probe", "Policy", "Why"],
        *[list(r) for r in format_report_table(sample())[1:]],
    ]
    assert "script" not in cells.tags and "link" not in cells.tags


def test_html_escapes_what_the_host_reports() -> None:
    page = render_html(sample(owner="<script>alert(1)</script>"))
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;[42]" in page
