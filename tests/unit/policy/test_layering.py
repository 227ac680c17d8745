"""The policy core's modules import one way only: rules <- grammar <- model <- decide.

Read from the source (every import, lazy ones inside functions included),
so a cycle cannot hide behind an import placed in a function body."""

from __future__ import annotations

import ast
from pathlib import Path

import guestfence.policy

PACKAGE = Path(guestfence.policy.__file__).parent


def _policy_imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("guestfence.policy."):
            found.add(node.module.rsplit(".", 1)[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.rsplit(".", 1)[1] for a in node.names if a.name.startswith("guestfence.policy.")}
    return found


def test_the_policy_modules_have_no_import_cycle() -> None:
    graph = {p.stem: _policy_imports(p.stem) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}

    def reaches(start: str, goal: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))

    assert [m for m in graph if reaches(m, m)] == []
    assert graph["rules"] == set() and graph["grammar"] == {"rules"} and "model" not in graph["grammar"]
