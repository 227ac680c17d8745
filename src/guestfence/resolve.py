"""DNS names in rules -> addresses, once, when a backend asks.

Never called by the policy core: ``decide`` gets the result through
``Context.names``. A name that does not resolve is reported, and the
decision treats it closed (an allow about it matches nothing, a deny about
it matches everything of its protocol and ports).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import Any, final

from guestfence.policy.model import Address, unmap
from guestfence.value import Value, init_field

Resolver = Callable[..., list[tuple[Any, ...]]]


@final
class Resolution(Value):
    """What each name resolved to, and why the others did not."""

    __slots__ = ("addresses", "failures")
    HASHED = ()
    addresses: Mapping[str, frozenset[Address]]
    failures: Mapping[str, str]

    def __init__(self, *, addresses: Mapping[str, frozenset[Address]] | None = None,
                 failures: Mapping[str, str] | None = None) -> None:
        init_field(self, "addresses", {} if addresses is None else addresses)
        init_field(self, "failures", {} if failures is None else failures)


def resolve_names(names: Iterable[str], resolver: Resolver | None = None) -> Resolution:
    """Resolve ``names`` with ``resolver`` (default: socket.getaddrinfo, imported
    only when there is a name to look up: start-up of ``explain``)."""
    names = sorted(set(names))
    if not names:
        return Resolution()
    import socket

    resolver = resolver or socket.getaddrinfo
    addresses: dict[str, frozenset[Address]] = {}
    failures: dict[str, str] = {}
    for name in names:
        try:
            infos = resolver(name, None, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError) as exc:
            failures[name] = str(exc)
            continue
        found = frozenset(unmap(ipaddress.ip_address(info[4][0].split("%")[0])) for info in infos)
        if found:
            addresses[name] = found
        else:
            failures[name] = "no addresses"
    return Resolution(addresses=addresses, failures=failures)
