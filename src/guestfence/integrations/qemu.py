"""``guestfence-qemu-ifup`` / ``guestfence-qemu-ifdown``: QEMU's
``-netdev tap,ifname=TAP,script=...,downscript=...`` pair.

QEMU runs ``script`` with the TAP's name as ``$1`` after creating the TAP
and before the guest runs; a non-zero exit aborts QEMU's start. The guest
comes from a guests file, the same ``[[guest]]`` tables as ``guestfence
apply`` (``$GUESTFENCE_GUESTS``, else /etc/guestfence/guests.toml): the table
whose ``iface`` is ``$1``, else the one whose ``name`` is ``$1`` (its
``iface`` is then taken to be ``$1``).

ifup, in this order, so the link carries nothing before its rules exist:
give a routed guest's TAP (still down) its gateway addresses; register the
guest (one transaction, recorded); attach the TAP to the guest's
``bridge`` if it has one; set the TAP up (guestfence.integrations.links). Any failure exits non-zero with the reason on stderr (and
removes the registration, since QEMU then runs no downscript).

ifdown removes the guest registered for ``$1`` (by interface, else by name)
and succeeds when there is none: the TAP is gone, and its rules must go
before another TAP of that name comes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from guestfence.config import load_config
from guestfence.errors import GuestfenceError, PolicyError
from guestfence.integrations import registry
from guestfence.integrations.links import give_gateways, raise_link
from guestfence.guests.guest import Guest
from guestfence.state import state_dir
from guestfence.value import replace

ENV_GUESTS = "GUESTFENCE_GUESTS"
DEFAULT_GUESTS = Path("/etc/guestfence/guests.toml")


def guests_file() -> Path:
    return Path(os.environ.get(ENV_GUESTS) or DEFAULT_GUESTS)


def select_guest(guests: Sequence[Guest], tap: str, *, source: str) -> Guest:
    """The guest for ``tap``: by interface, else by name. Pure."""
    match = next((g for g in guests if g.iface == tap), None) or next((g for g in guests if g.name == tap), None)
    if match is None:
        raise PolicyError(f"{source}: no [[guest]] has iface or name {tap!r}; refusing to start the guest unfiltered")
    return replace(match, iface=tap)


def run_ifup(tap: str) -> str:
    config = load_config(guests_file())
    guest = select_guest(config.guests, tap, source=config.source)
    directory = state_dir()
    give_gateways(guest)  # the TAP is still down: nothing passes yet
    registry.register(guest, directory, owner="qemu")
    try:
        raise_link(guest)
    except BaseException:
        # QEMU will not start, so no downscript will run: take the rules back.
        registry.unregister_where(lambda g: g.name == guest.name, directory)
        raise
    return f"guest {guest.name} registered on {tap}"


def run_ifdown(tap: str) -> str:
    gone = registry.unregister_where(lambda g: g.iface == tap, state_dir())
    return f"guest {', '.join(gone)} removed from {tap}" if gone else f"no guest registered on {tap}"


def _main(prog: str, action: Callable[[str], str]) -> NoReturn:
    if len(sys.argv) < 2 or not sys.argv[1]:
        print(f"{prog}: usage: {prog} TAP (QEMU passes the interface name)", file=sys.stderr)
        sys.exit(2)
    try:
        print(f"{prog}: {action(sys.argv[1])}", file=sys.stderr)
    except GuestfenceError as err:
        from guestfence.cli import EXIT_CODES

        print(f"{prog}: {err}", file=sys.stderr)
        sys.exit(next((code for cls, code in EXIT_CODES if isinstance(err, cls)), 1))
    sys.exit(0)


def ifup() -> NoReturn:
    _main("guestfence-qemu-ifup", run_ifup)


def ifdown() -> NoReturn:
    _main("guestfence-qemu-ifdown", run_ifdown)
