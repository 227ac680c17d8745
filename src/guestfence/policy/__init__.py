"""The policy core: values, grammar and the decision. Pure, imports no backend."""

from guestfence.policy.decide import decide
from guestfence.policy.grammar import parse_destination, parse_rule
from guestfence.policy.model import parse_policy
from guestfence.policy.model import (
    Action,
    Context,
    Decision,
    Flow,
    Policy,
    Proto,
    Rule,
    Symbol,
)

__all__ = [
    "Action",
    "Context",
    "Decision",
    "Flow",
    "Policy",
    "Proto",
    "Rule",
    "Symbol",
    "decide",
    "parse_destination",
    "parse_policy",
    "parse_rule",
]
