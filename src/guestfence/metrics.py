"""What ``status --prometheus`` reports, read from the record and the kernel
into plain data (guestfence.prometheus.Metrics), and the atomic write of
node-exporter's textfile.

Reads only: the state file (under its lock), the live ``guestfence`` tables
(rules, counters with packets and bytes, map elements) and the lockdown
report. The comparison is guestfence.guests.firewall.collect_status with the
stale registrations (guestfence.guests.binding), the same ``status`` prints.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from guestfence.errors import HostError
from guestfence.lockdown.feature import LOCKDOWN_KEY, recorded_state
from guestfence.lockdown.links import collect_links
from guestfence.lockdown.report import collect_report
from guestfence.guests.binding import collect_link_indexes, with_stale_drift
from guestfence.guests.firewall import GUESTS_KEY, collect_status
from guestfence.nftables.apply import open_nft
from guestfence.prometheus import GuestMetrics, LockdownMetrics, Metrics
from guestfence.state import StateStore


def collect_metrics(directory: str) -> Metrics:
    with StateStore(directory, read_only=True) as store:
        guests_section = store.section(GUESTS_KEY)
        lockdown_section = store.section(LOCKDOWN_KEY)
    nft = open_nft()
    status = with_stale_drift(collect_status(guests_section, where=str(store.path), nft=nft),
                              guests_section, collect_link_indexes())
    guests = [
        GuestMetrics(
            name=s.name, iface=s.iface, rules=s.rules, drift=len(s.drift),
            accepted_packets=s.accepted_packets, accepted_bytes=s.accepted_bytes,
            dropped_packets=s.dropped_packets, dropped_bytes=s.dropped_bytes,
        )  # fmt: skip
        for s in status.guests
    ]
    report = collect_report(recorded_state(lockdown_section), nft, collect_links())
    lockdown = [
        LockdownMetrics(pattern=str(p.pattern), hook=h.hook, in_force=h.in_force, dropped_packets=h.packets, dropped_bytes=h.bytes)
        for p in report.patterns
        for h in p.hooks
    ]
    return Metrics(guests=guests, lockdown=lockdown, drift=len(status.drift))


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
