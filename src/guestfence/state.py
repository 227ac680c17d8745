"""The recorded state: what guestfence applied, so ``restore`` can rebuild it
after a reboot and ``status`` can say what drifted.

One JSON document, ``state.json``, per network namespace::

    {"version": 1, "guests": {...}, "lockdown": {...}}

Each feature owns one top-level key and reads and writes only that key
(``Feature`` below); adding a feature never changes another's record.

Where it lives: ``--state-dir``, else ``$GUESTFENCE_STATE_DIR``, else
``/var/lib/guestfence`` in the host's own network namespace and
``/var/lib/guestfence/netns/NAME`` inside ``ip netns exec NAME`` (rulesets
are per namespace, so their records must be too). The directory is locked
(``flock``) while a command reads, changes and records, so two commands
run at once cannot lose each other's change; writes are atomic (a
temporary file renamed over the old one). A file that cannot be read as a
state document is never written over: it is read (once while the lock is
held: only the holder changes it) before any write, which stops with a
HostError. Read-only commands open the store with
``read_only=True``: they create neither the directory nor the lock file.

A change is recorded twice: its ``FeaturePlan.intent`` (the old section
plus the new one as pending) before the kernel transaction, its
``record`` after; a crash in between leaves the pending change for
``status`` to report and ``restore`` to settle.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, final

from guestfence.errors import HostError
from guestfence.value import Value, init_field

if TYPE_CHECKING:  # resolve imports the policy core, which state.py does not need at run time
    from guestfence.resolve import Resolution

ENV_STATE_DIR = "GUESTFENCE_STATE_DIR"
DEFAULT_STATE_DIR = "/var/lib/guestfence"
STATE_FILE = "state.json"
LOCK_FILE = ".lock"
VERSION = 1
_NETNS_RUN_DIR = "/run/netns"
# Paths are strings (os.path): pathlib, with urllib.parse, is a tenth of the
# imports of `guest add`, the command a VM manager runs for every VM.


def state_dir(explicit: str | None = None) -> str:
    """The state directory for this command (see the module header)."""
    if explicit:
        return explicit
    from_env = os.environ.get(ENV_STATE_DIR)
    if from_env:
        return from_env
    netns = current_netns_name()
    return DEFAULT_STATE_DIR if netns is None else os.path.join(DEFAULT_STATE_DIR, "netns", netns)


def current_netns_name() -> str | None:
    """The name ``ip netns`` knows this network namespace by; else
    ``inode-N`` when it is not PID 1's; else None (the host's own)."""
    try:
        mine = os.stat("/proc/self/ns/net")
    except OSError:
        return None
    try:
        entries = sorted(os.listdir(_NETNS_RUN_DIR))
    except OSError:
        entries = []
    for entry in entries:
        try:
            found = os.stat(os.path.join(_NETNS_RUN_DIR, entry))
        except OSError:
            continue
        if (found.st_dev, found.st_ino) == (mine.st_dev, mine.st_ino):
            return entry
    try:
        init = os.stat("/proc/1/ns/net")
    except OSError:
        return None  # PID 1's namespace cannot be inspected (hardened /proc): assume ours
    return None if (mine.st_dev, mine.st_ino) == (init.st_dev, init.st_ino) else f"inode-{mine.st_ino}"


@final
class StateStore:
    """The locked state directory: ``with StateStore(dir) as store: ...``."""

    def __init__(self, directory: str | os.PathLike[str], *, read_only: bool = False) -> None:
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, STATE_FILE)
        self.read_only = read_only
        self._lock: int | None = None
        self._document: dict[str, Any] | None = None  # as last read or written, while locked

    def __enter__(self) -> StateStore:
        try:
            if self.read_only:
                # A shared lock on what exists; nothing recorded yet is nothing to wait for.
                self._lock = os.open(os.path.join(self.directory, LOCK_FILE), os.O_RDONLY)
                fcntl.flock(self._lock, fcntl.LOCK_SH)
                return self
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            self._lock = os.open(os.path.join(self.directory, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        except FileNotFoundError:
            if self.read_only:
                return self
            raise HostError(f"cannot use the state directory {self.directory}: no such directory") from None
        except PermissionError as exc:
            raise HostError(f"cannot use the state directory {self.directory}: {exc.strerror} (run as root)") from exc
        except OSError as exc:
            raise HostError(f"cannot use the state directory {self.directory}: {exc.strerror or exc}") from exc
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._document = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def read(self) -> dict[str, Any]:
        """The whole document; ``{}`` when nothing was recorded yet. Read from
        the file once per ``with``: under the lock only this store changes it."""
        if self._document is None or self._lock is None:
            self._document = self._read_file()
        return self._document

    def _read_file(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as file:
                text = file.read()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise HostError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise HostError(f"{self.path} is not valid JSON (not UTF-8 at byte {exc.start}); fix or remove it") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise HostError(f"{self.path} is not valid JSON ({exc}); fix or remove it") from None
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise HostError(f"{self.path}: not a guestfence state file of version {VERSION}")
        return data

    def section(self, key: str) -> Any:
        return self.read().get(key)

    def write_section(self, key: str, value: Any) -> None:
        """Record ``value`` under ``key`` (None: remove the key), leaving the other features' keys as they are."""
        if self.read_only:
            raise HostError(f"{self.path}: opened read-only")
        data = dict(self.read())
        data["version"] = VERSION
        if value is None:
            data.pop(key, None)  # nothing recorded, as before the feature's first change
        else:
            data[key] = value
        temporary = os.path.join(self.directory, f".{STATE_FILE}.tmp")
        try:
            with open(temporary, "w", encoding="utf-8") as out:
                # One line, by json's C encoder: with indent (or json.dump)
                # it takes the pure-Python path, 20 ms of `guest add` at 1000 guests.
                # The document is a tree (read from JSON, or built of fresh
                # dicts and lists): no cycle to look for, 15% of the encoding.
                out.write(json.dumps(data, sort_keys=True, check_circular=False) + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except OSError as exc:
            self._document = None  # what the file holds now is read again
            raise HostError(f"cannot record the state in {self.path}: {exc.strerror or exc}") from exc
        self._document = data


@final
class FeaturePlan(Value):
    """What one feature will do: ``shown`` is printed by ``--dry-run --json``,
    ``record`` is the feature's new section of the state file (None: leave
    it), ``intent`` the section to record before applying (None: none; see
    the module header), ``work`` is what ``Feature.apply`` needs,
    ``summary`` one line for the user, ``changes`` what it adds, changes
    and removes in words, ``problems`` what it could not do (the command
    then exits non-zero naming them, after applying the rest)."""

    __slots__ = ("key", "shown", "record", "work", "summary", "intent", "changes", "problems")
    key: str
    shown: Any
    record: Any
    work: Any
    summary: str
    intent: Any
    changes: tuple[str, ...]
    problems: tuple[str, ...]

    def __init__(self, *, key: str, shown: Any, record: Any, work: Any, summary: str, intent: Any = None,
                 changes: tuple[str, ...] = (), problems: tuple[str, ...] = ()) -> None:
        init_field(self, "key", key)
        init_field(self, "shown", shown)
        init_field(self, "record", record)
        init_field(self, "work", work)
        init_field(self, "summary", summary)
        init_field(self, "intent", intent)
        init_field(self, "changes", changes)
        init_field(self, "problems", problems)


class Feature(Protocol):
    """One thing ``apply FILE``, ``restore`` and ``flush`` take care of.

    The guest firewall is one (guestfence.guests.firewall.GUESTS); interface
    lockdown plugs in the same way: implement these five and add the object
    to ``features()`` in guestfence.operations. ``dns_names`` says which DNS
    names planning needs (``config`` None: for ``plan_restore``); the caller
    looks them up and hands the ``Resolution`` in, so no ``plan_*`` resolves
    anything. ``plan_*`` may read the kernel but change nothing; ``apply``
    changes it. ``prune``: whether ``apply FILE`` removes what the file does
    not name.
    """

    key: str

    def dns_names(self, config: Any, recorded: Mapping[str, Any] | None) -> frozenset[str]: ...
    def plan_apply(self, config: Any, recorded: Mapping[str, Any] | None, *, prune: bool,
                   resolved: Resolution) -> FeaturePlan: ...  # fmt: skip
    def plan_restore(self, recorded: Mapping[str, Any] | None, *, resolved: Resolution) -> FeaturePlan: ...
    def plan_flush(self, recorded: Mapping[str, Any] | None) -> FeaturePlan: ...
    def apply(self, plan: FeaturePlan) -> None: ...
