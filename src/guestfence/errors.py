"""The whole guestfence exception tree.

Public functions raise only GuestfenceError subclasses; foreign errors are
wrapped with ``raise ... from exc``. The CLI maps each class to an exit code
(see ``EXIT_CODES`` in guestfence.cli) and prints ``str(err)``.

Messages start in lower case, have no final period, quote the offending text
and say what was expected.
"""

from __future__ import annotations

from collections.abc import Iterable


class GuestfenceError(Exception):
    """Root of every error guestfence raises on purpose."""


class PolicyError(GuestfenceError):
    """The policy text or file is wrong; nothing was applied."""


class RuleSyntaxError(PolicyError):
    """One rule (or destination) does not follow the grammar.

    ``column`` is 1-based and ``length`` the width of the offending token,
    both counted in ``text`` (the rule). ``source``/``line``/``offset``
    locate the rule itself: a file name with the line and the column where
    the rule starts, or a command-line option with ``line`` None.
    """

    def __init__(
        self,
        message: str,
        *,
        text: str,
        column: int,
        length: int = 1,
        source: str | None = None,
        line: int | None = None,
        offset: int = 1,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.text = text
        self.column = column
        self.length = max(1, length)
        self.source = source
        self.line = line
        self.offset = offset

    def located(self, *, source: str, line: int | None, offset: int) -> RuleSyntaxError:
        """The same error, placed at ``source:line`` with the rule at ``offset``."""
        return RuleSyntaxError(
            self.message,
            text=self.text,
            column=self.column,
            length=self.length,
            source=source,
            line=line,
            offset=offset,
        )

    def __str__(self) -> str:
        if self.source is None:
            where = f"{self.text!r}:{self.column}"
        elif self.line is None:
            where = f"{self.source} {self.text!r}:{self.column}"
        else:
            where = f"{self.source}:{self.line}:{self.offset + self.column - 1}"
        shown = "".join(c if c.isprintable() else "?" for c in self.text)
        pad = " " * (self.column - 1)
        return f"{where}: {self.message}\n    {shown}\n    {pad}{'^' * self.length}"


class ConfigError(PolicyError):
    """A policy file is structurally wrong (bad TOML, unknown key, wrong type)."""

    def __init__(self, message: str, *, source: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.source = source
        self.line = line

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return f"{where}: {self.message}"


class PolicyErrorGroup(PolicyError):
    """Several independent problems found in one pass, reported together."""

    def __init__(self, errors: Iterable[PolicyError]) -> None:
        self.errors = tuple(errors)
        super().__init__(f"{len(self.errors)} problems")

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class PlanError(GuestfenceError):
    """A valid policy that this backend cannot express for this target."""


class HostError(GuestfenceError):
    """The host lacks something needed: a library, a kernel feature, a privilege."""


class ApplyError(GuestfenceError):
    """Applying a plan failed; the previous state was kept.

    ``detail`` is the backend's own report (libnftables stderr, errno text)
    verbatim.
    """

    def __init__(self, backend: str, step: str, detail: str) -> None:
        super().__init__(f"{backend}: {step} failed: {detail}")
        self.backend = backend
        self.step = step
        self.detail = detail


def raise_collected(errors: list[PolicyError]) -> None:
    """Raise the one error, or a group of them; do nothing for none."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise PolicyErrorGroup(errors)
