"""The nft mode's table as one feature of ``flush`` (guestfence.state.Feature).

Its rules live exactly as long as the stack they filter (``guestfence
rootless --mode nft`` removes them when the stack ends), so nothing is
recorded and ``apply FILE``/``restore`` have nothing to rebuild; ``flush``
removes the table, as it removes everything guestfence installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, final

from guestfence.nftables.apply import apply_nft, open_nft
from guestfence.rootless.nftmode import TABLE, compile_flush
from guestfence.resolve import Resolution
from guestfence.state import FeaturePlan

ROOTLESS_KEY = "rootless"


@final
class RootlessFeature:
    key = ROOTLESS_KEY

    def dns_names(self, config: Any, recorded: Mapping[str, Any] | None) -> frozenset[str]:
        return frozenset()  # nothing recorded, nothing planned

    def plan_apply(self, config: Any, recorded: Mapping[str, Any] | None, *, prune: bool = False,
                   resolved: Resolution) -> FeaturePlan:  # fmt: skip
        return self._nothing("rootless: nothing to apply (rules live with their stack)")

    def plan_restore(self, recorded: Mapping[str, Any] | None, *, resolved: Resolution) -> FeaturePlan:
        return self._nothing("rootless: nothing to restore (rules live with their stack)")

    def plan_flush(self, recorded: Mapping[str, Any] | None) -> FeaturePlan:
        commands = compile_flush()
        return FeaturePlan(key=self.key, shown=commands, record=None, work=commands,
                           summary=f"table inet {TABLE} removed")

    def apply(self, plan: FeaturePlan) -> None:
        if plan.work is not None:
            apply_nft(open_nft(), plan.work, step="flush")

    def _nothing(self, summary: str) -> FeaturePlan:
        return FeaturePlan(key=self.key, shown=None, record=None, work=None, summary=summary)


ROOTLESS = RootlessFeature()
