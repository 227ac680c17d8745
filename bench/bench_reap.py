"""Benchmark: how long a dead guest's registration outlives its TAP while
``lockdown watch`` runs (the window in which a TAP re-created under its
name would still get its policy), beside ``guest remove`` of one guest.

Run manually, as root (it builds a throwaway network namespace and removes it):

    .venv/bin/python bench/bench_reap.py [--runs 10] [--guests 1000]

``--guests`` guests are applied once (``apply FILE``, bound to their names
only). Each run then creates a TAP, registers it with ``guestfence-qemu-ifup``
(as QEMU would), deletes the TAP (QEMU killed: no downscript) and waits for
the watcher's ``removed`` line: that is the window, wall-clock, from the
start of the deletion command. Baseline in the same run: a ``guest remove``
process removing one guest (the same one transaction, plus interpreter
start-up), and ``ip link del`` alone. Medians are printed with ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
NETNS = f"gfbreap{os.getpid() % 100000}"
TAP = "vmtap-breap"


def sh(*argv: str, env: dict[str, str] | None = None) -> float:
    """Run ``argv`` in the namespace; its wall-clock seconds."""
    start = time.perf_counter()
    subprocess.run(["ip", "netns", "exec", NETNS, *argv], check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def guests_toml(count: int) -> str:
    tables = [f'[[guest]]\nname = "g{i}"\niface = "vmtap-g{i}"\naddress = "10.{i // 250}.{i % 250}.2/30"\n' for i in range(count)]
    return "".join(tables)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--guests", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gfbreap") as tmp:
        state, guests = Path(tmp, "state"), Path(tmp, "guests.toml")
        guests.write_text(guests_toml(args.guests))
        mine = Path(tmp, "mine.toml")
        mine.write_text(f'[[guest]]\nname = "q1"\niface = "{TAP}"\naddress = "192.0.2.2/30"\ngateway = "192.0.2.1"\n'
                        'net_allow = ["tcp://@gateway:8080"]\n')  # fmt: skip
        env = {**os.environ, "GUESTFENCE_GUESTS": str(mine), "GUESTFENCE_STATE_DIR": str(state)}
        subprocess.run(["ip", "netns", "add", NETNS], check=True)
        watcher = None
        try:
            sh(str(BIN / "guestfence"), "apply", str(guests), "--state-dir", str(state))
            watcher = subprocess.Popen(["ip", "netns", "exec", NETNS, str(BIN / "guestfence"), "lockdown", "watch",
                                        "--state-dir", str(state)], stdout=subprocess.PIPE, bufsize=0)  # fmt: skip
            wait_line(watcher, b"watching")
            window, remove, delete = [], [], []
            for _ in range(args.runs):
                sh("ip", "tuntap", "add", "dev", TAP, "mode", "tap")
                sh(str(BIN / "guestfence-qemu-ifup"), TAP, env=env)
                start = time.perf_counter()
                sh("ip", "link", "del", TAP)
                wait_line(watcher, b"guest q1 removed")
                window.append(time.perf_counter() - start)
                sh("ip", "tuntap", "add", "dev", TAP, "mode", "tap")
                sh(str(BIN / "guestfence"), "guest", "add", "q1", "--iface", TAP, "--address", "192.0.2.2/30",
                   "--state-dir", str(state))  # fmt: skip
                remove.append(sh(str(BIN / "guestfence"), "guest", "remove", "q1", "--state-dir", str(state)))
                delete.append(sh("ip", "link", "del", TAP))
        finally:
            if watcher is not None:
                watcher.terminate()
                watcher.wait()
            subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
    w, r, d = (statistics.median(x) * 1000 for x in (window, remove, delete))
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(json.dumps({"guests": args.guests, "runs": args.runs, "loadavg": load}))
    print(f"TAP deleted -> stale guest removed by the watcher: {w:7.1f} ms  ({w / r:.2f} x guest remove)")
    print(f"guest remove (one process, baseline):              {r:7.1f} ms")
    print(f"ip link del alone:                                 {d:7.1f} ms")


def wait_line(proc: subprocess.Popen[bytes], text: bytes, seconds: float = 120) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(deadline - time.monotonic(), 0))
        if ready and text in proc.stdout.readline():
            return
    raise SystemExit(f"the watcher did not print {text!r} within {seconds}s")


if __name__ == "__main__":
    main()
