"""Per-call cost of allowed network calls: bare, under guestfence, under sandlock, in one run.

    .venv/bin/pip install -e ".[bench]"     # sandlock 0.9.0
    .venv/bin/python bench/bench_sandbox.py [--rounds 3] [--profile]

The guest (bench/sandbox_guest.c, built here with gcc) times a tight loop
of one call: a TCP connect to a loopback listener (accepted and closed by a
separate process), a UDP sendto, a sendmmsg of 64 datagrams. Each is run
bare, under ``guestfence run`` and under sandlock 0.9.0 with the equivalent
policy (allow exactly the listener's TCP and UDP port on 127.0.0.1), in
interleaved rounds; the median of the rounds is reported with the overhead
over bare and the ratio of the overheads guestfence/sandlock.

``--profile`` runs the guestfence supervisor in this process under
cProfile for the sendto loop and prints where its time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ITERATIONS = {"connect": 2000, "sendto": 20000, "sendmmsg": 1000}
ACCEPTOR = """
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(4096)
print(s.getsockname()[1], flush=True)
while True:
    s.accept()[0].close()
"""


def build_guest(workdir: Path) -> Path:
    if shutil.which("gcc") is None:
        sys.exit("bench_sandbox: gcc is needed to build the guest (apt-get install gcc)")
    binary = workdir / "sandbox_guest"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(HERE / "sandbox_guest.c")], check=True)
    return binary


def guest_args(binary: Path, op: str, tcp_port: int, udp_port: int) -> list[str]:
    port = tcp_port if op == "connect" else udp_port
    return [str(binary), op, "127.0.0.1", str(port), str(ITERATIONS[op])]


def parse(stdout: str | bytes) -> float:
    text = stdout.decode() if isinstance(stdout, bytes) else stdout
    result = json.loads(text.strip().splitlines()[-1])
    if result["failures"]:
        raise SystemExit(f"bench_sandbox: {result['failures']} calls failed in {result}")
    return float(result["ns_per_call"])


def run_bare(argv: list[str]) -> float:
    return parse(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


def run_guestfence(argv: list[str], tcp_port: int, udp_port: int) -> float:
    cli = [sys.executable, "-c", "import sys; from guestfence.cli import main; sys.exit(main())", "run",
           "--net-allow", f"tcp://127.0.0.1:{tcp_port}", "--net-allow", f"udp://127.0.0.1:{udp_port}", "--", *argv]
    return parse(subprocess.run(cli, capture_output=True, text=True, check=True).stdout)


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


def profile_sendto(binary: Path, tcp_port: int, udp_port: int) -> str:
    from guestfence import Policy, Sandbox
    from guestfence.sandbox import supervisor

    profiler = cProfile.Profile()
    original = supervisor.Supervisor._handle

    def profiled(self, *args):  # type: ignore[no-untyped-def]
        profiler.enable()
        try:
            return original(self, *args)
        finally:
            profiler.disable()

    supervisor.Supervisor._handle = profiled  # type: ignore[method-assign]
    try:
        box = Sandbox(Policy.parse(allow=[f"udp://127.0.0.1:{udp_port}"]))
        box.run(guest_args(binary, "sendto", tcp_port, udp_port), capture_output=True, check=True)
    finally:
        supervisor.Supervisor._handle = original  # type: ignore[method-assign]
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(14)
    return text.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="profile the supervisor's sendto path")
    args = parser.parse_args()
    acceptor = subprocess.Popen([sys.executable, "-c", ACCEPTOR], stdout=subprocess.PIPE, text=True)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    try:
        assert acceptor.stdout is not None
        tcp_port, udp_port = int(acceptor.stdout.readline()), udp.getsockname()[1]
        with tempfile.TemporaryDirectory() as tmp:
            binary = build_guest(Path(tmp))
            results: dict[str, dict[str, list[float]]] = {op: {"bare": [], "guestfence": [], "sandlock": []}
                                                          for op in ITERATIONS}
            for _ in range(args.rounds):
                for op in ITERATIONS:
                    argv = guest_args(binary, op, tcp_port, udp_port)
                    results[op]["bare"].append(run_bare(argv))
                    results[op]["guestfence"].append(run_guestfence(argv, tcp_port, udp_port))
                    results[op]["sandlock"].append(run_sandlock(argv, tcp_port, udp_port))
            report(results, args.rounds)
            if args.profile:
                print("\nguestfence supervisor, sendto loop (cProfile, handler threads only):")
                print(profile_sendto(binary, tcp_port, udp_port))
    finally:
        acceptor.kill()
        acceptor.wait()
        udp.close()


def report(results: dict[str, dict[str, list[float]]], rounds: int) -> None:
    print(f"per-call time in microseconds, median of {rounds} rounds (sendmmsg: per call of 64 messages)")
    print(f"{'call':10} {'bare':>9} {'guestfence':>11} {'sandlock':>9} {'gf over':>9} {'sl over':>9} {'gf/sl':>7}")
    for op, runs in results.items():
        bare, gf, sl = (statistics.median(runs[k]) / 1000 for k in ("bare", "guestfence", "sandlock"))
        ratio = (gf - bare) / (sl - bare) if sl > bare else float("inf")
        print(f"{op:10} {bare:9.1f} {gf:11.1f} {sl:9.1f} {gf - bare:+9.1f} {sl - bare:+9.1f} {ratio:7.2f}")


if __name__ == "__main__":
    main()
