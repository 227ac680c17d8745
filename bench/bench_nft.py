"""Benchmark: what the guest firewall costs per packet, and per change.

Run manually, as root (it builds two network namespaces and removes them):

    .venv/bin/python bench/bench_nft.py [--seconds 2] [--guests 1,100,1000] [--plot docs/bench_nft.png]
    .venv/bin/python bench/bench_nft.py --scale 5000 [--rounds 3] [--timeout 900]

A "host" namespace and a "guest" namespace joined by veth (vmtap-g0). For
1, 100 and 1,000 registered guests (one real, the others registered on
interfaces that do not exist, as on a host whose other VMs are idle), and
for three designs, all measured in the same run:

- none        no ruleset: the baseline;
- guestfence  one ``inet guestfence`` table, a verdict map dispatching to per-guest chains;
- seed        one table per TAP device, each with input, forward and
              postrouting chains matching ``iifname`` (the design of the seed report).

it measures, for a few seconds each: (a) UDP packets from the guest to an
allowed host port, per second (``udp_pps``) and per CPU-second of the
sending core (``udp_pps_cpu``, see below), TCP requests per second (connect, read,
close) to an allowed host port, and TCP requests per second over the host's
loopback; (b) with 1,000 guests, the time to add and to remove one guest
(each one libnftables transaction). It prints rates and ratios to the
baseline, writes bench/results/nft.json, and plots ``udp_pps_cpu``
against the number of guests. Each figure is the median of ``--rounds``
runs in which the designs take turns. The goal of issue 14 is guestfence
with 1,000 guests at >= 0.95 of ``minimal`` (UDP packet rate); on a shared
machine read ``udp_pps_cpu``: other processes taking turns on the sender's
core change packets per wall-clock second from one run to the next, not
the CPU each packet costs.

``--scale N`` measures the command line instead, in a throwaway network
namespace with a temporary ``--state-dir``: ``guestfence apply FILE`` of N
generated ``[[guest]]`` tables (interfaces that do not exist), ``guestfence
status``, and ``guestfence guest add`` of one more; for each, wall-clock,
CPU (user+sys of the process) and peak RSS, the median of ``--rounds``,
against the goals (apply <= 3 s, 300 MB; status <= 2 s). On a loaded
machine CPU time is the figure to read: wall-clock includes waiting for
a core. Every command is bounded by ``--timeout``; one that runs out is
killed and reported as such.

The UDP packet rate is measured with a small C sender and receiver
(bench/udp_rate.c, compiled with gcc at start: 64-byte datagrams, 64 per
``sendmmsg``), pinned to one core each: a Python sender spent more per
packet than the firewall and hid its cost (every packet sent was
received). The TCP request rates still come from Python clients, so for
them the ratios between designs are what this measures.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOST, GUEST = f"gfbench-host-{os.getpid()}", f"gfbench-vm-{os.getpid()}"
IFACE = "vmtap-g0"
HOST_ADDR, GUEST_ADDR = "192.0.2.1", "192.0.2.2"
TCP_PORT, UDP_PORT = 8080, 9000
DESIGNS = ("none", "minimal", "guestfence", "seed")
SCALE_GOALS = {"apply": (3.0, 300), "status": (2.0, None), "add": (None, None)}
"""Seconds and MB per command at 5,000 guests (issue 14 part 3); None: no goal."""


# Rulesets (run inside the host namespace: `bench_nft.py ruleset DESIGN N`).


def guests(count: int) -> list[Any]:
    """The measured guest plus count-1 idle ones (IPv6-only, so addresses never run out)."""
    from guestfence.guests.guest import parse_guest
    from guestfence.policy.model import Policy

    policy = Policy.parse(allow=[f"tcp://@gateway:{TCP_PORT}", f"udp://@gateway:{UDP_PORT}"])
    made = [parse_guest(name="g0", iface=IFACE, addresses=[f"{GUEST_ADDR}/30"], gateways=[HOST_ADDR], policy=policy)]
    for i in range(1, count):
        made.append(parse_guest(name=f"d{i}", iface=f"vmtap-d{i}", addresses=[f"2001:db8:d::{i + 1:x}/64"],
                                gateways=["2001:db8:d::1"], policy=policy))  # fmt: skip
    return made


def seed_commands(count: int) -> list[dict[str, Any]]:
    """One table per TAP: input (policy accept, iifname-scoped accepts then drop),
    forward and postrouting, as the seed report describes its fixed ruleset."""
    commands: list[dict[str, Any]] = []
    for index, guest in enumerate(guests(count)):
        table = {"family": "inet", "table": f"tap{index}"}
        iif = {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": guest.iface}}
        commands.append({"add": {"table": {"family": "inet", "name": f"tap{index}"}}})
        for chain, hook, prio, kind in (("input", "input", 0, "filter"), ("forward", "forward", 0, "filter"),
                                        ("postrouting", "postrouting", 100, "nat")):  # fmt: skip
            commands.append({"add": {"chain": {**table, "name": chain, "type": kind, "hook": hook, "prio": prio, "policy": "accept"}}})

        def rule(chain: str, *exprs: dict[str, Any], table: dict[str, Any] = table) -> None:
            commands.append({"add": {"rule": {**table, "chain": chain, "expr": list(exprs)}}})

        ct = {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}
        icmp = {"match": {"op": "==", "left": {"payload": {"protocol": "icmp", "field": "type"}},
                          "right": {"set": ["echo-request", "destination-unreachable", "time-exceeded"]}}}  # fmt: skip
        proto = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["tcp", "udp"]}}}
        port = {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}}, "right": {"set": [TCP_PORT, UDP_PORT]}}}
        rule("input", iif, ct, {"accept": None})
        rule("input", iif, icmp, {"accept": None})
        rule("input", iif, proto, port, {"accept": None})
        rule("input", iif, {"drop": None})
        rule("forward", iif, {"accept": None})
        rule("forward", {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": guest.iface}}, ct, {"accept": None})
        source = guest.addresses[0]
        rule("postrouting", {"match": {"op": "==", "left": {"payload": {"protocol": "ip6" if source.version == 6 else "ip", "field": "saddr"}},
                                       "right": str(source.ip)}}, {"masquerade": None})  # fmt: skip
    return commands


def minimal_commands() -> list[dict[str, Any]]:
    """The hand-written ruleset for one guest: one input chain, policy drop,
    established/related accepted, the allowed ports accepted."""
    table = {"family": "inet", "table": "minimal"}
    port = lambda proto, number: {"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "dport"}}, "right": number}}  # noqa: E731
    ct = {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}
    return [
        {"add": {"table": {"family": "inet", "name": "minimal"}}},
        {"add": {"chain": {**table, "name": "input", "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}}},
        {"add": {"rule": {**table, "chain": "input", "expr": [ct, {"accept": None}]}}},
        {"add": {"rule": {**table, "chain": "input", "expr": [port("tcp", TCP_PORT), {"accept": None}]}}},
        {"add": {"rule": {**table, "chain": "input", "expr": [port("udp", UDP_PORT), {"accept": None}]}}},
        # The host's own loopback traffic (the loopback TCP figure), as any host ruleset has it.
        {"add": {"rule": {**table, "chain": "input", "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "lo"}}, {"accept": None}]}}},
    ]  # fmt: skip


def apply_ruleset(design: str, count: int) -> None:
    from guestfence.nftables.apply import apply_nft, open_nft
    from guestfence.guests.compile import Settings, compile_ruleset

    nft = open_nft()
    nft.cmd("flush ruleset")
    if design == "guestfence":
        apply_nft(nft, list(compile_ruleset(guests(count), Settings(), {}).commands), step="bench ruleset")
    elif design == "seed":
        apply_nft(nft, seed_commands(count), step="bench ruleset")
    elif design == "minimal":
        apply_nft(nft, minimal_commands(), step="bench ruleset")


def churn(count: int, rounds: int) -> dict[str, float]:
    """Median seconds to add, then remove, one guest next to ``count`` others."""
    from guestfence.nftables.apply import apply_nft, open_nft
    from guestfence.guests.compile import Others, Settings, compile_add, compile_remove, compile_ruleset
    from guestfence.guests.guest import parse_guest

    nft = open_nft()
    nft.cmd("flush ruleset")
    existing = guests(count)
    apply_nft(nft, list(compile_ruleset(existing, Settings(), {}).commands), step="bench ruleset")
    newcomer = parse_guest(name="new", iface="vmtap-new", addresses=["2001:db8:e::2/64"], gateways=["2001:db8:e::1"],
                           policy=existing[0].policy)  # fmt: skip
    added, removed = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        apply_nft(nft, list(compile_add(newcomer, Settings(), {}, others=Others.of(existing), replaces=None).commands), step="add")
        added.append(time.perf_counter() - start)
        start = time.perf_counter()
        apply_nft(nft, list(compile_remove(newcomer, Settings(), {}, others=existing).commands), step="remove")
        removed.append(time.perf_counter() - start)
    return {"add_s": statistics.median(added), "remove_s": statistics.median(removed)}


# Traffic (each run inside a namespace by the orchestrator).


def tcp_requests(host: str, port: int, seconds: float) -> int:
    done, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.settimeout(2)
            sock.connect((host, port))
            if sock.recv(16) == b"ok":
                done += 1
    return done


# The orchestrator.


def sh(*argv: str, netns: str | None = None, timeout: float = 600) -> str:
    command = list(argv) if netns is None else ["ip", "netns", "exec", netns, *argv]
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=timeout).stdout


def me(*argv: str, netns: str, timeout: float = 600) -> str:
    return sh(sys.executable, __file__, *argv, netns=netns, timeout=timeout)


def build_lab() -> list[subprocess.Popen[bytes]]:
    for name in (HOST, GUEST):
        sh("ip", "netns", "add", name)
        sh("ip", "link", "set", "lo", "up", netns=name)
    sh("ip", "link", "add", IFACE, "netns", HOST, "type", "veth", "peer", "name", "eth0", "netns", GUEST)
    sh("ip", "link", "set", IFACE, "up", netns=HOST)
    sh("ip", "link", "set", "eth0", "up", netns=GUEST)
    sh("ip", "addr", "add", f"{HOST_ADDR}/30", "dev", IFACE, netns=HOST)
    sh("ip", "addr", "add", f"{GUEST_ADDR}/30", "dev", "eth0", netns=GUEST)
    server = subprocess.Popen(["ip", "netns", "exec", HOST, sys.executable, "-m", "guestfence.demolab", "serve", str(TCP_PORT), ""],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
    return [server]


def build_udp_rate(where: Path) -> Path:
    """Compile the C packet-rate probe (bench/udp_rate.c) into ``where``."""
    binary = where / "udp_rate"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(ROOT / "bench" / "udp_rate.c")], check=True)
    return binary


def measure(seconds: float, udp_rate: Path) -> dict[str, float]:
    """The UDP figures come from the C probe: receiver and sender each on a
    core of their own (the sender's core also runs the receive path, the
    firewall included, in softirq)."""
    receiver = subprocess.Popen(["ip", "netns", "exec", HOST, "taskset", "-c", "1", str(udp_rate), "recv", str(UDP_PORT), str(seconds + 1)],
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
    sent_text, cpu_text = sh("taskset", "-c", "0", str(udp_rate), "send", HOST_ADDR, str(UDP_PORT), str(seconds), netns=GUEST).split()
    sent, sender_cpu = int(sent_text), float(cpu_text)
    received = int(receiver.communicate(timeout=seconds + 10)[0])
    tcp = int(me("tcp", HOST_ADDR, str(TCP_PORT), str(seconds), netns=GUEST))
    loopback = int(me("tcp", "127.0.0.1", str(TCP_PORT), str(seconds), netns=HOST))
    return {"udp_pps": received / seconds, "udp_pps_cpu": received / max(sender_cpu, 1e-3), "udp_sent_pps": sent / seconds, "tcp_rps": tcp / seconds, "loopback_rps": loopback / seconds}


def run(seconds: float, counts: list[int], rounds: int, plot: Path | None) -> dict[str, Any]:
    """Designs are interleaved within each round and the median of the rounds
    kept, so a slow moment of the machine hits every design alike."""
    import tempfile

    scratch = tempfile.TemporaryDirectory(prefix="gfbench-")
    udp_rate = build_udp_rate(Path(scratch.name))
    processes = build_lab()
    results: dict[str, Any] = {"seconds": seconds, "rounds": rounds, "rates": {}, "churn": {}}
    samples: dict[str, list[dict[str, float]]] = {}
    try:
        for count in counts:
            for _ in range(rounds):
                for design in DESIGNS:
                    me("ruleset", design, str(count), netns=HOST)
                    rates = measure(seconds, udp_rate)
                    samples.setdefault(f"{design}/{count}", []).append(rates)
                    print(f"{design:10} {count:5} guests: " + "  ".join(f"{k} {v:9.0f}" for k, v in rates.items()), flush=True)
        for key, runs in samples.items():
            results["rates"][key] = {metric: statistics.median(r[metric] for r in runs) for metric in runs[0]}
        results["churn"] = json.loads(me("churn", str(max(counts)), "5", netns=HOST))
        results["load"] = os.getloadavg()
    finally:
        for process in processes:
            process.kill()
            process.wait()
        for name in (HOST, GUEST):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        scratch.cleanup()
    report(results, counts)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "nft.json").write_text(json.dumps(results, indent=2) + "\n")
    if plot is not None:
        draw(results, counts, plot)
    return results


def report(results: dict[str, Any], counts: list[int]) -> None:
    rates = results["rates"]
    print(f"\nratio to no ruleset (1.00 = no cost), same run (load average {results['load'][0]:.1f} at the end):")
    for metric in ("udp_pps_cpu", "udp_pps", "tcp_rps", "loopback_rps"):
        for design in DESIGNS[1:]:
            cells = [f"{rates[f'{design}/{n}'][metric] / rates[f'none/{n}'][metric]:.2f}" for n in counts]
            print(f"  {metric:13} {design:10} " + "  ".join(f"{n} guests: {c}" for n, c in zip(counts, cells)))
    biggest = max(counts)
    for metric in ("udp_pps_cpu", "udp_pps"):
        for n in counts:
            ratio = rates[f"guestfence/{n}"][metric] / rates[f"minimal/{n}"][metric]
            print(f"  guestfence / minimal at {n} guests, {metric}: {ratio:.2f} (goal at 1000 guests: >= 0.95)")
    for metric in ("udp_pps_cpu", "udp_pps", "tcp_rps", "loopback_rps"):
        ratio = rates[f"guestfence/{biggest}"][metric] / rates[f"seed/{biggest}"][metric]
        print(f"  guestfence / seed at {biggest} guests, {metric}: {ratio:.1f}x")
    churn = results["churn"]
    print(f"\nwith {biggest} guests: add one guest {churn['add_s'] * 1000:.1f} ms, remove one {churn['remove_s'] * 1000:.1f} ms")


def draw(results: dict[str, Any], counts: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for design, style in zip(DESIGNS, ("-o", "-x", "-s", "-^")):
        ax.plot(counts, [results["rates"][f"{design}/{n}"]["udp_pps_cpu"] / 1000 for n in counts], style, label=design)
    ax.set_xscale("log")
    ax.set_xticks(counts, [str(n) for n in counts])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("registered guests")
    ax.set_ylabel("guest -> host UDP, thousand packets\nper CPU-second of the sending core")
    ax.set_title("Packet rate vs number of guests (one verdict map vs one table per TAP)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


# --scale: the command line with N guests.


def scale_file(count: int) -> str:
    """``count`` [[guest]] tables, each a /32 of its own behind one gateway."""
    tables = []
    for i in range(count):
        a = i + 2
        tables.append(f'[[guest]]\nname = "g{i}"\niface = "vmtap-g{i}"\naddress = "10.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}/32"\n'
                      f'gateway = "10.255.255.254"\nnet_allow = ["tcp://@gateway:{TCP_PORT}", "udp://@gateway:{UDP_PORT}"]\n')  # fmt: skip
    return "\n".join(tables)


def timed(argv: list[str], timeout: float) -> dict[str, float | int | None]:
    """Wall-clock, CPU (user+sys) and peak RSS of one process; ``wait4`` reads
    the process's own usage (``ip netns exec`` execs, it does not fork)."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = start + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            process.kill()
            pid, status, usage = os.wait4(process.pid, 0)
            return {"wall_s": None, "cpu_s": None, "rss_mb": None, "rc": None}
        time.sleep(0.05)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.stderr is not None
    error = process.stderr.read().decode(errors="replace").strip()
    if process.returncode not in (0, 1):
        print(f"  {' '.join(argv[4:6])}: exit {process.returncode}: {error[-300:]}", flush=True)
    return {"wall_s": time.perf_counter() - start, "cpu_s": usage.ru_utime + usage.ru_stime,
            "rss_mb": usage.ru_maxrss / 1024, "rc": process.returncode}  # fmt: skip


