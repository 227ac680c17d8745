"""Lab fixtures: each test gets its own ``Lab``, removed at teardown."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.lab.netlab import Lab


@pytest.fixture
def lab() -> Iterator[Lab]:
    """name: lab; scope: function. Namespaces, links and processes, all removed after the test."""
    made = Lab()
    try:
        yield made
    finally:
        made.close()
