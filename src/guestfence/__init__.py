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
    "Sandbox",
    "decide",
    "parse_destination",
    "parse_rule",
]


def __getattr__(name: str) -> object:
    # The sandbox needs libseccomp's bindings; import it only when asked, so
    # the policy core and the nft backend work without them.
    if name == "Sandbox":
        from guestfence.sandbox import Sandbox

        return Sandbox
    raise AttributeError(f"module 'guestfence' has no attribute {name!r}")
