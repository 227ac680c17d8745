"""guestfence: keep guests (VMs and sandboxed processes) away from their host.

The public API is re-exported here; every other module is an implementation
detail that may change:

- ``Policy.parse(allow=[...], deny=[...], default="deny")`` and
  ``load_policy("policy.toml[:NAME]")`` make a policy; ``decide`` judges one
  ``Flow`` against it.
- ``Sandbox(policy).run(argv)`` runs a command under the seccomp supervisor;
  each refused attempt is a ``Denial`` (needs libseccomp's bindings, imported
  on first use).
- Errors are ``GuestfenceError`` subclasses.
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


_SANDBOX = ("Denial", "Sandbox")


def load_policy(spec: str) -> Policy:
    """The policy of a TOML file, ``"FILE"`` or ``"FILE:NAME"`` for its
    ``[policy.NAME]``. Raises PolicyError (ConfigError) naming the file and line."""
    from guestfence.config import load_policy as load

    return load(spec)


def __getattr__(name: str) -> object:
    # The sandbox needs libseccomp's bindings; import it only when asked, so
    # the policy core and the nft backend work without them.
    if name in _SANDBOX:
        import guestfence.sandbox

        return getattr(guestfence.sandbox, name)
    raise AttributeError(f"module 'guestfence' has no attribute {name!r}")


def __dir__() -> list[str]:
    # help(guestfence) and completion list the lazily imported names too.
    return sorted({*globals(), *_SANDBOX})