def scale(count: int, rounds: int, timeout: float) -> dict[str, Any]:
    """apply, status and guest add with ``count`` guests, each round in a fresh namespace and state directory."""
    import tempfile

    guestfence = str(Path(sys.executable).parent / "guestfence")
    samples: dict[str, list[dict[str, Any]]] = {"apply": [], "status": [], "add": []}
    with tempfile.TemporaryDirectory(prefix="gfbench-scale-") as scratch:
        config = Path(scratch) / "guests.toml"
        config.write_text(scale_file(count))
        for round_ in range(rounds):
            netns, state = f"gfbench-scale-{os.getpid()}-{round_}", Path(scratch) / f"state{round_}"
            sh("ip", "netns", "add", netns)
            try:
                run_in = ["ip", "netns", "exec", netns, guestfence]
                samples["apply"].append(timed([*run_in, "apply", "--state-dir", str(state), str(config)], timeout))
                samples["status"].append(timed([*run_in, "status", "--state-dir", str(state)], timeout))
                samples["add"].append(timed([*run_in, "guest", "add", "extra", "--state-dir", str(state),
                                             "--iface", "vmtap-extra", "--address", "10.254.0.2/32", "--gateway", "10.255.255.254",
                                             "--net-allow", f"tcp://@gateway:{TCP_PORT}", "--force"], timeout))  # fmt: skip
            finally:
                subprocess.run(["ip", "netns", "del", netns], capture_output=True)
            print(f"round {round_ + 1}: " + "  ".join(f"{k} {_cell(v[-1])}" for k, v in samples.items()), flush=True)
    results: dict[str, Any] = {"guests": count, "rounds": rounds, "load": os.getloadavg(), "commands": {}}
    for command, runs in samples.items():
        results["commands"][command] = {metric: _median([r[metric] for r in runs]) for metric in ("wall_s", "cpu_s", "rss_mb")}
    print(f"\n{count} guests, median of {rounds} (load average {results['load'][0]:.0f}):")
    for command, figures in results["commands"].items():
        seconds, megabytes = SCALE_GOALS[command]
        goal = "  goal: " + ", ".join(g for g in (f"<= {seconds} s" if seconds else "", f"<= {megabytes} MB" if megabytes else "") if g)
        print(f"  {command:7} {_cell(figures)}" + (goal if seconds or megabytes else ""))
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "nft_scale.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _median(values: list[Any]) -> float | None:
    """The median; a run that timed out counts as slower than any other."""
    ordered = sorted(values, key=lambda v: float("inf") if v is None else v)
    return ordered[len(ordered) // 2]


def _cell(figures: dict[str, Any]) -> str:
    if figures["cpu_s"] is None:
        return "timed out"
    return f"{figures['wall_s']:7.1f} s wall {figures['cpu_s']:6.1f} s CPU {figures['rss_mb']:6.0f} MB"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("ruleset", "churn", "tcp"):
        verb, args = sys.argv[1], sys.argv[2:]
        if verb == "ruleset":
            apply_ruleset(args[0], int(args[1]))
        elif verb == "churn":
            print(json.dumps(churn(int(args[0]), int(args[1]))))
        else:
            print(tcp_requests(args[0], int(args[1]), float(args[2])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each measurement (default 2)")
    parser.add_argument("--guests", default="1,100,1000", help="numbers of registered guests (default 1,100,1000)")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions; the median is kept (default 3)")
    parser.add_argument("--scale", type=int, metavar="N", help="measure apply, status and guest add with N guests instead")
    parser.add_argument("--timeout", type=float, default=900, help="--scale: seconds each command may take (default 900)")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "bench_nft.png", help="where to draw the PNG")
    options = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_nft.py needs root (network namespaces, nftables)", file=sys.stderr)
        return 3
    if options.scale:
        scale(options.scale, options.rounds, options.timeout)
        return 0
    run(options.seconds, [int(n) for n in options.guests.split(",")], options.rounds, options.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
