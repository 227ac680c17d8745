"""Text -> policy values. Pure: no I/O, no DNS.

The grammar (DESIGN.md section 1)::

    rule    := [scheme "://"] host [":" ports]
    scheme  := "tcp" | "udp" | "icmp"            no scheme means tcp
    host    := IPv4 | IPv4 "/" len
             | "[" IPv6 "]" | "[" IPv6 "]/" len
             | DNS name | "*" | "@host" | "@gateway"
    ports   := "*" | port-item ("," port-item)*   tcp and udp need ports;
    port-item := N | N "-" M                      icmp takes none; 1 <= N <= M <= 65535

    destination := [scheme "://"] address [":" N]     (for ``explain``)

    unix    := "unix://" path          one socket, by its absolute path
             | "unix://" dir "/*"      every socket below dir ("unix:///*": every path)
             | "unix://@" name         one abstract socket (name: printable, no '*')
             | "unix://@*"             every abstract socket
             | "unix://*"              every unix socket
    unix-destination := "unix://" path | "unix://@" name   (for ``explain``)

Paths are written as the guest resolves them, absolute, without empty,
``.`` or ``..`` components or a trailing slash; ``*`` only as the whole
last component.

One shorthand is expanded at parse time by ``parse_rules``: a host with
neither scheme nor port (``@host``, ``192.0.2.1``) means every protocol to
it, ``tcp://H:*``, ``udp://H:*`` and ``icmp://H``, so
``--net-deny @host`` keeps a guest off the host whatever it speaks. A bare
``@host`` or ``*`` also stands for ``unix://*``: every unix socket a
sandboxed process could reach is a service of this host (its files, or
abstract names in its network namespace), so ``--net-deny @host`` puts the
Docker socket out of reach too.
``parse_rule`` itself reads exactly one rule and refuses that form.

Normalisation, so that ``str(parse_rule(t))`` is the one canonical text:
the scheme is always written; DNS names are lower case without a trailing
dot; ``[::ffff:a.b.c.d]`` (and mapped CIDRs) become IPv4; port lists are
sorted and merged, and ``*`` covers every port.

Every error is a RuleSyntaxError naming the column and width of the
offending token and what was expected; nothing else escapes, whatever the
input (a property test holds us to that).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from guestfence.errors import PolicyError, RuleSyntaxError, raise_collected
from guestfence.policy.rules import (
    ANY_PORT,
    Action,
    AnyHost,
    Flow,
    Host,
    NameHost,
    NetHost,
    PortRange,
    Proto,
    Rule,
    Symbol,
    SymbolHost,
    ANY_UNIX,
    UnixFlow,
    UnixRule,
    UnixScope,
    merge_ports,
    unmap,
    unmap_network,
)

_SCHEMES = {p.value: p for p in Proto}
_SYMBOLS = {f"@{s.value}": s for s in Symbol}
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_DIGITS = re.compile(r"[0-9]+\Z")
_LOOKS_NUMERIC = re.compile(r"[0-9.]+\Z")
_EXAMPLE = "e.g. tcp://192.0.2.1:22, udp://[2001:db8::53]:53, icmp://*"


class _Fail(Exception):
    """Internal: carries (message, start, length) up to parse_rule."""

    def __init__(self, message: str, start: int, length: int) -> None:
        super().__init__(message)
        self.message = message
        self.start = start
        self.length = length


def parse_rule(text: str) -> Rule:
    """One rule from its text. Raises RuleSyntaxError."""
    try:
        proto, host, ports = _parse(text, for_destination=False)
    except _Fail as f:
        raise _syntax_error(text, f) from None
    assert not isinstance(host, ipaddress.IPv4Address | ipaddress.IPv6Address)
    return Rule(proto=proto, host=host, ports=tuple(ports))


def parse_rules(text: str) -> tuple[Rule | UnixRule, ...]:
    """The rules one rule text stands for: one, or three for a bare host
    (four, with ``unix://*``, for a bare ``@host`` or ``*``)."""
    if isinstance(text, str) and text.startswith(UNIX_SCHEME):
        return (parse_unix_rule(text),)
    if not _is_bare_host(text):
        return (parse_rule(text),)
    try:
        _check_characters(text)
        host, _ = _parse_host(text, 0, for_destination=False)
    except _Fail as f:
        raise _syntax_error(text, f) from None
    assert not isinstance(host, ipaddress.IPv4Address | ipaddress.IPv6Address)
    unix = (ANY_UNIX,) if host in (AnyHost(), SymbolHost(Symbol.HOST)) else ()
    return (
        Rule(proto=Proto.TCP, host=host, ports=(ANY_PORT,)),
        Rule(proto=Proto.UDP, host=host, ports=(ANY_PORT,)),
        Rule(proto=Proto.ICMP, host=host),
        *unix,
    )


UNIX_SCHEME = "unix://"
_UNIX_EXPECTED = "expected unix:///PATH, unix:///DIR/*, unix://@NAME, unix://@* or unix://*"


def parse_unix_rule(text: str) -> UnixRule:
    """One ``unix://`` rule. Raises RuleSyntaxError."""
    try:
        return _parse_unix(text, for_destination=False)
    except _Fail as f:
        raise _syntax_error(text, f) from None


def parse_unix_destination(text: str) -> UnixFlow:
    """One unix destination (``unix:///run/docker.sock``, ``unix://@name``) for explain."""
    try:
        rule = _parse_unix(text, for_destination=True)
    except _Fail as f:
        raise _syntax_error(text, f) from None
    if rule.scope is UnixScope.PATH:
        return UnixFlow(path=rule.target)
    return UnixFlow(abstract=rule.target)


def _parse_unix(text: str, *, for_destination: bool) -> UnixRule:
    _check_characters(text)
    pos = len(UNIX_SCHEME)
    body = text[pos:]
    if not body:
        raise _Fail(f"missing socket after unix:// ({_UNIX_EXPECTED})", pos - 1, 1)
    star = body.find("*")
    if for_destination and star >= 0:
        raise _Fail("a destination names one socket, not '*'", pos + star, 1)
    if body == "*":
        return ANY_UNIX
    if body.startswith("@"):
        name = body[1:]
        if name == "*":
            return UnixRule(scope=UnixScope.ANY_ABSTRACT)
        if not name:
            raise _Fail("missing abstract socket name after '@' (or @* for every name)", pos, 1)
        if star >= 0:
            raise _Fail("'*' inside an abstract name (only unix://@* names every abstract socket)", pos + star, 1)
        return UnixRule(scope=UnixScope.ABSTRACT, target=name)
    if not body.startswith("/"):
        raise _Fail(f"relative socket path {body!r} ({_UNIX_EXPECTED})", pos, len(body))
    scope = UnixScope.PATH
    path = body
    if body.endswith("/*"):
        scope, path = UnixScope.TREE, body[:-2] or "/"
    stray = path.find("*")
    if stray >= 0:
        raise _Fail("'*' can only be the whole last component, as in unix:///run/*", pos + stray, 1)
    if path != "/":
        at = pos + 1
        for part in path[1:].split("/"):
            if part in ("", ".", ".."):
                if not part:
                    what = "trailing slash" if at == pos + len(path) else "empty component"
                else:
                    what = f"{part!r} component"
                start = at - 1 if what == "trailing slash" else at
                raise _Fail(f"{what} in socket path (write the path as it resolves, e.g. /run/docker.sock)",
                            start, max(1, len(part)))
            at += len(part) + 1
    elif scope is UnixScope.PATH:
        raise _Fail("'/' is a directory, not a socket (unix:///* names every path)", pos, 1)
    return UnixRule(scope=scope, target=path)


def _is_bare_host(text: object) -> bool:
    if not isinstance(text, str) or not text or "://" in text:
        return False
    if text.startswith("["):
        return "]" in text and ":" not in text.partition("]")[2]
    return ":" not in text


def parse_destination(text: str) -> Flow:
    """One destination (``tcp://192.0.2.1:22``) for explain. Raises RuleSyntaxError."""
    try:
        proto, host, ports = _parse(text, for_destination=True)
    except _Fail as f:
        raise _syntax_error(text, f) from None
    assert isinstance(host, ipaddress.IPv4Address | ipaddress.IPv6Address)
    return Flow(proto=proto, address=host, port=ports[0].lo if ports else None)


def parse_action(text: str) -> Action:
    """``allow`` or ``deny``. Raises RuleSyntaxError."""
    try:
        return Action(text)
    except ValueError:
        raise RuleSyntaxError(
            f"unknown default {text!r} (expected 'allow' or 'deny')",
            text=text,
            column=1,
            length=len(text),
        ) from None


def parse_rule_texts(
    *, allow: Iterable[str] = (), deny: Iterable[str] = (), default: str = "deny"
) -> tuple[Action, list[Rule | UnixRule], list[Rule | UnixRule]]:
    """The default and the allow and deny rules of a policy given as texts
    (``guestfence.policy.model.parse_policy`` makes the Policy). Reports
    every bad rule at once (PolicyError)."""
    errors: list[PolicyError] = []
    parsed: dict[str, list[Rule | UnixRule]] = {"allow": [], "deny": []}
    action = Action.DENY
    try:
        action = parse_action(default)
    except RuleSyntaxError as e:
        errors.append(e.located(source="--default", line=None, offset=1))
    for kind, texts in (("allow", allow), ("deny", deny)):
        for text in texts:
            try:
                parsed[kind].extend(parse_rules(text))
            except RuleSyntaxError as e:
                errors.append(e.located(source=f"--net-{kind}", line=None, offset=1))
    raise_collected(errors)
    return action, parsed["allow"], parsed["deny"]


def _syntax_error(text: str, f: _Fail) -> RuleSyntaxError:
    return RuleSyntaxError(f.message, text=text, column=f.start + 1, length=f.length)


def _parse(text: str, *, for_destination: bool) -> tuple[Proto, object, list[PortRange]]:
    if not isinstance(text, str):
        raise _Fail(f"expected a string, got {type(text).__name__}", 0, 1)
    if not text:
        raise _Fail(f"empty rule (expected a host, {_EXAMPLE}; use * for any host)", 0, 1)
    _check_characters(text)

    proto, pos = Proto.TCP, 0
    if "://" in text:
        scheme = text[: text.index("://")]
        if scheme not in _SCHEMES:
            raise _Fail(f"unknown scheme {scheme!r} (expected tcp, udp, icmp or unix)", 0, max(1, len(scheme)))
        if scheme == "unix":
            raise _Fail("a unix rule, where a network rule was expected", 0, len(scheme))
        proto, pos = _SCHEMES[scheme], len(scheme) + 3
    if pos == len(text):
        raise _Fail("missing host after the scheme (use * for any host)", pos - 1, 1)

    host, pos = _parse_host(text, pos, for_destination=for_destination)

    if pos == len(text):
        if proto.has_ports:
            raise _Fail(
                f"missing port for {proto.value} (expected :PORT, :LO-HI, a comma list or :*)",
                len(text) - 1,
                1,
            )
        return proto, host, []
    if not proto.has_ports:
        raise _Fail("icmp rules take no port", pos, len(text) - pos)
    if text[pos] != ":":
        raise _Fail(f"unexpected {text[pos]!r} after the host (expected ':' and ports)", pos, 1)
    ports = _parse_ports(text, pos + 1, for_destination=for_destination)
    return proto, host, ports


def _check_characters(text: str) -> None:
    bad = next((i for i, c in enumerate(text) if c.isspace() or not c.isprintable()), None)
    if bad is not None:
        raise _Fail("unexpected whitespace or control character (rules contain no spaces)", bad, 1)


def _parse_host(text: str, pos: int, *, for_destination: bool) -> tuple[object, int]:
    if text[pos] == "[":
        return _parse_bracketed(text, pos, for_destination=for_destination)
    end = text.find(":", pos)
    end = len(text) if end < 0 else end
    token = text[pos:end]
    if not token:
        raise _Fail("missing host before ':' (use * for any host)", pos, 1)
    if for_destination:
        try:
            return unmap(ipaddress.IPv4Address(token)), end
        except ValueError:
            raise _Fail(
                f"{token!r} is not an IP address (expected an IPv4 address or [IPv6])", pos, len(token)
            ) from None
    if ":" in text[end + 1 :] and not token.startswith("@"):
        raise _Fail("IPv6 addresses must be written in brackets, e.g. [2001:db8::1]:22", pos, len(text) - pos)
    if token == "*":
        return AnyHost(), end
    if token.startswith("@"):
        if token not in _SYMBOLS:
            raise _Fail(f"unknown symbol {token!r} (expected @host or @gateway)", pos, len(token))
        return SymbolHost(_SYMBOLS[token]), end
    if "/" in token:
        return _parse_network(token, pos, version=4), end
    if _LOOKS_NUMERIC.match(token):
        try:
            return NetHost(network=ipaddress.IPv4Network(ipaddress.IPv4Address(token))), end
        except ValueError:
            raise _Fail(f"invalid IPv4 address {token!r}", pos, len(token)) from None
    return _parse_name(token, pos), end


def _parse_bracketed(text: str, pos: int, *, for_destination: bool) -> tuple[object, int]:
    close = text.find("]", pos)
    if close < 0:
        raise _Fail("missing ']' after the IPv6 address", pos, len(text) - pos)
    inner = text[pos + 1 : close]
    try:
        address = ipaddress.IPv6Address(inner)
    except ValueError:
        raise _Fail(f"invalid IPv6 address {inner!r}", pos + 1, max(1, len(inner))) from None
    end = close + 1
    if for_destination:
        return unmap(address), end
    if end < len(text) and text[end] == "/":
        stop = text.find(":", end)
        stop = len(text) if stop < 0 else stop
        net = _parse_network(f"{inner}{text[end:stop]}", pos, version=6, shown=text[pos:stop])
        return net, stop
    return NetHost(network=unmap_network(ipaddress.IPv6Network(address))), end


def _parse_network(token: str, pos: int, *, version: int, shown: str | None = None) -> NetHost:
    shown = token if shown is None else shown
    addr, _, length = token.partition("/")
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    max_len = 32 if version == 4 else 128
    if not _DIGITS.match(length) or len(length) > 3 or int(length) > max_len:
        at = pos + shown.index("/") + 1
        raise _Fail(f"invalid prefix length {length!r} (expected 0-{max_len})", at, max(1, len(length)))
    try:
        network = cls(f"{addr}/{int(length)}")
    except ValueError:
        try:
            loose = cls(f"{addr}/{int(length)}", strict=False)
        except ValueError:
            family = "IPv4" if version == 4 else "IPv6"
            raise _Fail(f"invalid {family} network {shown!r}", pos, len(shown)) from None
        raise _Fail(
            f"{shown!r} has host bits set (did you mean {NetHost(network=unmap_network(loose))}?)",
            pos,
            len(shown),
        ) from None
    return NetHost(network=unmap_network(network))


def _parse_name(token: str, pos: int) -> Host:
    name = token.lower().rstrip(".") if token != "." else ""
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise _Fail(
            f"invalid host {token!r} (expected an IPv4 address, [IPv6], CIDR, DNS name, *, @host or @gateway)",
            pos,
            len(token),
        )
    return NameHost(name=name)


def _parse_ports(text: str, pos: int, *, for_destination: bool) -> list[PortRange]:
    body = text[pos:]
    if not body:
        raise _Fail("missing port after ':' (expected PORT, LO-HI, a comma list or *)", pos - 1, 1)
    if body == "*":
        if for_destination:
            raise _Fail("a destination has one port, not '*'", pos, 1)
        return [ANY_PORT]
    ranges: list[PortRange] = []
    at = pos
    for item in body.split(","):
        if for_destination and ("," in body or "-" in item):
            raise _Fail("a destination has one port", pos, len(body))
        ranges.append(_parse_port_item(item, at))
        at += len(item) + 1
    return merge_ports(ranges)


def _parse_port_item(item: str, at: int) -> PortRange:
    if item == "*":
        raise _Fail("'*' cannot be combined with other ports", at, 1)
    if not item:
        raise _Fail("empty port in list (expected PORT or LO-HI)", max(at - 1, 0), 1)
    lo_text, dash, hi_text = item.partition("-")
    lo = _parse_port(lo_text, at)
    hi = _parse_port(hi_text, at + len(lo_text) + 1) if dash else lo
    if lo > hi:
        raise _Fail(f"port range {item!r} runs backwards (expected LO-HI with LO <= HI)", at, len(item))
    return PortRange(lo, hi)


def _parse_port(token: str, at: int) -> int:
    if not _DIGITS.match(token):
        raise _Fail(f"invalid port {token!r} (expected a number 1-65535)", at, max(1, len(token)))
    if len(token) > 5 or not 1 <= int(token) <= 65535:
        raise _Fail(f"port {token} is out of range (expected 1-65535)", at, len(token))
    return int(token)
