"""has_net_admin reads the effective capability set."""

from __future__ import annotations

import pytest

from guestfence.errors import HostError
from guestfence.privilege import has_net_admin, require_net_admin

ROOT = "Name:\tpython3\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n"
NOBODY = "Name:\tpython3\nCapEff:\t0000000000000000\n"
ONLY_NET_ADMIN = "CapEff:\t0000000000001000\n"
ONLY_NET_RAW = "CapEff:\t0000000000002000\n"


@pytest.mark.parametrize(("status", "expected"), [(ROOT, True), (NOBODY, False), (ONLY_NET_ADMIN, True),
                                                  (ONLY_NET_RAW, False), ("", False)])  # fmt: skip
def test_cap_net_admin_is_bit_12_of_capeff(status: str, expected: bool) -> None:
    assert has_net_admin(status) is expected


def test_require_says_run_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("guestfence.privilege.has_net_admin", lambda: False)
    with pytest.raises(HostError, match="lockdown list needs CAP_NET_ADMIN: run as root"):
        require_net_admin("lockdown list")
