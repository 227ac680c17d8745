"""Fixtures for tests that boot VMs (marked ``vm``).

``kernel`` is Debian's kernel made bootable (built once, then cached under
build/vm/). Without QEMU, busybox-static or apt's lists a ``vm`` test is
skipped with the reason, and fails under CI=true, like the lab tests.
Inside a test VM (``/run/vm`` is its exchange directory) the ``vm`` tests
are not run: TCG inside TCG would take hours.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.lab.conftest import lab  # noqa: F401  (the VM-on-a-TAP test builds a lab)
from tests.vm.debian_kernel import BUSYBOX, Kernel, KernelBuildError, debian_kernel
from tests.vm.machine import QEMU


def _cannot(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"vm test cannot run under CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def kernel() -> Kernel:
    """name: kernel; scope: session. Debian's kernel, initramfs and modules, from the build/vm cache."""
    if Path("/run/vm/run.sh").exists():
        pytest.skip("already inside a test VM: no VM in a VM")
    if shutil.which(QEMU) is None or not BUSYBOX.exists():
        _cannot(f"{QEMU} and {BUSYBOX} are needed (apt: qemu-system-x86 busybox-static)")
    try:
        return debian_kernel()
    except KernelBuildError as err:
        _cannot(str(err))
        raise
