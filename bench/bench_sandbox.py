"""Cost per trapped call: bare, under guestfence, under sandlock 0.9.0, in one run.

    make bench-deps                           # the venv with sandlock 0.9.0
    .venv/bin/python bench/bench_sandbox.py [--rounds 5]

The guest (bench/sandbox_guest.c, built here with gcc) times a tight loop
of one call: a TCP connect to a loopback listener (accepted and closed by a
separate process), a UDP connect (the same without the TCP handshake,
whose kernel work on loopback runs inside connect: for the supervisor
that makes the call, in its own CPU), a UDP sendto, a UDP sendmsg
(destination in msg_name), a sendmmsg of 64 datagrams (the same vector again
and again), and one whose msg_len fields are zeroed before each call, so
that every length is stored ("sendmmsg0"). Each is run bare, under guestfence's
``Sandbox`` and under sandlock's ``Sandbox`` with the equivalent policy
(allow exactly the listener's TCP and UDP port on 127.0.0.1).

What is measured, per call of the guest's loop:

- supervisor CPU: user+sys of the supervising process, from
  getrusage(RUSAGE_SELF) just before and just after ``.run()`` (both
  supervise in threads of the calling process), divided by the loop's
  calls. Nothing is subtracted, so it includes the run's fixed cost
  (start-up, filter, launcher, exit: printed once as "fixed CPU", the same
  run with 0 calls, after one such run that imports each tool) and, for a supervisor that makes the call on the
  guest's behalf, the call's own kernel work, which bare is charged to the
  guest: the "guest CPU" column (RUSAGE_CHILDREN around the run) shows
  what the guest paid itself.
- pinned wall-clock: the guest's own clock around its loop, with the
  whole bench (guest, supervisor threads) on one CPU (``taskset -c 0``).
  Unpinned, an idle vCPU's wake-up latency dominates any unotify
  supervisor's wall-clock; pinned, the guest and the supervisor hand the
  CPU to each other.

Each round runs two worker processes, one unpinned (the CPU figures) and
one under ``taskset -c 0`` (the wall-clock); inside a worker the three
tools run interleaved per call. The median over rounds is printed, with
the spread (min-max) and the ratio guestfence/sandlock of the medians.
The machine's load average is printed at the start and the end: on a
loaded machine the wall-clock figures move a lot more than the CPU ones.

Where the supervisor's time goes: the calls are answered in C
(sandbox/fastpath.c), so profile with ``perf record -g`` around a run,
not cProfile.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ITERATIONS = {"connect": 2000, "udpconnect": 2000, "sendto": 20000, "sendmsg": 20000, "sendmmsg": 1000,
              "sendmmsg0": 1000}
TOOLS = ("bare", "guestfence", "sandlock")
ACCEPTOR = """
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(4096)
print(s.getsockname()[1], flush=True)
while True:
    s.accept()[0].close()
