"""A real libvirtd of the test's own, kept off the host.

libvirtd acts on the network namespace it runs in (it creates the TAPs of
``type='ethernet'`` interfaces there) and on its directories. This one runs
in a lab namespace, in a mount namespace of its own where /run, /var/lib,
/var/cache, /var/log and /etc/libvirt are the test's temporary directories:
no TAP, socket, pid file, domain definition or network of it is visible
outside, and no autostarted network exists. Its qemu.conf runs QEMU (TCG)
as root without a security driver, cgroups or a private /dev. The hook is
installed in its private /etc/libvirt/hooks/qemu.d as a two-line wrapper
that points guestfence at the test's state directory (libvirtd gives hooks
a fixed, minimal environment).

``close()`` destroys every domain, kills any QEMU left by its pid file and
libvirtd itself, and removes the directory; it runs even when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.lab.netlab import Lab

QEMU_CONF = """\
security_driver = "none"
user = "root"
group = "root"
stdio_handler = "file"
cgroup_controllers = [ ]
namespaces = [ ]
remember_owner = 0
"""

_START = """\
set -e
for dir in /run /var/lib /var/cache /var/log; do mount -t tmpfs gflv "$dir"; mkdir "$dir/libvirt"; done
mount --bind "$1/run" /run/libvirt
mount --bind "$1/lib" /var/lib/libvirt
mount --bind "$1/cache" /var/cache/libvirt
mount --bind "$1/log" /var/log/libvirt
mount --bind "$1/etc" /etc/libvirt
exec libvirtd --pid-file "$1/libvirtd.pid"
"""


def available() -> str | None:
    """Why libvirtd cannot run here, or None."""
    for binary in ("libvirtd", "virsh", "qemu-system-x86_64"):
        if shutil.which(binary) is None:
            return f"{binary} is not installed (make test installs it)"
    if not Path("/etc/libvirt").is_dir():
        return "/etc/libvirt does not exist (libvirt-clients makes it)"
    return None


class Libvirtd:
    def __init__(self, lab: Lab, netns: str, hook: str, state_dir: Path) -> None:
        # Short: the unix socket's path must fit in 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="gflv", dir="/tmp"))
        self.netns = netns
        for sub in ("run", "lib", "cache", "log", "etc/hooks/qemu.d", "etc/qemu"):
            (self.root / sub).mkdir(parents=True)
        (self.root / "etc/qemu.conf").write_text(QEMU_CONF)
        (self.root / "etc/libvirtd.conf").write_text("")
        wrapper = self.root / "etc/hooks/qemu.d/guestfence"
        wrapper.write_text(f"#!/bin/sh\nGUESTFENCE_STATE_DIR={state_dir} exec {hook} \"$@\"\n")
        wrapper.chmod(0o755)
        (self.root / "start.sh").write_text(_START)
        self.process = lab.spawn(["unshare", "--mount", "--propagation", "private", "sh", str(self.root / "start.sh"), str(self.root)],
                                 netns=netns)  # fmt: skip
        socket = self.root / "run/libvirt-sock"
        deadline = time.monotonic() + 60
        while not (socket.exists() and self.virsh("version", check=False).returncode == 0):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"libvirtd did not start: {self.process.stderr.read().decode() if self.process.stderr else ''}")
            time.sleep(0.1)

    def virsh(self, *argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        uri = f"qemu:///system?socket={self.root}/run/libvirt-sock"
        done = subprocess.run(["virsh", "-c", uri, *argv], capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"virsh {' '.join(argv)} exited {done.returncode}: {done.stderr}")
        return done

    def close(self) -> None:
        if self.process.poll() is None:
            listed = self.virsh("list", "--name", check=False, timeout=30).stdout.split()
            for name in listed:
                self.virsh("destroy", name, check=False, timeout=30)
        for pidfile in (self.root / "run/qemu").glob("*.pid") if (self.root / "run/qemu").is_dir() else ():
            with contextlib.suppress(ValueError, ProcessLookupError, OSError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)
