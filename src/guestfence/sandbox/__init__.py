"""The process sandbox: seccomp user notification enforcing a policy on a command.

Public: ``Sandbox`` (spawn.py) and ``Denial`` (supervisor.py). Phases, one
module each: filter (what traps), materialize (guest memory -> values),
verdict (decide), onbehalf (act on the pinned socket), supervisor (loop);
local (unix, netlink and other non-INET sockets) with identity (a handler
thread taking on the guest's ids for them).
"""

from guestfence.sandbox.spawn import Sandbox
from guestfence.sandbox.supervisor import Denial

__all__ = ["Denial", "Sandbox"]
