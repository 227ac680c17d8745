"""Policy files (TOML) -> values. Pure except ``load_config``, which reads the file.

Layout of a file::

    default = "deny"                 # these three make the unnamed policy
    allow = ["tcp://@gateway:8080"]
    deny = []

    [policy.web]                     # named policies, chosen with FILE:web
    default = "deny"
    allow = ["tcp://*:80,443"]

    guest_pattern = "vmtap*"         # (top level) interfaces of unregistered guests
    [[guest]]                        # VM guests, for `guestfence apply FILE`
    name = "vm1"
    iface = "vmtap-abcd"
    address = ["192.0.2.2/30"]       # a string or a list; so is gateway
    gateway = "192.0.2.1"
    policy = "web"                   # a [policy.NAME] of this file; without it,
    net_allow = ["tcp://@gateway:8080"]  # the unnamed policy, if any; the rules
    net_deny = []                    # and default here are added to it
    default = "deny"
    mac = "02:00:00:00:00:01"        # optional, as are masquerade, bridge, comment

    [lockdown]                       # interface lockdown, for `guestfence apply FILE`
    interfaces = ["eth0.1", "vlan*"] # added (with --prune: the whole set); no [lockdown]: left alone
    force = false                    # true: a pattern may match lo, a default-route or a guest's interface

Every problem in a file is reported at once, each with the file, line and
column of the offending text. tomllib gives no positions, so string
literals are located by scanning the text (``_Locator``); a value that
cannot be found is reported with the file and rule but no line.
"""

from __future__ import annotations

import re
import tomllib
from collections import defaultdict, deque
from collections.abc import Mapping
import os
from typing import TYPE_CHECKING, Any, final

from guestfence.errors import ConfigError, PolicyError, RuleSyntaxError, raise_collected
from guestfence.guests.names import DEFAULT_PATTERN
from guestfence.policy.grammar import parse_action, parse_rules
from guestfence.policy.model import Policy, Rule, UnixRule
from guestfence.value import Value, init_field

if TYPE_CHECKING:  # imported where a file has [[guest]] or [lockdown] tables (start-up of check, explain)
    from guestfence.lockdown.pattern import LockdownConfig
    from guestfence.guests.guest import Guest

POLICY_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_POLICY_KEYS = ("default", "allow", "deny")
_GUEST_KEYS = (
    "name", "iface", "address", "gateway", "policy", "net_allow", "net_deny",
    "default", "mac", "masquerade", "bridge", "comment",
)  # fmt: skip
_STRING = re.compile(r'"((?:[^"\\\n]|\\.)*)"|\'([^\'\n]*)\'')


@final
class ConfigFile(Value):
    """A parsed policy file. ``policies`` maps a name (None: the unnamed one) to its policy."""

    __slots__ = ("source", "policies", "guests", "guest_pattern", "lockdown")
    HASHED = ("source", "guests", "guest_pattern", "lockdown")
    source: str
    policies: Mapping[str | None, Policy]
    guests: tuple[Guest, ...]
    guest_pattern: str
    lockdown: LockdownConfig | None

    def __init__(self, *, source: str, policies: Mapping[str | None, Policy] | None = None, guests: tuple[Guest, ...] = (),
                 guest_pattern: str = DEFAULT_PATTERN, lockdown: LockdownConfig | None = None) -> None:
        init_field(self, "source", source)
        init_field(self, "policies", {} if policies is None else policies)
        init_field(self, "guests", guests)
        init_field(self, "guest_pattern", guest_pattern)
        init_field(self, "lockdown", lockdown)

    def policy(self, name: str | None) -> Policy:
        """The policy ``name`` selects; None means the file's only or unnamed one."""
        if name is None:
            if None in self.policies:
                return self.policies[None]
            if len(self.policies) == 1:
                return next(iter(self.policies.values()))
            raise ConfigError(
                f"no unnamed policy; choose one with {self.source}:NAME ({_available(self)})",
                source=self.source,
            )
        if name not in self.policies:
            raise ConfigError(f"no policy named {name!r} ({_available(self)})", source=self.source)
        return self.policies[name]


def _available(config: ConfigFile) -> str:
    names = sorted(n for n in config.policies if n is not None)
    return "available: " + ", ".join(names) if names else "the file defines no policy"


def split_policy_spec(spec: str) -> tuple[str, str | None]:
    """``FILE[:NAME]`` -> (file, name). A path that exists as given is a file."""
    path, colon, name = spec.rpartition(":")
    if colon and path and POLICY_NAME.match(name) and not os.path.exists(spec):
        return path, name
    return spec, None


def load_config(path: str | os.PathLike[str]) -> ConfigFile:
    """Read and parse a policy file. Raises PolicyError (unreadable files too)."""
    source = str(path)
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", source=source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start + 1} is {exc.object[exc.start:exc.start + 1]!r}); "
                          "a policy file must be UTF-8", source=source) from None
    return parse_config(text, source=source)


def load_policy(spec: str) -> Policy:
    """The policy a ``FILE[:NAME]`` spec names."""
    path, name = split_policy_spec(spec)
    return load_config(path).policy(name)


