"""Benchmark: what each guestfence command costs as a whole process, beside ``python3 -c pass``.

Run manually (``guest add`` needs root; it builds a throwaway network
namespace and removes it):

    .venv/bin/python bench/bench_cli.py [--runs 30] [--guests 1000] [--against OTHER/bin/guestfence]

Each command is started ``--runs`` times, the commands taking turns, and
its CPU time (user+system of the process and everything it waited for,
from wait4) and wall-clock time are recorded; the medians are printed,
with the CPU over the interpreter's own start-up (``python3 -c pass`` of
the same interpreter, measured in the same run). Commands run with
bytecode caching on (PYTHONDONTWRITEBYTECODE removed from their
environment, the caches kept in a temporary PYTHONPYCACHEPREFIX rather than
in the source trees) after one warm-up run each, as an installed package
runs. ``--against`` measures
a second installation's ``guestfence`` in the same run (e.g. main's),
side by side.

Baselines: ``python3 -c pass``, ``nft --version`` and ``ip -V``.
Commands: ``--help``, ``check FILE``, ``explain`` of three destinations,
``run -- true`` (sandbox start-up: the supervisor, the launcher and
``true``), and ``guest add`` replacing one guest while ``--guests``
guests are registered (they are applied once with ``apply FILE``, in the
namespace, with a temporary ``--state-dir``).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

CLONE_NEWNET = 0x40000000
ENV = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
POLICY = 'default = "deny"\nallow = ["tcp://@gateway:8080", "udp://192.0.2.53:53"]\ndeny = ["tcp://*:22"]\n'


def measure(argv: Sequence[str], preexec: Callable[[], None] | None) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one run of ``argv``, which must succeed."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=preexec, env=ENV)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.read().decode()}")
    proc.stderr.close()
    return usage.ru_utime + usage.ru_stime, wall


def guests_file(path: Path, count: int) -> None:
    """``count`` guests on interfaces that do not exist (idle VMs), IPv6-only so addresses never run out."""
    lines = [POLICY]
    for i in range(count):
        lines.append(f'[[guest]]\nname = "d{i}"\niface = "vmtap-d{i}"\naddress = "2001:db8:d::{i + 2:x}/64"\n'
                     'gateway = "2001:db8:d::1"\n')
    path.write_text("\n".join(lines))


def in_netns(path: str) -> Callable[[], None]:
    libc = ctypes.CDLL(None, use_errno=True)

    def enter() -> None:
        fd = os.open(path, os.O_RDONLY)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        os.close(fd)

    return enter


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--guests", type=int, default=1000, help="guests registered during `guest add` (0: skip it)")
    parser.add_argument("--against", metavar="GUESTFENCE", help="another installation's guestfence script to compare")
    args = parser.parse_args()
    ours = str(Path(sys.executable).with_name("guestfence"))
    installs = {"this": ours} | ({"against": args.against} if args.against else {})
    work = Path(tempfile.mkdtemp(prefix="gf-bench-cli-"))
    ENV["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    netns = f"gfbench-cli-{os.getpid()}"
    created: list[str] = []
    try:
        policy = work / "policy.toml"
        policy.write_text(POLICY)
        commands: dict[str, tuple[list[str], Callable[[], None] | None]] = {
            "python3 -c pass": ([sys.executable, "-c", "pass"], None),
        }
        # What a system tool costs to start, for scale (the "nft and ip start in 2 ms").
        for tool, argv in (("nft", ["--version"]), ("ip", ["-V"])):
            if shutil.which(tool):
                commands[f"{tool} {' '.join(argv)}"] = ([tool, *argv], None)
        for label, script in installs.items():
            suffix = "" if len(installs) == 1 else f" [{label}]"
            commands[f"--help{suffix}"] = ([script, "--help"], None)
            commands[f"check{suffix}"] = ([script, "check", str(policy)], None)
            commands[f"explain{suffix}"] = ([script, "explain", "--policy", str(policy), "--gateway", "192.0.2.1",
                                             "tcp://192.0.2.1:8080", "udp://192.0.2.53:53", "tcp://203.0.113.9:22"],
                                            None)
            commands[f"run -- true{suffix}"] = ([script, "run", "--", "true"], None)
        if args.guests and os.geteuid() == 0:
            config = work / "guests.toml"
            guests_file(config, args.guests - 1)
            for label, script in installs.items():  # a namespace and a state directory each
                name = f"{netns}-{label}"
                subprocess.run(["ip", "netns", "add", name], check=True)
                created.append(name)
                enter = in_netns(f"/run/netns/{name}")
                state = work / f"state-{label}"
                subprocess.run([script, "apply", "--state-dir", str(state), str(config)], check=True,
                               stdout=subprocess.DEVNULL, preexec_fn=enter, env=ENV)
                suffix = "" if len(installs) == 1 else f" [{label}]"
                commands[f"guest add @{args.guests}{suffix}"] = (
                    [script, "guest", "add", "bench", "--state-dir", str(state), "--iface", "vmtap-bench",
                     "--address", "192.0.2.2/30", "--gateway", "192.0.2.1", "--net-allow", "tcp://@gateway:8080"],
                    enter)
        elif args.guests:
            print("(guest add skipped: needs root)", file=sys.stderr)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for argv, preexec in commands.values():
            measure(argv, preexec)  # writes the bytecode caches
        for _ in range(args.runs):
            for name, (argv, preexec) in commands.items():
                samples[name].append(measure(argv, preexec))
    finally:
        for name in created:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        shutil.rmtree(work)

    load = os.getloadavg()
    print(f"{args.runs} runs each, interleaved; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; "
          f"{os.cpu_count()} CPUs")
    base = statistics.median(cpu for cpu, _ in samples["python3 -c pass"])
    print(f"{'command':32} {'CPU ms':>8} {'over python':>12} {'wall ms':>8}")
    for name, runs in samples.items():
        cpu = statistics.median(c for c, _ in runs)
        wall = statistics.median(w for _, w in runs)
        print(f"{name:32} {cpu * 1000:8.1f} {(cpu - base) * 1000:+12.1f} {wall * 1000:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
