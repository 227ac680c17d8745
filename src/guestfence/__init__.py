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


# Imported on first use (PEP 562), so that `import guestfence.cli` for
# `guestfence --help` does not pay for the policy core, and the sandbox's
# libseccomp bindings are needed only by those who use Sandbox.
_LAZY = {
    "Sandbox": "guestfence.sandbox",
    **dict.fromkeys(("Action", "Context", "Decision", "Flow", "Policy", "Proto", "Rule", "decide",
                     "parse_destination", "parse_rule"), "guestfence.policy"),
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'guestfence' has no attribute {name!r}")