def parse_config(text: str, *, source: str) -> ConfigFile:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = _decode_error_line(str(exc))
        raise ConfigError(f"invalid TOML: {exc}", source=source, line=line) from None
    locator = _Locator(text, source)
    errors: list[PolicyError] = []
    policies: dict[str | None, Policy] = {}

    for key in data:
        if key not in (*_POLICY_KEYS, "policy", "guest", "guest_pattern", "lockdown"):
            errors.append(
                locator.key_error(
                    key, f"unknown key {key!r} (expected default, allow, deny, guest_pattern, [policy.NAME], [[guest]] or [lockdown])"
                )
            )
    if any(k in data for k in _POLICY_KEYS):
        policies[None] = _parse_policy_table(data, locator, errors, where="")

    named = data.get("policy", {})
    if not isinstance(named, dict):
        errors.append(locator.key_error("policy", "'policy' must be a table of named policies ([policy.NAME])"))
        named = {}
    for name, table in named.items():
        if not POLICY_NAME.match(name):
            errors.append(locator.key_error(name, f"invalid policy name {name!r} (expected letters, digits, '-' or '_')"))
        elif not isinstance(table, dict):
            errors.append(locator.key_error(name, f"[policy.{name}] must be a table"))
        else:
            for key in table:
                if key not in _POLICY_KEYS:
                    errors.append(locator.key_error(key, f"unknown key {key!r} in [policy.{name}] (expected default, allow or deny)"))
            policies[name] = _parse_policy_table(table, locator, errors, where=f" in [policy.{name}]")

    guests = _parse_guests(data["guest"], policies, locator, errors) if "guest" in data else ()
    pattern = DEFAULT_PATTERN
    if "guest_pattern" in data:
        from guestfence.guests.guest import parse_pattern

        try:
            pattern = parse_pattern(data["guest_pattern"], where=f"{source}: ")
        except PolicyError as e:
            errors.append(e)
    lockdown = _parse_lockdown(data["lockdown"], locator, errors) if "lockdown" in data else None
    raise_collected(errors)
    return ConfigFile(source=source, policies=policies, guests=guests, guest_pattern=pattern, lockdown=lockdown)


def _parse_lockdown(table: Any, locator: _Locator, errors: list[PolicyError]) -> LockdownConfig | None:
    """The ``[lockdown]`` table: ``interfaces`` (names or ``prefix*``) and ``force``."""
    from guestfence.lockdown.pattern import LockdownConfig, parse_pattern as parse_interface_pattern

    if not isinstance(table, dict):
        errors.append(locator.key_error("lockdown", "'lockdown' must be a table ([lockdown])"))
        return None
    for key in table:
        if key not in ("interfaces", "force"):
            errors.append(locator.key_error(key, f"unknown key {key!r} in [lockdown] (expected interfaces or force)"))
    texts, force = table.get("interfaces", []), table.get("force", False)
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        errors.append(locator.key_error("interfaces", "'interfaces' in [lockdown] must be a list of interface names or patterns"))
        texts = []
    if not isinstance(force, bool):
        errors.append(locator.key_error("force", "'force' in [lockdown] must be true or false"))
    patterns = []
    for text in texts:
        try:
            patterns.append(parse_interface_pattern(text))
        except RuleSyntaxError as e:
            errors.append(locator.place(e))
    return LockdownConfig(interfaces=tuple(dict.fromkeys(patterns)), force=force is True)


def _parse_guests(
    tables: Any, policies: Mapping[str | None, Policy], locator: _Locator, errors: list[PolicyError]
) -> tuple[Guest, ...]:
    """The ``[[guest]]`` tables. A guest's policy is its ``policy`` (a
    ``[policy.NAME]``; without one, the file's unnamed policy or none) plus
    its own ``net_allow``, ``net_deny`` and ``default``."""
    from guestfence.guests.guest import parse_guest

    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        errors.append(locator.key_error("guest", "'guest' must be an array of tables ([[guest]])"))
        return ()
    guests = []
    # Guests mostly share their policies: each distinct one is parsed (and
    # compiled, later: guests.compile.Profiles) once, and the guests share the
    # value (5,000 guests of one policy: 2.6 s -> 0.3 s).
    known: dict[tuple[Any, ...], Policy] = {}
    for number, table in enumerate(tables, start=1):
        where = f"[[guest]] #{number}"
        for key in table:
            if key not in _GUEST_KEYS:
                errors.append(locator.key_error(key, f"unknown key {key!r} in {where} (expected {', '.join(_GUEST_KEYS)})"))
        named = table.get("policy")
        if named is not None and (not isinstance(named, str) or named not in policies):
            errors.append(locator.key_error("policy", f"{where}: no [policy.{named}] in this file ({_available_names(policies)})"))
            continue
        base = policies.get(named, Policy()) if named is not None else policies.get(None, Policy())
        own = {"default": table.get("default", base.default.value), "allow": table.get("net_allow", []),
               "deny": table.get("net_deny", [])}  # fmt: skip
        key = _policy_key(named, own)
        policy = known.get(key) if key is not None else None
        if policy is None:
            failed = len(errors)
            extra = _parse_policy_table(own, locator, errors, where=f" in {where}")
            # unix:// rules stay in the guest's policy, so applying it can say they are ignored.
            policy = Policy.of(default=extra.default, allow=base.allow + base.allow_unix + extra.allow + extra.allow_unix,
                               deny=base.deny + base.deny_unix + extra.deny + extra.deny_unix)  # fmt: skip
            if key is not None and len(errors) == failed:
                known[key] = policy
        try:
            guests.append(
                parse_guest(
                    name=table.get("name", ""),
                    iface=table.get("iface", ""),
                    addresses=_strings(table.get("address", [])),
                    gateways=_strings(table.get("gateway", [])),
                    policy=policy,
                    mac=table.get("mac"),
                    masquerade=table.get("masquerade", False) is True,
                    bridge=table.get("bridge"),
                    comment=table.get("comment", ""),
                    where=f"{locator.source}: {where}: ",
                )
            )
        except PolicyError as e:
            errors.append(e)
    return tuple(guests)


