"""The HTML report, opened in headless Chromium: the table renders, one row
per finding, worst first. Chromium runs in an empty network namespace of
its own, so opening the report cannot send anything anywhere."""

from __future__ import annotations

import os
import re
import shutil
import struct
from pathlib import Path

import pytest

from tests.lab.audit_scene import REACHABLE_WITHOUT_RULES, build_scene
from tests.lab.netlab import Lab, sh

pytestmark = pytest.mark.lab

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)  # fmt: skip
ROW = re.compile(r'<tr class="([a-z-]+)"><td>([^<]*)</td><td class="service">([^<]*)</td>')


def chromium(lab: Lab, tmp_path: Path, *args: str) -> str:
    if shutil.which("chromium") is None:
        message = "chromium is not installed (make install adds it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    offline = lab.netns("gfch")
    done = sh(
        "chromium", *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args,
        netns=offline, timeout=120,
    )  # fmt: skip
    return done.stdout


def test_html_report_renders_its_table_in_chromium(lab: Lab, tmp_path: Path) -> None:
    scene = build_scene(lab)
    page = tmp_path / "report.html"
    done = scene.audit("--udp", "--net-allow", "tcp://@gateway:8080", "--html", str(page))
    assert done.returncode == 1, done.stderr

    dom = chromium(lab, tmp_path, "--dump-dom", page.as_uri())
    rows = ROW.findall(dom)
    assert len(rows) == 18
    assert {service for _, verdict, service in rows if verdict == "violation"} == REACHABLE_WITHOUT_RULES - {
        "tcp://192.0.2.1:8080"
    }
    verdicts = [verdict for _, verdict, _ in rows]
    assert verdicts == sorted(verdicts, key=["violation", "unknown", "allowed", "blocked"].index)
    assert all(css == verdict.replace(" ", "-") for css, verdict, _ in rows)

    shot = tmp_path / "report.png"
    chromium(lab, tmp_path, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri())
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1200, 900)
    assert len(png) > 50_000, "a blank page compresses to a few kilobytes"
