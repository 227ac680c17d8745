"""Where lockdown keeps its state: ``<state dir>/lockdown.json``.

``add``, ``remove`` and the link watcher all read-modify-write the file, so
each holds an exclusive ``flock`` on ``lockdown.lock`` for the whole change;
the file is replaced by rename, so a crash leaves the old or the new state,
never half of one.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from guestfence.errors import ConfigError, HostError
from guestfence.lockdown.state import LockdownState, state_from_json, state_to_json

STATE_FILE = "lockdown.json"
LOCK_FILE = "lockdown.lock"


def load_state(state_dir: Path) -> LockdownState:
    path = state_dir / STATE_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return LockdownState()
    except OSError as exc:
        raise HostError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not JSON ({exc.msg} at line {exc.lineno}); remove it to start over", source=str(path)) from None
    return state_from_json(data, source=str(path))


def save_state(state_dir: Path, state: LockdownState) -> None:
    path = state_dir / STATE_FILE
    partial = path.with_suffix(".tmp")
    try:
        partial.write_text(json.dumps(state_to_json(state), indent=2) + "\n", encoding="utf-8")
        os.replace(partial, path)
    except OSError as exc:
        raise HostError(f"cannot write {path}: {exc.strerror}") from exc


@contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """Hold the lockdown state exclusively for the block."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise HostError(f"cannot use the state directory {state_dir}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
