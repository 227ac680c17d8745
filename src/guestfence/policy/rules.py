"""Value types of the policy language: what a policy is made of (rules,
flows, decisions; the ``Policy`` itself is in model.py, which re-exports
these). Pure: no I/O; imports nothing of the policy package.

Every value is frozen, hashable and valid once it exists (a
guestfence.value.Value: a frozen dataclass without its start-up cost); its
``__init__`` checks invariants only. Turning text into values is
grammar.py's job, and ``str()`` of a value gives the canonical grammar, so
``parse_rule(str(rule)) == rule`` holds for every rule.

Unix destinations have values of their own (``UnixRule``, ``UnixFlow``),
kept in the policy apart from the network rules (``allow_unix``,
``deny_unix``): only the process sandbox can enforce them.

IPv4-mapped IPv6 addresses never appear inside these values: the grammar
turns ``[::ffff:a.b.c.d]`` into the IPv4 address, and ``decide`` decides a
destination as the kernel delivers it (``as_delivered``: the mapped form as
IPv4, the unspecified address as loopback), so no rule can be bypassed, or
mis-applied, through a form the kernel reinterprets.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TypeVar, Union, final

from guestfence.value import Value, init_field

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def unmap(address: Address) -> Address:
    """The IPv4 address behind an IPv4-mapped IPv6 address; others unchanged."""
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


LOOPBACK = {4: ipaddress.IPv4Address("127.0.0.1"), 6: ipaddress.IPv6Address("::1")}
LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def as_delivered(address: Address) -> Address:
    """The address the kernel delivers a connect or send aimed at ``address``
    to: an IPv4-mapped address is its IPv4 address, and the unspecified
    address (``0.0.0.0``, ``::``, ``::ffff:0.0.0.0``) is loopback, where
    Linux sends it (``ip_route_output`` / ``udpv6_sendmsg``; a socket bound
    to another local address gets that address, which is the host's too)."""
    address = unmap(address)
    if address.is_unspecified:
        return LOOPBACK[address.version]
    return address


def received_by_form(address: Address) -> bool:
    """Whether the form of ``address`` alone makes it one the host receives:
    loopback (all of 127.0.0.0/8, ::1), multicast (224.0.0.0/4, ff00::/8),
    the limited broadcast 255.255.255.255. Expects ``as_delivered`` output."""
    return address.is_loopback or address.is_multicast or address == LIMITED_BROADCAST


def unmap_network(network: Network) -> Network:
    """An IPv6 network inside ::ffff:0:0/96 as the IPv4 network it maps."""
    if network.version == 6 and network.subnet_of(_MAPPED):
        base = network.network_address.ipv4_mapped
        assert base is not None
        return ipaddress.IPv4Network((base, network.prefixlen - 96))
    return network


class Proto(enum.Enum):
    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"

    @property
    def has_ports(self) -> bool:
        return self is not Proto.ICMP


class Action(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"


class AddressType(enum.Enum):
    """How the host's kernel classifies a destination at this moment: the
    route type of ``ip route get`` and of nftables' ``fib daddr type``."""

    LOCAL = "local"
    BROADCAST = "broadcast"
    MULTICAST = "multicast"
    ANYCAST = "anycast"
    UNICAST = "unicast"
    """Routed elsewhere."""
    UNROUTABLE = "unroutable"
    """No route, or a blackhole, prohibit or unreachable route."""


HOST_RECEIVED = frozenset({AddressType.LOCAL, AddressType.BROADCAST, AddressType.MULTICAST, AddressType.ANYCAST})
"""The types the host receives for itself: what ``@host`` stands for."""


def local_types(local: Collection[Address]) -> Callable[[Address], AddressType]:
    """An ``address_type`` for a host known by its addresses (audits, the
    demo, tests): those in ``local`` (read at each call) are LOCAL, the rest UNICAST."""
    return lambda address: AddressType.LOCAL if address in local else AddressType.UNICAST


class Symbol(enum.Enum):
    HOST = "host"
    """Every address the host itself receives on at the moment of the
    decision: its unicast addresses on any interface, all of loopback, the
    unspecified addresses as destinations (delivered to loopback), and the
    broadcast, multicast and anycast addresses of its links."""
    GATEWAY = "gateway"
    """The host-side address(es) of a VM guest's link."""


@final
class PortRange(Value):
    """Ports ``lo`` to ``hi``; ordered by (lo, hi)."""

    __slots__ = ("lo", "hi")
    __match_args__ = ("lo", "hi")
    lo: int
    hi: int

    def __init__(self, lo: int, hi: int) -> None:
        init_field(self, "lo", lo)
        init_field(self, "hi", hi)
        if not 0 <= lo <= hi <= 65535:
            raise ValueError(f"invalid port range {lo}-{hi}")

    def __lt__(self, other: PortRange) -> bool:
        return (self.lo, self.hi) < (other.lo, other.hi) if other.__class__ is PortRange else NotImplemented

    def __le__(self, other: PortRange) -> bool:
        return (self.lo, self.hi) <= (other.lo, other.hi) if other.__class__ is PortRange else NotImplemented

    def __gt__(self, other: PortRange) -> bool:
        return (self.lo, self.hi) > (other.lo, other.hi) if other.__class__ is PortRange else NotImplemented

    def __ge__(self, other: PortRange) -> bool:
        return (self.lo, self.hi) >= (other.lo, other.hi) if other.__class__ is PortRange else NotImplemented

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.lo <= port <= self.hi

    def __str__(self) -> str:
        if self == ANY_PORT:
            return "*"
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"


ANY_PORT = PortRange(0, 65535)


@final
class AnyHost(Value):
    __slots__ = ()

    def __str__(self) -> str:
        return "*"


@final
class NetHost(Value):
    """An address (a /32 or /128 network) or a CIDR block."""

    __slots__ = ("network",)
    __match_args__ = ("network",)
    network: Network

    def __init__(self, network: Network) -> None:
        init_field(self, "network", network)
        if unmap_network(network) != network:
            raise ValueError("IPv4-mapped networks must be given as IPv4")

    def __str__(self) -> str:
        net = self.network
        single = net.prefixlen == net.max_prefixlen
        if net.version == 4:
            return str(net.network_address) if single else str(net)
        addr = f"[{net.network_address}]"
        return addr if single else f"{addr}/{net.prefixlen}"


@final
class NameHost(Value):
    """A DNS name, lower case, without a trailing dot. Resolved outside policy/."""

    __slots__ = ("name",)
    __match_args__ = ("name",)
    name: str

    def __init__(self, name: str) -> None:
        init_field(self, "name", name)

    def __str__(self) -> str:
        return self.name


@final
class SymbolHost(Value):
    __slots__ = ("symbol",)
    __match_args__ = ("symbol",)
    symbol: Symbol

    def __init__(self, symbol: Symbol) -> None:
        init_field(self, "symbol", symbol)

    def __str__(self) -> str:
        return f"@{self.symbol.value}"


Host = Union[AnyHost, NetHost, NameHost, SymbolHost]


class UnixScope(enum.Enum):
    """What a ``unix://`` rule names."""

    PATH = "path"
    """One socket path (absolute, as the guest resolves it): ``unix:///run/x.sock``."""
    TREE = "tree"
    """Every socket path under a directory: ``unix:///run/user/*``."""
    ABSTRACT = "abstract"
    """One abstract name (Linux's namespace of names without files): ``unix://@name``."""
    ANY_ABSTRACT = "any-abstract"
    """Every abstract name: ``unix://@*``."""
    ANY = "any"
    """Every unix socket, paths and abstract names: ``unix://*``."""


@final
class UnixRule(Value):
    """``unix://PATH``, ``unix://DIR/*``, ``unix://@NAME``, ``unix://@*`` or ``unix://*``.

    ``target`` is the path (PATH), the directory (TREE; ``/`` for every
    path), the name (ABSTRACT), and empty for the scopes that name no one.
    Paths are absolute and normalised: no empty, ``.`` or ``..`` component,
    no trailing slash.
    """

    __slots__ = ("scope", "target")
    scope: UnixScope
    target: str

    def __init__(self, *, scope: UnixScope, target: str = "") -> None:
        init_field(self, "scope", scope)
        init_field(self, "target", target)
        if self.scope in (UnixScope.PATH, UnixScope.TREE):
            if not is_normal_path(self.target):
                raise ValueError(f"unix rule path {self.target!r} is not absolute and normalised")
            if self.scope is UnixScope.PATH and self.target == "/":
                raise ValueError("'/' is a directory, not a socket")
        elif self.scope is UnixScope.ABSTRACT:
            if not self.target:
                raise ValueError("an abstract unix name is not empty")
        elif self.target:
            raise ValueError(f"{self.scope.value} unix rules name no target")

    def __str__(self) -> str:
        match self.scope:
            case UnixScope.PATH:
                return f"unix://{self.target}"
            case UnixScope.TREE:
                return "unix:///*" if self.target == "/" else f"unix://{self.target}/*"
            case UnixScope.ABSTRACT:
                return f"unix://@{self.target}"
            case UnixScope.ANY_ABSTRACT:
                return "unix://@*"
        return "unix://*"


ANY_UNIX = UnixRule(scope=UnixScope.ANY)


def is_normal_path(path: str) -> bool:
    """Absolute, without empty, ``.`` or ``..`` components or a trailing slash."""
    if path == "/":
        return True
    parts = path.split("/")
    return path.startswith("/") and all(p not in ("", ".", "..") for p in parts[1:])


@final
class UnixFlow(Value):
    """One unix destination a guest aims at: a resolved socket path, or an abstract name.

    ``path`` is the path of the socket the guest's name resolves to, in the
    guest's view of the file system; ``abstract`` is the abstract name
    (bytes after the leading NUL, shown with backslash escapes where not
    printable). Exactly one is set.
    """

    __slots__ = ("path", "abstract")
    path: str | None
    abstract: str | None

    def __init__(self, *, path: str | None = None, abstract: str | None = None) -> None:
        init_field(self, "path", path)
        init_field(self, "abstract", abstract)
        if (self.path is None) == (self.abstract is None):
            raise ValueError("a unix flow has a path or an abstract name")

    def __str__(self) -> str:
        text = self.path if self.path is not None else f"@{self.abstract}"
        raw = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return "unix://" + "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in raw)


@final
class Rule(Value):
    """``proto://host[:ports]``. ``ports`` is sorted, merged, and empty for ICMP."""

    __slots__ = ("proto", "host", "ports")
    proto: Proto
    host: Host
    ports: tuple[PortRange, ...]

    def __init__(self, *, proto: Proto, host: Host, ports: tuple[PortRange, ...] = ()) -> None:
        init_field(self, "proto", proto)
        init_field(self, "host", host)
        init_field(self, "ports", ports)
        if self.proto.has_ports and not self.ports:
            raise ValueError(f"{self.proto.value} rules need ports")
        if not self.proto.has_ports and self.ports:
            raise ValueError("icmp rules take no ports")
        if list(self.ports) != merge_ports(self.ports):
            raise ValueError("ports must be sorted and merged")

    def __str__(self) -> str:
        text = f"{self.proto.value}://{self.host}"
        if self.ports:
            text += ":" + ",".join(str(p) for p in self.ports)
        return text


def merge_ports(ranges: Iterable[PortRange]) -> list[PortRange]:
    """Sort ranges and merge the ones that overlap or touch."""
    merged: list[PortRange] = []
    for r in sorted(ranges):
        if merged and r.lo <= merged[-1].hi + 1:
            last = merged.pop()
            merged.append(PortRange(last.lo, max(last.hi, r.hi)))
        else:
            merged.append(r)
    return merged


_R = TypeVar("_R", Rule, UnixRule)


def canonical_rules(rules: Iterable[_R]) -> list[_R]:
    return sorted(set(rules), key=str)


@final
class Flow(Value):
    """One destination a guest aims at. ``port`` is None exactly for ICMP.

    ``address`` is kept as given (a mapped address shows as such in logs);
    ``decide`` unmaps it before matching.
    """

    __slots__ = ("proto", "address", "port")
    proto: Proto
    address: Address
    port: int | None

    def __init__(self, *, proto: Proto, address: Address, port: int | None = None) -> None:
        init_field(self, "proto", proto)
        init_field(self, "address", address)
        init_field(self, "port", port)
        if self.proto.has_ports != (self.port is not None):
            raise ValueError(f"{self.proto.value} flows {'need' if self.proto.has_ports else 'take no'} port")
        if self.port is not None and not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} out of range")

    def __str__(self) -> str:
        host = str(self.address) if self.address.version == 4 else f"[{self.address}]"
        port = "" if self.port is None else f":{self.port}"
        return f"{self.proto.value}://{host}{port}"


@final
class Context(Value):
    """What a decision needs to know about the world, supplied by the caller.

    - ``gateways``: the addresses ``@gateway`` stands for.
    - ``address_type``: how the host classifies an address right now, for
      ``@host``; the backends pass a route lookup, tests ``local_types``.
      Forms the host always receives (loopback, multicast, the limited
      broadcast, see ``received_by_form``) need no answer from it.
    - ``names``: the addresses each DNS name resolved to.
    - ``guests``: the addresses of registered VM guests (a VM guest's
      context): ``*`` and the default never reach them, only a rule naming
      an address does, as the guests' firewall makes it.

    A symbol or name the context cannot answer is decided closed: an allow
    rule about it does not match, a deny rule about it does.
    """

    __slots__ = ("gateways", "address_type", "names", "guests")
    COMPARED = ("gateways", "guests")
    gateways: frozenset[Address]
    address_type: Callable[[Address], AddressType] | None
    names: Mapping[str, frozenset[Address]]
    guests: frozenset[Address]

    def __init__(self, *, gateways: frozenset[Address] = frozenset(),
                 address_type: Callable[[Address], AddressType] | None = None,
                 names: Mapping[str, frozenset[Address]] | None = None, guests: frozenset[Address] = frozenset()) -> None:
        init_field(self, "gateways", gateways)
        init_field(self, "address_type", address_type)
        init_field(self, "names", {} if names is None else names)
        init_field(self, "guests", guests)


@final
class Decision(Value):
    """The verdict on a flow and what made it: a ``rule``, or, with ``rule``
    None, a fixed part of the meaning named by ``basis`` (e.g. "link
    essential", "another guest"), or else the default."""

    __slots__ = ("action", "rule", "reason", "basis")
    action: Action
    rule: Rule | UnixRule | None
    reason: str
    basis: str

    def __init__(self, *, action: Action, rule: Rule | UnixRule | None, reason: str, basis: str = "") -> None:
        init_field(self, "action", action)
        init_field(self, "rule", rule)
        init_field(self, "reason", reason)
        init_field(self, "basis", basis)

    @property
    def allowed(self) -> bool:
        return self.action is Action.ALLOW

    @property
    def decided_by(self) -> str:
        if self.rule is not None:
            return f"{self.action.value} {self.rule}"
        if self.basis:
            return f"{self.action.value} ({self.basis})"
        return f"default {self.action.value}"
