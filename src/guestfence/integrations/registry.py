"""Register and unregister guests for the integrations: the very
operations ``guest add``/``remove`` run (guestfence.operations), so the
intent is recorded before each transaction and the interface foot-guns are
refused the same way.

``register`` refuses to replace a guest another owner made: a guest of the
same name must carry the same ``comment`` (the integrations write their
owner there). It records the ifindex of the guest's interface, which must
exist (guestfence.guests.binding): the registration lives as long as that
interface, and a stale one on the same name (its guest's teardown never
ran) is removed first, so the new interface never inherits it.
``unregister_where`` removes every guest a predicate selects, one
transaction each, and does nothing, successfully, when none is registered.
``reap`` is the link watcher's part (``lockdown watch``, at its start and
on every link event): it removes the stale registrations, whose interface
is gone or is another one now. Warnings (an interface that does not exist
yet, ``unix://`` rules a guest cannot be held to) go to stderr, where the
CNI runtime, the libvirt hook's log and QEMU's script output keep them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from guestfence.errors import GuestfenceError, HostError, PolicyError
from guestfence.guests.binding import Binding, collect_link_indexes
from guestfence.guests.firewall import Registered
from guestfence.guests.guest import Guest
from guestfence.operations import add_guest, read_registry, read_status, reap_stale, remove_guest


def _to_stderr(line: str) -> None:
    print(f"guestfence: warning: {line}", file=sys.stderr)


def register(guest: Guest, directory: str, *, owner: str, warn: Callable[[str], None] = _to_stderr) -> Registered:
    """Add ``guest`` (or replace the one of that name it owns) in one
    transaction, bound to its interface as it is now; ``owner``: the
    integration; ``warn`` gets each warning (e.g. ignored unix:// rules)."""
    ifindex = collect_link_indexes().get(guest.iface)
    if ifindex is None:
        raise HostError(f"interface {guest.iface} of guest {guest.name} does not exist; "
                        "an integration registers a guest only for an interface that is there")  # fmt: skip
    reap_stale(directory, iface=guest.iface)
    old = read_registry(directory).find(guest.name)
    if old is not None and old.guest.comment != guest.comment:
        raise PolicyError(f"guest {guest.name} is already registered by someone else ({old.guest.comment!r}); not replacing it")
    # force: the interface is the one the guest's manager (CNI, libvirt,
    # QEMU) made for this guest, so host addresses on it are the guest
    # link's own, never an uplink's; ``guest add`` cannot know that.
    outcome = add_guest(directory, guest, dry_run=False, force=True, link=Binding(owner=owner, ifindex=ifindex))
    for line in outcome.warnings:
        if not line.startswith("--force: "):  # what force overrode was decided above, not news
            warn(line)
    assert outcome.member is not None
    return outcome.member


def unregister_where(selected: Callable[[Guest], bool], directory: str) -> list[str]:
    """Remove every registered guest ``selected`` picks; their names (maybe none)."""
    gone = [m.guest.name for m in read_registry(directory).members if selected(m.guest)]
    for name in gone:
        remove_guest(directory, name, dry_run=False)
    return gone


def reap(directory: str, say: Callable[[str], None], warn: Callable[[str], None]) -> None:
    """Remove the stale registrations now, saying each; a failure is warned
    (the state, not the event, decides: the next event or start tries again)."""
    try:
        for line in reap_stale(directory):
            say(line)
    except GuestfenceError as err:
        warn(f"removing stale guests: {err}")


def check(guest: Guest, directory: str) -> list[str]:
    """What is wrong with ``guest``'s registration: not recorded, recorded
    differently, or drifted in the live ruleset (its own objects, or the
    shared ones every guest relies on). Empty when all is well."""
    registry = read_registry(directory)
    member = registry.find(guest.name)
    if member is None:
        return [f"guest {guest.name} is not registered"]
    if member.guest != guest:
        return [f"guest {guest.name} is registered with different settings"]
    status = read_status(directory)
    own = [f"guest {guest.name}: {line}" for s in status.guests if s.name == guest.name for line in s.drift]
    return own + list(status.drift)