"""
Sample = dict[str, float]  # supervisor_cpu_ns (its user_ns + sys_ns), guest_cpu_ns, wall_ns: per call


def build_guest(workdir: Path) -> Path:
    if shutil.which("gcc") is None:
        sys.exit("bench_sandbox: gcc is needed to build the guest (apt-get install gcc)")
    binary = workdir / "sandbox_guest"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(HERE / "sandbox_guest.c")], check=True)
    return binary


def guest_args(binary: Path, op: str, tcp_port: int, udp_port: int, iterations: int) -> list[str]:
    port = tcp_port if op == "connect" else udp_port
    return [str(binary), op, "127.0.0.1", str(port), str(iterations)]


def parse(stdout: str | bytes) -> float:
    text = stdout.decode() if isinstance(stdout, bytes) else stdout
    result = json.loads(text.strip().splitlines()[-1])
    if result["failures"]:
        raise SystemExit(f"bench_sandbox: {result['failures']} calls failed in {result}")
    return float(result["ns_per_call"])


def run_bare(argv: list[str]) -> float:
    return parse(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


def run_guestfence(argv: list[str], tcp_port: int, udp_port: int) -> float:
    from guestfence import Policy, Sandbox

    box = Sandbox(Policy.parse(allow=[f"tcp://127.0.0.1:{tcp_port}", f"udp://127.0.0.1:{udp_port}"]))
    return parse(box.run(argv, capture_output=True, check=True).stdout)


def run_sandlock(argv: list[str], tcp_port: int, udp_port: int) -> float:
    import sandlock

    # Landlock denies what is not listed: the guest's directory and the C library.
    readable = [str(Path(argv[0]).parent), "/usr", "/lib", "/lib64", "/etc"]
    box = sandlock.Sandbox(net_allow=[f"tcp://127.0.0.1:{tcp_port}", f"udp://127.0.0.1:{udp_port}"],
                           fs_readable=readable)
    result = box.run(argv)
    if not result.success:
        raise SystemExit(f"bench_sandbox: sandlock run failed: {result}")
    return parse(result.stdout)


RUNNERS = {
    "bare": lambda argv, tcp, udp: run_bare(argv),
    "guestfence": run_guestfence,
    "sandlock": run_sandlock,
}


def cpu_ns(who: int) -> tuple[int, int]:
    """(user, sys) CPU of ``who``, in ns."""
    usage = resource.getrusage(who)
    return int(usage.ru_utime * 1e9), int(usage.ru_stime * 1e9)


def measure(tool: str, argv: list[str], tcp_port: int, udp_port: int) -> tuple[float, float, float, float]:
    """(supervisor user ns, supervisor sys ns, guest CPU ns, guest's ns per call) of one run, totals."""
    self_before, children_before = cpu_ns(resource.RUSAGE_SELF), cpu_ns(resource.RUSAGE_CHILDREN)
    wall = RUNNERS[tool](argv, tcp_port, udp_port)
    (user, sys_), children = cpu_ns(resource.RUSAGE_SELF), cpu_ns(resource.RUSAGE_CHILDREN)
    return (user - self_before[0], sys_ - self_before[1], sum(children) - sum(children_before), wall)


def worker(binary: Path, tcp_port: int, udp_port: int) -> None:
    """One round, all calls and tools interleaved: JSON {op: {tool: Sample}} on stdout."""
    results: dict[str, dict[str, Sample]] = {op: {} for op in ITERATIONS}
    for tool in TOOLS[1:]:  # the fixed cost of a run: sendto with 0 calls, once the tool is imported
        measure(tool, guest_args(binary, "sendto", tcp_port, udp_port, 0), tcp_port, udp_port)
        user, sys_, _, _ = measure(tool, guest_args(binary, "sendto", tcp_port, udp_port, 0), tcp_port, udp_port)
        results.setdefault("fixed", {})[tool] = {"supervisor_cpu_ns": user + sys_, "guest_cpu_ns": 0.0,
                                                 "wall_ns": 0.0}
    for op, n in ITERATIONS.items():
        for tool in TOOLS:
            user, sys_, guest, wall = measure(tool, guest_args(binary, op, tcp_port, udp_port, n), tcp_port,
                                              udp_port)
            results[op][tool] = {"supervisor_cpu_ns": (user + sys_) / n, "supervisor_user_ns": user / n,
                                 "supervisor_sys_ns": sys_ / n, "guest_cpu_ns": guest / n, "wall_ns": wall}
    print(json.dumps(results))


def run_worker(binary: Path, tcp_port: int, udp_port: int, *, pinned: bool) -> dict[str, dict[str, Sample]]:
    argv = [sys.executable, __file__, "--worker", str(binary), str(tcp_port), str(udp_port)]
    if pinned:
        argv = ["taskset", "-c", "0", *argv]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench_sandbox: worker failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--worker", nargs=3, metavar=("GUEST", "TCP_PORT", "UDP_PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), int(args.worker[1]), int(args.worker[2]))
        return
    if shutil.which("taskset") is None:
        sys.exit("bench_sandbox: taskset is needed for the pinned wall-clock (apt-get install util-linux)")
    print(f"load average at start: {'/'.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs;"
          f" {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; kernel {os.uname().release}")
    acceptor = subprocess.Popen([sys.executable, "-c", ACCEPTOR], stdout=subprocess.PIPE, text=True)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    try:
        assert acceptor.stdout is not None
        tcp_port, udp_port = int(acceptor.stdout.readline()), udp.getsockname()[1]
        with tempfile.TemporaryDirectory() as tmp:
            binary = build_guest(Path(tmp))
            unpinned, pinned = [], []
            for _ in range(args.rounds):
                unpinned.append(run_worker(binary, tcp_port, udp_port, pinned=False))
                pinned.append(run_worker(binary, tcp_port, udp_port, pinned=True))
            report(unpinned, pinned)
    finally:
        acceptor.kill()
        acceptor.wait()
        udp.close()
    print(f"load average at end: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")


