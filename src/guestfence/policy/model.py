"""The policy: a default verdict plus allow and deny rules, and
``parse_policy``, which makes one from rule texts. Pure: no I/O.

Layering, one way only: ``rules.py`` holds the values a policy is made of
(rules, flows, decisions), ``grammar.py`` turns text into them, and this
module puts them together, so ``Policy.parse`` needs no import back into
the grammar. The rule values are re-exported here: ``policy.model`` stays
the one place to import every policy value from.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import final

from guestfence.policy.grammar import parse_rule_texts
from guestfence.policy.rules import (
    ANY_PORT,
    ANY_UNIX,
    Action,
    Address,
    AddressType,
    AnyHost,
    Context,
    Decision,
    Flow,
    HOST_RECEIVED,
    Host,
    LIMITED_BROADCAST,
    LOOPBACK,
    NameHost,
    NetHost,
    Network,
    PortRange,
    Proto,
    Rule,
    Symbol,
    SymbolHost,
    UnixFlow,
    UnixRule,
    UnixScope,
    as_delivered,
    canonical_rules,
    is_normal_path,
    local_types,
    merge_ports,
    received_by_form,
    unmap,
    unmap_network,
)
from guestfence.value import Value, init_field

__all__ = [
    "ANY_PORT",
    "ANY_UNIX",
    "Action",
    "Address",
    "AddressType",
    "AnyHost",
    "Context",
    "Decision",
    "Flow",
    "HOST_RECEIVED",
    "Host",
    "LIMITED_BROADCAST",
    "LOOPBACK",
    "NameHost",
    "NetHost",
    "Network",
    "Policy",
    "PortRange",
    "Proto",
    "Rule",
    "Symbol",
    "SymbolHost",
    "UnixFlow",
    "UnixRule",
    "UnixScope",
    "as_delivered",
    "canonical_rules",
    "is_normal_path",
    "local_types",
    "merge_ports",
    "parse_policy",
    "received_by_form",
    "unmap",
    "unmap_network",
]


@final
class Policy(Value):
    """A default verdict plus allow and deny rules.

    Deny beats allow, allow beats the default, so rule order never matters:
    the rules are kept deduplicated and sorted by their text, and two
    policies with the same rules are equal.
    """

    __slots__ = ("default", "allow", "deny", "allow_unix", "deny_unix")
    default: Action
    allow: tuple[Rule, ...]
    deny: tuple[Rule, ...]
    allow_unix: tuple[UnixRule, ...]
    """``unix://`` rules: kept apart, since only the process sandbox can
    enforce them (a VM's or container's own unix sockets are its own)."""
    deny_unix: tuple[UnixRule, ...]

    def __init__(self, *, default: Action = Action.DENY, allow: tuple[Rule, ...] = (), deny: tuple[Rule, ...] = (),
                 allow_unix: tuple[UnixRule, ...] = (), deny_unix: tuple[UnixRule, ...] = ()) -> None:
        init_field(self, "default", default)
        init_field(self, "allow", allow)
        init_field(self, "deny", deny)
        init_field(self, "allow_unix", allow_unix)
        init_field(self, "deny_unix", deny_unix)
        for rules in (self.allow, self.deny, self.allow_unix, self.deny_unix):
            if list(rules) != canonical_rules(rules):
                raise ValueError("rules must be deduplicated and sorted (use canonical_rules)")

    @classmethod
    def of(cls, *, default: Action, allow: Iterable[Rule | UnixRule] = (),
           deny: Iterable[Rule | UnixRule] = ()) -> Policy:
        """A policy from rules of either kind, in any order, with duplicates."""
        allow, deny = list(allow), list(deny)
        return cls(
            default=default,
            allow=tuple(canonical_rules(r for r in allow if isinstance(r, Rule))),
            deny=tuple(canonical_rules(r for r in deny if isinstance(r, Rule))),
            allow_unix=tuple(canonical_rules(r for r in allow if isinstance(r, UnixRule))),
            deny_unix=tuple(canonical_rules(r for r in deny if isinstance(r, UnixRule))),
        )

    @classmethod
    def parse(
        cls,
        *,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        default: str = "deny",
    ) -> Policy:
        """A policy from rule texts, as on the command line. Raises PolicyError;
        TypeError when ``allow`` or ``deny`` is one string instead of a list."""
        for label, rules in (("allow", allow), ("deny", deny)):
            if isinstance(rules, (str, bytes)):
                raise TypeError(f"Policy.parse({label}=...) takes a list of rules, not one string: {label}=[{rules!r}]")

        return parse_policy(allow=allow, deny=deny, default=default)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self.deny + self.allow

    def symbols(self) -> frozenset[Symbol]:
        return frozenset(r.host.symbol for r in self.rules if isinstance(r.host, SymbolHost))

    def names(self) -> frozenset[str]:
        return frozenset(r.host.name for r in self.rules if isinstance(r.host, NameHost))


def parse_policy(*, allow: Iterable[str] = (), deny: Iterable[str] = (), default: str = "deny") -> Policy:
    """A policy from rule texts. Reports every bad rule at once (PolicyError)."""
    action, allowed, denied = parse_rule_texts(allow=allow, deny=deny, default=default)
    return Policy.of(default=action, allow=allowed, deny=denied)
