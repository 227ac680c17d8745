"""guestfence: keep guests (VMs and sandboxed processes) away from their host.

The public API is re-exported here; every other module is an implementation
detail that may change:

- ``Policy.parse(allow=[...], deny=[...], default="deny")`` and
  ``load_policy("policy.toml[:NAME]")`` make a policy; ``decide`` judges one
  ``Flow`` against it.
- ``Sandbox(policy).run(argv)`` runs a command under the seccomp supervisor;
  each refused attempt is a ``Denial`` (needs libseccomp's bindings).
- Errors are ``GuestfenceError`` subclasses.

Everything but the errors is imported on first use (PEP 562), so that
``guestfence --help`` does not pay for the policy core, and the sandbox's
libseccomp bindings are needed only by those who use ``Sandbox``.
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
    "Denial",
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
    "load_policy",
    "parse_destination",
    "parse_rule",
]

_LAZY = {
    **dict.fromkeys(("Sandbox", "Denial"), "guestfence.sandbox"),
    "load_policy": "guestfence.config",
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


def __dir__() -> list[str]:
    # help(guestfence) and completion list the lazily imported names too.
    return sorted({*globals(), *_LAZY})