def _stat(rounds: list[dict[str, dict[str, Sample]]], op: str, tool: str, field: str) -> tuple[float, float, float]:
    """(median, min, max) over rounds, in microseconds."""
    values = [r[op][tool][field] / 1000 for r in rounds]
    return statistics.median(values), min(values), max(values)


def _cell(stat: tuple[float, float, float]) -> str:
    median, low, high = stat
    return f"{median:.1f} ({low:.1f}-{high:.1f})"


def report(unpinned: list[dict[str, dict[str, Sample]]], pinned: list[dict[str, dict[str, Sample]]]) -> None:
    rounds = len(unpinned)
    print(f"\nmicroseconds per call, median (min-max) of {rounds} rounds; sendmmsg: per call of 64 datagrams")
    fixed = {tool: _stat(unpinned, "fixed", tool, "supervisor_cpu_ns") for tool in TOOLS[1:]}
    print("fixed CPU of one run with 0 calls (included below, divided by the calls): "
          + ", ".join(f"{tool} {m / 1000:.1f} ms" for tool, (m, _, _) in fixed.items()))
    print("\nsupervisor CPU per call (getrusage SELF user+sys around .run(), unpinned);"
          " guest CPU per call (RUSAGE_CHILDREN)")
    print(f"{'call':10} {'bare guest':>20} {'guestfence sup':>20} {'gf guest':>17} {'sandlock sup':>20}"
          f" {'sl guest':>17} {'gf/sl sup':>9}")
    for op, n in ITERATIONS.items():
        gf, sl = _stat(unpinned, op, "guestfence", "supervisor_cpu_ns"), _stat(unpinned, op, "sandlock",
                                                                                "supervisor_cpu_ns")
        print(f"{op:10} {_cell(_stat(unpinned, op, 'bare', 'guest_cpu_ns')):>20} {_cell(gf):>20}"
              f" {_cell(_stat(unpinned, op, 'guestfence', 'guest_cpu_ns')):>17} {_cell(sl):>20}"
              f" {_cell(_stat(unpinned, op, 'sandlock', 'guest_cpu_ns')):>17} {gf[0] / sl[0]:9.2f}")
    print("\nsupervisor CPU per call split, user / sys (medians); total CPU (supervisor + guest): the"
          " call's own kernel work is the supervisor's when it makes the call, the guest's when the kernel does")
    print(f"{'call':10} {'guestfence user/sys':>20} {'sandlock user/sys':>20} {'gf total':>9} {'sl total':>9}"
          f" {'gf/sl total':>11}")
    for op in ITERATIONS:
        split = {tool: tuple(_stat(unpinned, op, tool, f"supervisor_{part}_ns")[0] for part in ("user", "sys"))
                 for tool in TOOLS[1:]}
        total = {tool: _stat(unpinned, op, tool, "supervisor_cpu_ns")[0] + _stat(unpinned, op, tool, "guest_cpu_ns")[0]
                 for tool in TOOLS[1:]}
        print(f"{op:10} {'%.1f / %.1f' % split['guestfence']:>20} {'%.1f / %.1f' % split['sandlock']:>20}"
              f" {total['guestfence']:9.1f} {total['sandlock']:9.1f} {total['guestfence'] / total['sandlock']:11.2f}")
    print("\nwall-clock per call, pinned (taskset -c 0), the guest's own clock")
    print(f"{'call':10} {'bare':>20} {'guestfence':>20} {'sandlock':>20} {'gf over':>8} {'sl over':>8}"
          f" {'gf/sl over':>10}")
    for op in ITERATIONS:
        bare, gf, sl = (_stat(pinned, op, tool, "wall_ns") for tool in TOOLS)
        gf_over, sl_over = gf[0] - bare[0], sl[0] - bare[0]
        ratio = f"{gf_over / sl_over:10.2f}" if sl_over > 0 else f"{'-':>10}"
        print(f"{op:10} {_cell(bare):>20} {_cell(gf):>20} {_cell(sl):>20} {gf_over:+8.1f} {sl_over:+8.1f} {ratio}")


if __name__ == "__main__":
    main()
