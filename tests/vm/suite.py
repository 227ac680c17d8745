"""The second pass of ``make test``: the sandbox and lab tests on Debian's kernel.

``python -m tests.vm.suite [PYTEST ARGS]`` boots the kernel that
``linux-image-amd64`` names (Linux 6.1 on Debian 12) under QEMU with this
machine's / as the VM's root, runs ``pytest tests/sandbox tests/lab`` there
under CI=true (a test that cannot run fails instead of skipping), shows the
VM's console as it goes, and exits with pytest's status: 125 when the VM
stopped without one (crash, panic, time limit). PYTEST ARGS are added to
the command; if any of them names a test path, it replaces the default
selection, e.g. ``tests/lab/test_lockdown_receive.py -x``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tests.vm.debian_kernel import REPO, debian_kernel
from tests.vm.machine import run_in_vm

DEFAULT_SELECTION = ["tests/sandbox", "tests/lab"]
# Well above the ~10 minutes the pass takes on an idle 2-core machine: a
# loaded CI runner slows TCG down, and per-test limits (pytest-timeout) catch hangs.
LIMIT_SECONDS = 45 * 60


def main(args: list[str]) -> int:
    started = time.monotonic()
    kernel = debian_kernel()
    print(f"[vm pass: {kernel.package}, cached in {kernel.directory}]", flush=True)
    python = REPO / ".venv" / "bin" / "python"
    names_tests = any(Path(arg.partition("::")[0]).exists() for arg in args if not arg.startswith("-"))
    selection = [] if names_tests else DEFAULT_SELECTION
    pytest = [str(python), "-m", "pytest", "-p", "no:cacheprovider", "-m", "not vm", *args, *selection]
    env = {"CI": "true", "PYTHONDONTWRITEBYTECODE": "1"}
    ran = run_in_vm(pytest, cwd=REPO, env=env, timeout=LIMIT_SECONDS, echo=sys.stdout)
    took = time.monotonic() - started
    if ran.status is None:
        print(f"[vm pass: the VM stopped without a result after {took:.0f} s]", flush=True)
        return 125
    print(f"[vm pass on {kernel.version}: pytest exited {ran.status} after {took:.0f} s]", flush=True)
    return ran.status


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main(sys.argv[1:]))
