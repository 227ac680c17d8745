"""The README's own examples run as written: its policy file, and every
``guestfence check|explain`` line of it (the commands that need no root or
network namespace; tests/lab/test_readme_guests.py runs the guest ones)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.lab.netlab import GUESTFENCE

README = Path(__file__).parents[2] / "README.md"


def readme_commands(verbs: tuple[str, ...]) -> list[list[str]]:
    """Indented ``guestfence VERB ...`` lines, with their backslash continuations, comments cut."""
    text = README.read_text(encoding="utf-8").replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        words = shlex.split(line.strip(), comments=True) if line.startswith("    guestfence ") else []
        if len(words) > 1 and words[1] in verbs:
            found.append(words[1:])
    return found


def readme_policy_file() -> str:
    """The block after ``# policy.toml``, up to the first blank line."""
    block = re.search(r"^    # policy\.toml\n((?:    .+\n)+\n(?:    .+\n)+)", README.read_text(encoding="utf-8"), re.M)
    assert block, "README lost its policy.toml example"
    return "\n".join(line[4:] for line in block.group(1).splitlines()) + "\n"


@pytest.mark.parametrize("argv", readme_commands(("check", "explain")), ids=" ".join)
def test_readme_example_runs_as_written(tmp_path: Path, argv: list[str]) -> None:
    (tmp_path / "policy.toml").write_text(readme_policy_file())
    done = subprocess.run([GUESTFENCE, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


def test_the_readme_has_examples_to_run() -> None:
    assert len(readme_commands(("check", "explain"))) >= 3


def test_the_layout_section_names_every_package_and_module_that_exists() -> None:
    """Each package and top-level module of src/guestfence is in the README's
    layout, and each one the layout names exists."""
    text = README.read_text(encoding="utf-8")
    layout = text[text.index("## Layout"):text.index("## Testing")]
    source = README.parent / "src" / "guestfence"
    named = set(re.findall(r"(?m)^      (\w+(?:/|\.py))", layout))
    named |= set(re.findall(r"   (\w+(?:/|\.py))  ", layout))  # a second column: "sandbox/ ...  audit/ ..."
    present = {p.name + "/" for p in source.iterdir() if (p / "__init__.py").exists()}
    present |= {p.name for p in source.glob("*.py") if p.name != "__init__.py"}
    assert named - present == set(), "the layout names what does not exist"
    assert present - named == set(), "the layout leaves these out"
