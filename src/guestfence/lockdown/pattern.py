"""Interface patterns as nftables reads them: a name, or a prefix and ``*``. Pure.

nftables has one wildcard, a trailing ``*`` (``iifname "vlan*"``). Shell
characters it would take literally (``?``, ``[``, ``]``) are refused rather
than silently matching nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

from guestfence.errors import PolicyError, RuleSyntaxError, raise_collected

IFNAME_MAX = 15
_GLOB_ONLY = "?[]\\"
_FORBIDDEN = "/:"


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class InterfacePattern:
    """An interface name, or a prefix followed by ``*`` (the one nftables wildcard)."""

    text: str

    def matches(self, name: str) -> bool:
        if self.text.endswith("*"):
            return name.startswith(self.text[:-1])
        return name == self.text

    def __str__(self) -> str:
        return self.text


def parse_pattern(text: str) -> InterfacePattern:
    """An interface name or ``prefix*``. Raises RuleSyntaxError with the column."""

    def fail(message: str, column: int, length: int = 1) -> RuleSyntaxError:
        return RuleSyntaxError(message, text=text, column=column, length=length, source="pattern")

    if not text or text in (".", ".."):
        raise fail(f"{text!r} is not an interface name (expected a name or a prefix followed by '*')", 1)
    if len(text) > IFNAME_MAX:
        raise fail(f"too long: interface names have at most {IFNAME_MAX} characters", IFNAME_MAX + 1,
                   len(text) - IFNAME_MAX)  # fmt: skip
    for column, char in enumerate(text, start=1):
        if char.isspace() or not char.isprintable() or char in _FORBIDDEN:
            raise fail(f"{char!r} cannot appear in an interface name", column)
        if char in _GLOB_ONLY:
            raise fail(f"{char!r} is not an nftables wildcard (expected a name, or a prefix followed by '*')", column)
        if char == "*" and column != len(text):
            raise fail("'*' is a wildcard only at the end (expected a prefix followed by '*')", column)
    return InterfacePattern(text=text)


def parse_patterns(texts: list[str] | tuple[str, ...]) -> tuple[InterfacePattern, ...]:
    """Each text parsed, duplicates dropped, order kept; every problem reported at once."""
    found: list[InterfacePattern] = []
    errors: list[PolicyError] = []
    for text in texts:
        try:
            found.append(parse_pattern(text))
        except RuleSyntaxError as err:
            errors.append(err)
    raise_collected(errors)
    return tuple(dict.fromkeys(found))


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class LockdownConfig:
    """A TOML file's ``[lockdown]`` section: the whole set of patterns, and
    whether one may match loopback or a default-route interface."""

    interfaces: tuple[InterfacePattern, ...]
    force: bool = False
