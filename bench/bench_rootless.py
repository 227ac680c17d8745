"""Traffic through slirp4netns bare and under ``guestfence rootless``, in one run.

    .venv/bin/python bench/bench_rootless.py [--rounds 3] [--seconds 3]

A guest namespace gets its network from slirp4netns, which runs in a "host"
namespace joined by veth to a "lan" namespace (a peer that is not the
host). From the guest we measure, to the LAN peer (an allowed destination):

- bulk TCP throughput (MB/s): one connection, 64 KiB writes, for --seconds;
- new TCP connections per second: connect, read one byte, close.

Each is measured with slirp4netns bare and under the seccomp supervisor
(--mode sandbox), in interleaved rounds; the median is reported with the
ratio to bare. (--mode nft puts no process in the data path; its cost is
that of a few nftables rules on the stack's new connections, which
bench_nft.py measures for the guests' firewall.) Every packet stays inside
the namespaces made here.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

GUESTFENCE = str(Path(sys.executable).with_name("guestfence"))
SINK_PORT, ACCEPT_PORT = 5001, 5002
LAN = "198.51.100.2"

SERVER = """
import socket, sys, threading
def sink():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", %d)); s.listen(16)
    while True:
        c = s.accept()[0]
        threading.Thread(target=lambda c=c: [None for _ in iter(lambda: c.recv(1 << 20), b"")], daemon=True).start()
def accept():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", %d)); s.listen(4096)
    while True:
        c = s.accept()[0]; c.sendall(b"x"); c.close()
threading.Thread(target=sink, daemon=True).start()
print("ready", flush=True)
accept()
""" % (SINK_PORT, ACCEPT_PORT)

CLIENT = """
import socket, sys, time
what, seconds = sys.argv[1], float(sys.argv[2])
end = time.monotonic() + seconds
if what == "bulk":
    s = socket.create_connection((%r, %d)); block = b"\\0" * 65536; sent = 0
    start = time.monotonic()
    while time.monotonic() < end:
        s.sendall(block); sent += len(block)
    print(sent / (time.monotonic() - start) / 1e6)
else:
    n = failed = 0; start = time.monotonic()
    while time.monotonic() < end:
        try:
            c = socket.create_connection((%r, %d), timeout=5); c.recv(1); c.close(); n += 1
        except OSError:
            failed += 1
    print(n / (time.monotonic() - start))
    print(failed, file=sys.stderr)
""" % (LAN, SINK_PORT, LAN, ACCEPT_PORT)


def ip(*argv: str, netns: str | None = None) -> str:
    cmd = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def build_scene(tag: str) -> tuple[str, str, str]:
    host, guest, lan = f"gfbr-h{tag}", f"gfbr-g{tag}", f"gfbr-l{tag}"
    for ns in (host, guest, lan):
        ip("ip", "netns", "add", ns)
        ip("ip", "link", "set", "lo", "up", netns=ns)
    ip("ip", "link", "add", "h0", "netns", host, "type", "veth", "peer", "name", "l0", "netns", lan)
    ip("ip", "addr", "add", "198.51.100.1/24", "dev", "h0", netns=host)
    ip("ip", "addr", "add", f"{LAN}/24", "dev", "l0", netns=lan)
    ip("ip", "link", "set", "h0", "up", netns=host)
    ip("ip", "link", "set", "l0", "up", netns=lan)
    ip("ip", "route", "add", "default", "via", LAN, netns=host)
    return host, guest, lan


STACKS = {
    "bare": ["slirp4netns", "--configure", "--mtu=65520", "--netns-type=path", "{netns}", "tap0"],
    "sandbox": [GUESTFENCE, "rootless", "slirp4netns", "--netns", "{netns}"],
}


def measure(mode: str, host: str, guest: str, seconds: float) -> dict[str, float]:
    argv = [a.replace("{netns}", f"/run/netns/{guest}") for a in STACKS[mode]]
    stack = subprocess.Popen(["ip", "netns", "exec", host, *argv], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if "default" in ip("ip", "route", netns=guest):
                break
            time.sleep(0.1)
        return {what: float(ip("python3", "-c", CLIENT, what, str(seconds), netns=guest)) for what in ("bulk", "connects")}
    finally:
        stack.terminate()
        stack.wait()
        time.sleep(0.3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    tag = str(int(time.time()) % 100000)
    host, guest, lan = build_scene(tag)
    server = subprocess.Popen(["ip", "netns", "exec", lan, "python3", "-u", "-c", SERVER], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
        results: dict[str, list[dict[str, float]]] = {mode: [] for mode in STACKS}
        for _ in range(args.rounds):
            for mode in STACKS:
                results[mode].append(measure(mode, host, guest, args.seconds))
        print(f"slirp4netns, guest -> LAN peer, median of {args.rounds} rounds of {args.seconds:g} s")
        print(f"{'mode':8} {'bulk MB/s':>10} {'ratio':>6} {'connects/s':>11} {'ratio':>6}")
        base = {what: statistics.median(r[what] for r in results["bare"]) for what in ("bulk", "connects")}
        for mode, rounds in results.items():
            bulk = statistics.median(r["bulk"] for r in rounds)
            conns = statistics.median(r["connects"] for r in rounds)
            print(f"{mode:8} {bulk:10.1f} {bulk / base['bulk']:6.2f} {conns:11.0f} {conns / base['connects']:6.2f}")
    finally:
        server.kill()
        server.wait()
        for ns in (host, guest, lan):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
