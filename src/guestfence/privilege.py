"""Whether this process may change its network namespace: CAP_NET_ADMIN in
its effective set (root, or root of a user namespace owning the network
namespace). A command that needs it checks first and exits 3 ("run as
root") instead of failing half-way with the kernel's raw EPERM.
"""

from __future__ import annotations

from guestfence.errors import HostError

CAP_NET_ADMIN = 12


def has_net_admin(status: str | None = None) -> bool:
    """CAP_NET_ADMIN is in the effective set (``status``: the text of
    /proc/self/status, read when None)."""
    if status is None:
        try:
            with open("/proc/self/status", encoding="ascii") as file:
                status = file.read()
        except OSError:
            return False
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    return False


def require_net_admin(what: str) -> None:
    """Raise HostError (exit 3) unless this process has CAP_NET_ADMIN."""
    if not has_net_admin():
        raise HostError(f"{what} needs CAP_NET_ADMIN: run as root")
