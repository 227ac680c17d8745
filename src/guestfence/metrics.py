"""What ``status --prometheus`` reports, read from the record and the kernel
into plain data (guestfence.prometheus.Metrics), and the atomic write of
node-exporter's textfile.

Reads only: the state file (under its lock), the live ``guestfence`` tables
(rules, counters with packets and bytes, map elements) and the lockdown
report. The comparison is guestfence.nft.firewall.compare_status, the same
``status`` prints.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from guestfence.errors import HostError
from guestfence.lockdown.feature import LOCKDOWN_KEY, recorded_state
from guestfence.lockdown.links import collect_links
from guestfence.lockdown.report import collect_report
from guestfence.nft import names as n
from guestfence.nft.apply import NftHandle, list_ruleset, open_nft
from guestfence.nft.firewall import GUESTS_KEY, collect_live, compare_status, registry_from_json
from guestfence.prometheus import GuestMetrics, LockdownMetrics, Metrics
from guestfence.state import StateStore


def collect_metrics(directory: Path) -> Metrics:
    with StateStore(directory) as store:
        guests_section = store.section(GUESTS_KEY)
        lockdown_section = store.section(LOCKDOWN_KEY)
    registry = registry_from_json(guests_section, where=str(store.path))
    nft = open_nft()
    statuses, general = compare_status(registry, collect_live(nft), recorded=guests_section is not None)
    counters = _counters(nft)

    def total(name: str, what: str, index: int) -> int | None:
        found = [value[index] for (_, counter), value in counters.items() if counter == n.guest_counter(name, what)]
        return sum(found) if found else None

    guests = [
        GuestMetrics(
            name=s.name, iface=s.iface, rules=s.rules, drift=len(s.drift),
            accepted_packets=total(s.name, "accepted", 0), accepted_bytes=total(s.name, "accepted", 1),
            dropped_packets=total(s.name, "dropped", 0), dropped_bytes=total(s.name, "dropped", 1),
        )  # fmt: skip
        for s in statuses
    ]
    report = collect_report(recorded_state(lockdown_section), nft, collect_links())
    lockdown = [
        LockdownMetrics(pattern=str(p.pattern), hook=h.hook, in_force=h.in_force, dropped_packets=h.packets, dropped_bytes=h.bytes)
        for p in report.patterns
        for h in p.hooks
    ]
    return Metrics(guests=guests, lockdown=lockdown, drift=len(general))


def _counters(nft: NftHandle) -> dict[tuple[str, str], tuple[int, int]]:
    """(family, counter name) -> (packets, bytes) of our named counters."""
    found = {}
    for family in n.FAMILIES:
        for item in list_ruleset(nft, {"table": {"family": family, "name": n.TABLE}}):
            body = item.get("counter")
            if body is not None:
                found[(family, body["name"])] = (int(body.get("packets", 0)), int(body.get("bytes", 0)))
    return found


def write_textfile(text: str, path: Path) -> None:
    """Replace ``path`` atomically (a temporary file in its directory, renamed),
    so node-exporter never reads half a file. The directory must exist."""
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise HostError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise HostError(f"cannot write {path}: {exc.strerror or exc}") from exc
