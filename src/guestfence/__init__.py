"""guestfence: keep guests (VMs and sandboxed processes) away from their host.

The public API is re-exported here; every other module is an implementation
detail that may change.
"""

from guestfence.errors import (
    ApplyError,
    ConfigError,
    GuestfenceError,
    HostError,
    PlanError,
    PolicyError,
    RuleSyntaxError,
)
from guestfence.policy import (
    Action,
    Context,
    Decision,
    Flow,
    Policy,
    Proto,
    Rule,
    decide,
    parse_destination,
    parse_rule,
)

__all__ = [
    "Action",
    "ApplyError",
    "ConfigError",
    "Context",
    "Decision",
    "Flow",
    "GuestfenceError",
    "HostError",
    "PlanError",
    "Policy",
    "PolicyError",
    "Proto",
    "Rule",
    "RuleSyntaxError",
    "decide",
    "parse_destination",
    "parse_rule",
]
