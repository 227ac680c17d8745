"""Test-suite policy for privileges.

Tests marked ``lab`` need root: they build network namespaces, load
nftables rulesets and run seccomp supervisors against the real kernel. A
developer without root gets them skipped with the reason; under CI=true a
lab test that cannot run is a failure, never a skip.

Property tests (hypothesis) are derandomised under CI=true, so a CI run
checks the same examples every time and a newly found example cannot fail
an unrelated submission; a developer's run explores new examples
(``GUESTFENCE_FUZZ_EXAMPLES=N`` for longer runs).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")


def lab_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces, nftables, seccomp)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = lab_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        return  # pytest_runtest_setup fails them instead
    for item in items:
        if item.get_closest_marker("lab"):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("lab") and os.environ.get("CI") == "true":
        reason = lab_unavailable_reason()
        if reason is not None:
            pytest.fail(f"lab test cannot run under CI=true: {reason}")