def _policy_key(named: Any, own: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """What a guest's policy is made of, as a key; None when it is not plain
    text (then it is parsed, and any error reported, every time)."""
    texts = (own["allow"], own["deny"])
    if not isinstance(own["default"], str) or not all(isinstance(t, list) and all(isinstance(r, str) for r in t) for t in texts):
        return None
    return (named, own["default"], tuple(own["allow"]), tuple(own["deny"]))


def _strings(value: Any) -> list[Any]:
    """A TOML string or list of strings as a list (wrong types fail in parse_guest)."""
    return [value] if isinstance(value, str) else list(value) if isinstance(value, list) else [value]


def _available_names(policies: Mapping[str | None, Policy]) -> str:
    names = sorted(n for n in policies if n is not None)
    return "available: " + ", ".join(names) if names else "the file defines no named policy"


def _parse_policy_table(table: dict[str, Any], locator: _Locator, errors: list[PolicyError], *, where: str) -> Policy:
    default_text = table.get("default", "deny")
    default = None
    if not isinstance(default_text, str):
        errors.append(locator.key_error("default", f"'default'{where} must be \"allow\" or \"deny\""))
    else:
        try:
            default = parse_action(default_text)
        except RuleSyntaxError as e:
            errors.append(locator.place(e))
    rules: dict[str, list[Rule | UnixRule]] = {}
    for kind in ("allow", "deny"):
        rules[kind] = []
        texts = table.get(kind, [])
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            errors.append(locator.key_error(kind, f"'{kind}'{where} must be a list of rule strings"))
            continue
        for text in texts:
            try:
                rules[kind].extend(parse_rules(text))
            except RuleSyntaxError as e:
                errors.append(locator.place(e))
    if default is None:
        return Policy()
    return Policy.of(default=default, allow=rules["allow"], deny=rules["deny"])


def _decode_error_line(message: str) -> int | None:
    found = re.search(r"line (\d+)", message)
    return int(found.group(1)) if found else None


class _Locator:
    """Finds where string literals and keys stand in the file text.

    Literals are consumed in document order, so the k-th occurrence of the
    same text is matched to the k-th time a value with that text is placed.
    """

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.lines = text.splitlines()
        self.literals: dict[str, deque[tuple[int, int]]] = defaultdict(deque)
        for number, line in enumerate(self.lines, start=1):
            for found in _STRING.finditer(line):
                value = found.group(1) if found.group(1) is not None else found.group(2)
                self.literals[value].append((number, found.start() + 2))

    def place(self, error: RuleSyntaxError) -> RuleSyntaxError:
        spots = self.literals.get(error.text)
        if not spots:
            return error.located(source=self.source, line=None, offset=1)
        line, column = spots.popleft()
        return error.located(source=self.source, line=line, offset=column)

    def key_error(self, key: str, message: str) -> ConfigError:
        pattern = re.compile(rf"^\s*(\[\s*)?(\S*\.)?[\"']?{re.escape(key)}[\"']?\s*(=|\])")
        line = next((n for n, text in enumerate(self.lines, start=1) if pattern.match(text)), None)
        return ConfigError(message, source=self.source, line=line)


def format_config(config: ConfigFile) -> str:
    """The file's policies in canonical form, as TOML that parses back to them."""
    blocks = []
    for name, policy in sorted(config.policies.items(), key=lambda item: (item[0] is not None, item[0] or "")):
        header = "" if name is None else f"[policy.{name}]\n"
        blocks.append(header + format_policy(policy))
    return "\n".join(blocks)


def format_policy(policy: Policy) -> str:
    lines = [f'default = "{policy.default.value}"']
    for kind, rules in (("allow", policy.allow + policy.allow_unix), ("deny", policy.deny + policy.deny_unix)):
        if not rules:
            lines.append(f"{kind} = []")
            continue
        lines.append(f"{kind} = [")
        lines.extend(f'    "{rule}",' for rule in rules)
        lines.append("]")
    return "\n".join(lines) + "\n"
