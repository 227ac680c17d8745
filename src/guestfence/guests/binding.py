"""Which interface an integration registered a guest for, and whether that
interface is still the one there.

QEMU's ifup script, the libvirt hook and the CNI plugin register a guest on
an interface that exists and dies with the guest (a TAP, a veth). The
firewall dispatches by interface *name*, so a registration that outlived
its interface (QEMU killed with SIGKILL runs no downscript; libvirtd or the
container runtime died before the teardown) would hand its policy to the
next interface of that name, whoever made it. So each such registration
records the owner and the ifindex of the interface it was made for, in the
member's record::

    "link": {"owner": "qemu", "ifindex": 17}

and lives only as long as that interface: when the name is gone, or names
another interface (another ifindex: the kernel does not reuse an index
soon), the registration is stale, and the watcher, ``restore`` and the next
registration on that name remove it (guestfence.operations.reap_stale);
``status`` reports it. ``guest add`` records no binding: its guest is bound
to the name and may precede its interface.

Pure, except ``collect_link_indexes`` (one rtnetlink dump).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, final

from guestfence.errors import HostError, PolicyError
from guestfence.value import Value, init_field, replace

if TYPE_CHECKING:
    from guestfence.guests.firewall import StatusReport

OWNERS = ("qemu", "libvirt", "cni")


@final
class Binding(Value):
    """The integration that registered a guest and the ifindex of its interface then."""

    __slots__ = ("owner", "ifindex")
    owner: str
    ifindex: int

    def __init__(self, *, owner: str, ifindex: int) -> None:
        init_field(self, "owner", owner)
        init_field(self, "ifindex", ifindex)
        if self.owner not in OWNERS or not isinstance(self.ifindex, int) or self.ifindex <= 0:
            raise ValueError(f"invalid binding {self.owner!r} {self.ifindex!r}")


def binding_to_json(binding: Binding) -> dict[str, Any]:
    return {"owner": binding.owner, "ifindex": binding.ifindex}


def binding_from_json(data: Any, *, where: str) -> Binding | None:
    """The inverse of ``binding_to_json``; None when the member has none. Raises PolicyError."""
    if data is None:
        return None
    owner = data.get("owner") if isinstance(data, Mapping) else None
    ifindex = data.get("ifindex") if isinstance(data, Mapping) else None
    if owner not in OWNERS or type(ifindex) is not int or ifindex <= 0:
        raise PolicyError(f"{where}: malformed link record {data!r} (expected owner one of {', '.join(OWNERS)} and a positive ifindex)")
    return Binding(owner=owner, ifindex=ifindex)


def stale_reason(iface: str, binding: Binding, links: Mapping[str, int]) -> str | None:
    """Why a registration on ``iface`` made as ``binding`` has outlived its
    interface, or None while that interface is there. ``links``: name -> ifindex."""
    now = links.get(iface)
    made = f"registered by {binding.owner} for ifindex {binding.ifindex}"
    if now is None:
        return f"its interface {iface} is gone ({made})"
    if now != binding.ifindex:
        return f"{iface} is another interface now (ifindex {now}; {made})"
    return None


def stale_records(records: Any, links: Mapping[str, int], *, iface: str | None = None) -> list[tuple[str, str]]:
    """(guest name, why) of every recorded member (raw, as in the state file)
    whose binding is stale; only those on ``iface`` when given. Reads no more
    of a member than its name, interface and link, so the watcher can ask on
    every event. A member it cannot read is left to ``status``."""
    found = []
    for record in records if isinstance(records, list) else ():
        if not isinstance(record, Mapping) or record.get("link") is None:
            continue
        name, on = record.get("name"), record.get("iface")
        if not isinstance(name, str) or not isinstance(on, str) or (iface is not None and on != iface):
            continue
        try:
            binding = binding_from_json(record["link"], where=f"guest {name}")
        except PolicyError:
            continue
        assert binding is not None
        why = stale_reason(on, binding, links)
        if why is not None:
            found.append((name, why))
    return found


def with_stale_drift(report: StatusReport, section: Any, links: Mapping[str, int]) -> StatusReport:
    """``report`` with each stale registration named as its guest's drift (status exits 1)."""
    stale = dict(stale_records(section.get("members") if isinstance(section, Mapping) else None, links))
    if not stale:
        return report
    guests = tuple(replace(g, drift=(*g.drift, f"stale registration: {stale[g.name]}; `guestfence lockdown watch` "
                                     "removes it (or `guest remove`)")) if g.name in stale else g
                   for g in report.guests)  # fmt: skip
    return replace(report, guests=guests)


def collect_link_indexes() -> dict[str, int]:
    """name -> ifindex of every interface of this network namespace, now."""
    from guestfence.rtnl import link_names

    try:
        return {name: index for index, name in link_names().items()}
    except OSError as exc:
        raise HostError(f"cannot list network interfaces: {exc}") from exc


def drop_stale(members: Iterable[Any], links: Mapping[str, int]) -> tuple[list[Any], list[str]]:
    """Split registered members (guestfence.guests.firewall.Registered) into those
    to keep and, in words, the stale ones dropped (``restore``)."""
    kept, dropped = [], []
    for member in members:
        why = None if member.link is None else stale_reason(member.guest.iface, member.link, links)
        if why is None:
            kept.append(member)
        else:
            dropped.append(f"drop guest {member.guest.name}: {why}")
    return kept, dropped
