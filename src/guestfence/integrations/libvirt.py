"""``guestfence-libvirt-hook``: libvirt's qemu hook, installed as
/etc/libvirt/hooks/qemu.d/guestfence (libvirt runs every script there as it
runs /etc/libvirt/hooks/qemu).

libvirtd calls it with ``DOMAIN OPERATION SUB-OPERATION EXTRA`` and the
domain XML on stdin; a non-zero exit at ``prepare begin`` or ``start
begin`` aborts the start, with the hook's stderr in libvirt's error.

A domain is fenced when its ``<metadata>`` has a guestfence element::

    <metadata>
      <guestfence:guest xmlns:guestfence="https://guestfence.example/xmlns/1">
        <guestfence:policy default="deny">
          <guestfence:allow>tcp://@gateway:8080</guestfence:allow>
          <guestfence:deny>tcp://@host:22</guestfence:deny>
        </guestfence:policy>
        <guestfence:interface mac="52:54:00:00:00:01">
          <guestfence:address>192.0.2.2/30</guestfence:address>
          <guestfence:gateway>192.0.2.1</guestfence:gateway>
          <!-- optional: a <guestfence:policy> of its own replaces the domain's -->
        </guestfence:interface>
      </guestfence:guest>
    </metadata>

Every ``<interface>`` of a fenced domain must be described by MAC (an
undescribed one aborts the start: fail closed). ``type='ethernet'``
interfaces become routed guests on their TAP (``<target dev>``);
``type='bridge'`` and ``type='network'`` ones become bridge-port guests of
their ``<source bridge>`` told apart by MAC; other types (macvtap
``direct``, ``hostdev``, ``user``) are refused.

What each call does (``decide`` is pure; ``run`` carries it out):

    prepare begin     check the metadata and policies (no TAP exists yet);
                      nothing changes; addresses are checked at start
    start begin       register each interface (the TAPs exist, QEMU not yet);
                      an ethernet TAP first gets its gateway addresses (with
                      the guest address's prefix) unless it has them
    reconnect begin   the same, after libvirtd restarts (idempotent)
    stopped end       remove the domain's guests: the TAP names are free for
    release end       the next domain, so its rules must go now (idempotent)

Guests are named ``lv-<first 12 hex digits of the domain UUID>-<n>`` and
carry the comment ``libvirt <domain>``; removal takes every guest with the
domain's prefix, so it removes exactly what the start made, whatever the
XML says by then. Domains without guestfence metadata are left alone.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn, final

from guestfence.errors import GuestfenceError, PolicyError
from guestfence.integrations import registry
from guestfence.integrations.links import give_gateways
from guestfence.guests.guest import Guest, parse_guest
from guestfence.policy.model import parse_policy
from guestfence.policy.model import Policy
from guestfence.state import state_dir

NAMESPACE = "https://guestfence.example/xmlns/1"
_NS = f"{{{NAMESPACE}}}"
_FENCED_TYPES = ("ethernet", "bridge", "network")


@final
@dataclass(frozen=True, kw_only=True)
class Register:
    prefix: str
    guests: tuple[Guest, ...]


@final
@dataclass(frozen=True, kw_only=True)
class Unregister:
    prefix: str


@final
@dataclass(frozen=True, kw_only=True)
class Nothing:
    why: str


Action = Register | Unregister | Nothing


@final
@dataclass(frozen=True, kw_only=True)
class Domain:
    name: str
    uuid: str
    root: ET.Element

    @property
    def prefix(self) -> str:
        return f"lv-{self.uuid.replace('-', '').lower()[:12]}-"

    def fence(self) -> ET.Element | None:
        metadata = self.root.find("metadata")
        return None if metadata is None else metadata.find(f"{_NS}guest")


def parse_domain(text: str) -> Domain:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise PolicyError(f"domain XML on stdin: {exc}") from None
    name, uuid = root.findtext("name"), root.findtext("uuid")
    if root.tag != "domain" or not name or not uuid or len(uuid.replace("-", "")) < 12:
        raise PolicyError("domain XML on stdin: expected <domain> with <name> and <uuid>")
    return Domain(name=name, uuid=uuid, root=root)


def _policy(element: ET.Element | None, where: str) -> Policy | None:
    if element is None:
        return None
    try:
        return parse_policy(
            allow=[(e.text or "").strip() for e in element.findall(f"{_NS}allow")],
            deny=[(e.text or "").strip() for e in element.findall(f"{_NS}deny")],
            default=element.get("default", "deny"),
        )
    except PolicyError as exc:
        raise PolicyError(f"{where}: {exc}") from None


@final
@dataclass(frozen=True, kw_only=True)
class Attachment:
    """One ``<interface>`` of a fenced domain with what the metadata says of it."""

    index: int
    label: str
    kind: str
    mac: str
    dev: str | None
    bridge: str | None
    entry: ET.Element
    policy: Policy


def attachments(domain: Domain) -> tuple[Attachment, ...]:
    """Every interface of a fenced domain, each described by the metadata
    and with a valid policy; the TAP name may be missing yet. Pure."""
    fence = domain.fence()
    assert fence is not None
    where = f"domain {domain.name}"
    policy = _policy(fence.find(f"{_NS}policy"), f"{where}: guestfence:policy")
    described = {}
    for entry in fence.findall(f"{_NS}interface"):
        mac = (entry.get("mac") or "").lower()
        if not mac:
            raise PolicyError(f"{where}: a guestfence:interface without mac=")
        described[mac] = entry
    found = []
    for index, interface in enumerate(domain.root.findall("devices/interface")):
        kind = interface.get("type", "")
        mac_element = interface.find("mac")
        mac = (mac_element.get("address", "") if mac_element is not None else "").lower()
        label = f"{where}: interface #{index} ({kind}, mac {mac or 'unset'})"
        if kind not in _FENCED_TYPES:
            raise PolicyError(f"{label}: guestfence fences only {', '.join(_FENCED_TYPES)} interfaces")
        entry = described.get(mac)
        if entry is None:
            raise PolicyError(f"{label}: no guestfence:interface describes it; refusing to start it unfiltered")
        own = _policy(entry.find(f"{_NS}policy"), f"{label}: guestfence:policy") or policy
        if own is None:
            raise PolicyError(f"{label}: no guestfence:policy for it or the domain")
        target, source = interface.find("target"), interface.find("source")
        found.append(
            Attachment(
                index=index, label=label, kind=kind, mac=mac, entry=entry, policy=own,
                dev=target.get("dev") if target is not None else None,
                bridge=source.get("bridge") if source is not None and kind != "ethernet" else None,
            )
        )  # fmt: skip
    return tuple(found)


def domain_guests(domain: Domain) -> tuple[Guest, ...]:
    """The guests of a fenced domain at ``start begin``, one per interface. Pure."""
    guests = []
    for a in attachments(domain):
        if not a.dev or (a.kind != "ethernet" and not a.bridge):
            raise PolicyError(f"{a.label}: libvirt gave it no {'target dev' if not a.dev else 'source bridge'}")
        guests.append(
            parse_guest(
                name=f"{domain.prefix}{a.index}",
                iface=a.dev,
                addresses=[(e.text or "").strip() for e in a.entry.findall(f"{_NS}address")],
                gateways=[(e.text or "").strip() for e in a.entry.findall(f"{_NS}gateway")],
                policy=a.policy,
                mac=a.mac if a.bridge else None,
                bridge=a.bridge,
                comment=f"libvirt {domain.name}"[:100],
                where=f"{a.label}: ",
            )
        )
    return tuple(guests)


def decide(domain: Domain, operation: str, sub: str) -> Action:
    """What the hook does for one call. Pure."""
    if (operation, sub) in (("stopped", "end"), ("release", "end")):
        return Unregister(prefix=domain.prefix)
    if domain.fence() is None:
        return Nothing(why=f"domain {domain.name} has no guestfence metadata")
    if (operation, sub) == ("prepare", "begin"):
        attachments(domain)
        return Nothing(why=f"domain {domain.name}: guestfence metadata checked")
    if (operation, sub) in (("start", "begin"), ("reconnect", "begin")):
        return Register(prefix=domain.prefix, guests=domain_guests(domain))
    return Nothing(why=f"nothing to do at {operation} {sub}")


def run(action: Action) -> str:
    directory = state_dir()
    if isinstance(action, Nothing):
        return action.why
    if isinstance(action, Unregister):
        gone = registry.unregister_where(lambda g: g.name.startswith(action.prefix), directory)
        return f"removed {', '.join(gone)}" if gone else "no guest to remove"
    keep = {g.name for g in action.guests}
    registry.unregister_where(lambda g: g.name.startswith(action.prefix) and g.name not in keep, directory)
    done = []
    try:
        for guest in action.guests:
            give_gateways(guest)  # libvirt leaves an ethernet TAP bare; QEMU does not run yet
            registry.register(guest, directory, owner="libvirt")
            done.append(f"{guest.name} on {guest.iface}")
    except BaseException:
        # The start is aborted: what was registered for it goes too.
        registry.unregister_where(lambda g: g.name.startswith(action.prefix), directory)
        raise
    return "registered " + ", ".join(done)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = list(sys.argv[1:] if argv is None else argv)
    prog = "guestfence-libvirt-hook"
    if len(args) < 3:
        print(f"{prog}: usage: {prog} DOMAIN OPERATION SUB-OPERATION [EXTRA] < domain.xml", file=sys.stderr)
        sys.exit(2)
    try:
        domain = parse_domain(sys.stdin.read())
        outcome = run(decide(domain, args[1], args[2]))
    except GuestfenceError as err:
        from guestfence.cli import EXIT_CODES

        print(f"{prog}: {args[0]} {args[1]} {args[2]}: {err}", file=sys.stderr)
        sys.exit(next((code for cls, code in EXIT_CODES if isinstance(err, cls)), 1))
    print(f"{prog}: {args[0]} {args[1]} {args[2]}: {outcome}", file=sys.stderr)
    sys.exit(0)
