"""Checks made before a stack starts, for what the stack itself would only
log and carry on without.

passt binds its UNIX socket after dropping privileges to the user it runs
as: when that user cannot create the file, passt logs "bound" and runs with
no socket, and the VM waits forever. ``check_socket`` asks the system the
same question passt will, as that user, before anything runs.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Sequence

from guestfence.errors import PolicyError

_SOCKET_OPTIONS = ("-s", "--socket")


def socket_path(extra: Sequence[str]) -> str | None:
    """The ``--socket PATH`` (``-s PATH``, ``--socket=PATH``) among a stack's own arguments."""
    for index, word in enumerate(extra):
        if word.startswith("--socket="):
            return word.split("=", 1)[1]
        if word in _SOCKET_OPTIONS and index + 1 < len(extra):
            return extra[index + 1]
    return None


def check_socket(extra: Sequence[str], user: pwd.struct_passwd | None) -> None:
    """Refuse (PolicyError) a ``--socket`` in a directory the stack's user
    (``user``, else whoever runs guestfence) cannot create a file in."""
    path = socket_path(extra)
    if path is None:
        return
    directory = os.path.dirname(os.path.abspath(path))
    test = ["test", "-d", directory, "-a", "-w", directory, "-a", "-x", directory]
    if user is not None and os.geteuid() != user.pw_uid:
        test = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--", *test]
    who = user.pw_name if user is not None else "this user"
    try:
        allowed = subprocess.run(test, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PolicyError(f"--socket {path}: cannot check whether {who} can create it ({exc})") from None
    if not allowed:
        raise PolicyError(
            f"--socket {path}: {who} cannot create a file in {directory}; the stack binds its socket as {who} "
            f"and would run without one. Use a directory {who} owns (e.g. `install -d -o {who} /run/{who}` "
            f"and --socket /run/{who}/passt.socket)"
        )
