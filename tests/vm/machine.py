"""Boot Debian's kernel under QEMU and run something in it.

``VirtualMachine`` starts QEMU (TCG: this machine's KVM cannot run stock
kernels) on the kernel and initramfs from ``debian_kernel``, with a fresh
exchange directory shared over 9p at ``/run/vm`` in the guest. The guest
runs ``script`` (busybox sh, or the host's /bin/sh when ``host_root``) and
powers off; the script's exit status comes back in ``VmRun.status``, and
``None`` there means the VM never got to write it (crash, panic, timeout).
With ``host_root`` the guest's / is the host's (read-only, under a tmpfs
overlay, so the project's venv runs unchanged, wherever the checkout is:
/tmp included, so /tmp is the overlay's too) with /proc, /sys, /dev and /run
of its own, lo up, /dev/net/tun and the kernel's modules
autoloading. ``run_in_vm`` is the common case: one command, host root.

Leaving the ``with`` block (or ``close()``) kills QEMU and removes the
exchange directory, whatever the guest did. ``qemu_args`` adds devices,
e.g. ``-netdev tap,...`` for a VM on a TAP; ``netns`` runs QEMU in a
network namespace, where such a TAP lives; ``pass_fds`` are open files
QEMU inherits at the same numbers (a macvtap's, for ``-netdev tap,fd=N``).
"""

from __future__ import annotations

import codecs
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tests.vm.debian_kernel import Kernel, debian_kernel

QEMU = "qemu-system-x86_64"
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Run before the command when the guest's root is the host's. The kernel
# opens /dev/net/tun's module on first open of the node, which Debian
# creates at boot from modules.devname (kmod static-nodes); made here.
HOST_ROOT_SETUP = """\
mkdir -p /dev/pts /dev/shm /dev/net
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mknod -m 666 /dev/net/tun c 10 200
ip link set lo up
hostname guestfence-vm
"""

POWER_OFF = """\
sync
echo o >/proc/sysrq-trigger
while :; do sleep 60 2>/dev/null; done
"""


class VmError(RuntimeError):
    """QEMU is missing or the VM could not be started."""


@dataclass(frozen=True)
class VmRun:
    status: int | None
    """The script's exit status; None when the VM stopped without one."""
    console: str
    """Everything the guest printed on its serial console."""
    seconds: float


def command_script(argv: Sequence[str], cwd: str | os.PathLike[str] | None = None,
                   env: Mapping[str, str] | None = None) -> str:  # fmt: skip
    """A run.sh line running ``argv`` in ``cwd`` with exactly ``env`` (plus PATH)."""
    variables = {"PATH": GUEST_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb", **(env or {})}
    assigned = " ".join(shlex.quote(f"{k}={v}") for k, v in variables.items())
    where = f"cd {shlex.quote(str(cwd))} && " if cwd is not None else ""
    return f"{where}env -i {assigned} {shlex.join(argv)}\n"


class VirtualMachine:
    def __init__(self, script: str, *, host_root: bool = True, memory_mib: int = 3072, cpus: int = 2,
                 qemu_args: Sequence[str] = (), netns: str | None = None, echo: TextIO | None = None,
                 kernel: Kernel | None = None, pass_fds: Sequence[int] = ()) -> None:  # fmt: skip
        if shutil.which(QEMU) is None:
            raise VmError(f"{QEMU} is missing: install qemu-system-x86")
        self.kernel = kernel or debian_kernel()
        self.xchg = Path(tempfile.mkdtemp(prefix="gf-vm-"))
        status = "/run/vm/status"
        body = (HOST_ROOT_SETUP if host_root else "") + script
        (self.xchg / "run.sh").write_text(
            f"#!/bin/sh\n( {body.rstrip()}\n)\necho $? >{status}.tmp && mv {status}.tmp {status}\n{POWER_OFF}"
        )
        # mitigations=off: page-table isolation makes every syscall flush
        # TCG's TLB; tsc=reliable: TCG's TSCs are one clock, but its timing
        # fails the kernel's sync check and the fallback, the emulated HPET,
        # makes each clock_gettime a trap (5x slower). Neither changes what
        # the tests exercise.
        append = ["console=ttyS0", "panic=-1", "quiet", "loglevel=4", "mitigations=off", "tsc=reliable"]
        if host_root:
            append += ["gf.root=host", f"gf.modules={self.kernel.modules}", f"gf.modprobe={self.kernel.modprobe}"]
        argv = [
            QEMU, "-accel", "tcg,thread=multi", "-machine", "pc", "-cpu", "max",
            "-smp", str(cpus), "-m", str(memory_mib),
            "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
            "-kernel", str(self.kernel.vmlinux), "-initrd", str(self.kernel.initramfs),
            "-append", " ".join(append),
            "-device", "virtio-rng-pci",
            "-virtfs", f"local,path={self.xchg},mount_tag=xchg,security_model=none,multidevs=remap",
        ]  # fmt: skip
        if host_root:
            argv += ["-virtfs", "local,path=/,mount_tag=root,security_model=none,readonly=on,multidevs=remap"]
        argv += list(qemu_args)
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]
        self.echo = echo
        self.lines: list[str] = []
        self.started = time.monotonic()
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        pass_fds=tuple(pass_fds))  # fmt: skip
        self.reader = threading.Thread(target=self._read_console, daemon=True)
        self.reader.start()

    def _read_console(self) -> None:
        # In chunks, not lines: pytest's progress dots come without a newline.
        assert self.process.stdout is not None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while chunk := os.read(self.process.stdout.fileno(), 65536):
            text = decoder.decode(chunk).replace("\r", "")
            self.lines.append(text)
            if self.echo is not None:
                self.echo.write(text)
                self.echo.flush()

    def wait(self, timeout: float) -> VmRun:
        """Wait for the guest to power off (killing it after ``timeout`` seconds)."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.lines.append(f"\n[vm: killed after {timeout:.0f} s]\n")
            self.close()
        self.reader.join(timeout=10)
        status_file = self.xchg / "status"
        status = int(status_file.read_text()) if status_file.exists() else None
        return VmRun(status=status, console="".join(self.lines), seconds=time.monotonic() - self.started)

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def __enter__(self) -> VirtualMachine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        shutil.rmtree(self.xchg, ignore_errors=True)


def run_in_vm(argv: Sequence[str], *, cwd: str | os.PathLike[str] | None = None,
              env: Mapping[str, str] | None = None, timeout: float = 600,
              echo: TextIO | None = None, **machine: object) -> VmRun:  # fmt: skip
    """Run ``argv`` in a VM whose root is the host's; returns its status and console."""
    with VirtualMachine(command_script(argv, cwd, env), echo=echo, **machine) as vm:  # type: ignore[arg-type]
        return vm.wait(timeout)


if __name__ == "__main__":
    # python -m tests.vm.machine CMD...: run CMD in the VM (cwd and CI kept), for poking around.
    ran = run_in_vm(sys.argv[1:] or ["uname", "-a"], cwd=os.getcwd(),
                    env={"CI": os.environ.get("CI", "")}, echo=sys.stdout)  # fmt: skip
    print(f"[vm: status {ran.status} after {ran.seconds:.1f} s]")
    sys.exit(125 if ran.status is None else ran.status)
