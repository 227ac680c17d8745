"""What `make install` costs a machine: the apt packages a package list pulls
into a minimal Debian (Priority required/important excluded, Recommends
followed as apt does by default) and the venv, before and after the split
of run-time from test-time packages.

    .venv/bin/python bench/install_size.py

The apt figure is the sum of Installed-Size over the dependency closure
apt-cache reports; the venv figure is `du` of a fresh venv made as the
Makefile makes it, with and without the test extras.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "python3 python3-venv python3-nftables python3-seccomp nftables iproute2 iputils-ping procps passt slirp4netns gcc chromium ethtool"


def makefile_list(name: str) -> str:
    text = (ROOT / "Makefile").read_text()
    return re.search(rf"^{name}\s*:=(.*)$", text, re.M).group(1).strip()  # type: ignore[union-attr]


def closure(packages: list[str], *, recommends: bool) -> set[str]:
    """The packages apt would install: Depends and Pre-Depends (and
    Recommends, as apt does by default), the first alternative of each
    group, the first provider of a virtual package."""
    kinds = ("Depends", "PreDepends") + (("Recommends",) if recommends else ())
    seen: set[str] = set()
    todo = list(packages)
    while todo:
        batch = sorted(set(todo) - seen)
        todo = []
        seen.update(batch)
        if not batch:
            break
        out = subprocess.run(["apt-cache", "depends", *batch], capture_output=True, text=True).stdout
        lines = out.splitlines()
        index, in_group = 0, False
        while index < len(lines):
            line = lines[index]
            match = re.match(r"^  ?(\|?)([A-Za-z]+): (.*)$", line)
            index += 1
            if match is None:
                continue
            alternative, kind, name = match.groups()
            first = not in_group
            in_group = alternative == "|"
            if kind not in kinds or not first:
                continue
            if name.startswith("<"):
                providers = []
                while index < len(lines) and lines[index].startswith("    "):
                    providers.append(lines[index].strip())
                    index += 1
                if providers:
                    todo.append(providers[0])
            else:
                todo.append(name)
    return seen


def sizes(packages: set[str]) -> dict[str, int]:
    out = subprocess.run(["apt-cache", "show", "--no-all-versions", *sorted(packages)], capture_output=True, text=True).stdout
    found = {}
    for block in out.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", block, re.M))
        if "Package" in fields and fields.get("Priority") not in ("required", "important"):
            found[fields["Package"]] = int(fields.get("Installed-Size", 0))
    return found


def venv_size(extras: str) -> int:
    with tempfile.TemporaryDirectory() as where:
        venv = Path(where) / "venv"
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True)
        subprocess.run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", f"{ROOT}{extras}"], check=True,
                       capture_output=True)  # fmt: skip
        return int(subprocess.run(["du", "-sk", str(venv)], capture_output=True, text=True, check=True).stdout.split()[0])


def main() -> None:
    runtime = makefile_list("RUNTIME_APT")
    for label, packages, extras in (("before (one list, test extras)", BEFORE, "[test]"), ("after (make install)", runtime, "")):
        venv_mib = venv_size(extras) / 1024
        for recommends in (False, True):
            found = sizes(closure(packages.split(), recommends=recommends))
            apt_mib = sum(found.values()) / 1024
            print(f"{label}, {'with' if recommends else 'without'} Recommends: apt {apt_mib:.0f} MiB in {len(found)} packages, "
                  f"venv {venv_mib:.0f} MiB, total {apt_mib + venv_mib:.0f} MiB")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
