"""``lockdown watch``: what happens for each link notification.

For every event, under the state lock and with the recorded patterns read
anew (so ``lockdown add`` takes effect without a restart):

- a deleted link's record is dropped;
- a new (or renamed) link the patterns cover -- by name, or a
  macvlan/macvtap stacked on a matching link -- gets its sysctls;
- a damaged record is read as far as it can be (``salvage_state``), each
  problem is a warning, and the record is not rewritten; an interrupted
  change (``pending``) is kept as it is, for ``restore`` to settle;
- the ``stacked`` sets are made equal to the stacked devices that exist
  now, when that changed and the lockdown tables are in force (after
  ``guestfence flush`` they are not, and the watcher does not bring them
  back: ``restore`` does).

Each event reads the whole link list: a stacked device is only known to be
covered by looking at its lower device.
"""

from __future__ import annotations

from collections.abc import Callable

from guestfence.errors import ApplyError
from guestfence.lockdown.apply import apply_link, apply_stacked
from guestfence.lockdown.feature import LOCKDOWN_KEY
from guestfence.lockdown.links import collect_links
from guestfence.lockdown.plan import STACKED_SET, TABLE, Link, plan_link, stacked_links
from guestfence.lockdown.state import LockdownState, forget_interface, salvage_state, with_pending
from guestfence.nftables.apply import NftHandle, list_ruleset
from guestfence.state import StateStore

Say = Callable[[str], None]


class LinkWatcher:
    """Applies each link event; ``say`` gets one line per change, ``warn`` each problem."""

    def __init__(self, directory: str, nft: NftHandle, say: Say, warn: Say) -> None:
        self.directory = directory
        self.nft = nft
        self.say = say
        self.warn = warn
        self._synced: tuple[int, ...] | None = None

    def scan(self) -> None:
        """Harden every covered link that exists now (the start, before events)."""
        self._run([("new", link) for link in collect_links()])

    def on_event(self, kind: str, link: Link) -> None:
        self._run([(kind, link)])

    def _run(self, events: list[tuple[str, Link]]) -> None:
        with StateStore(self.directory) as store:
            recorded = store.section(LOCKDOWN_KEY)
            state, problems = (LockdownState(), ()) if recorded is None else salvage_state(recorded)
            for problem in problems:
                self.warn(f"{problem}; the damaged record is not rewritten")
            links = collect_links()
            for kind, link in events:
                changed = self._handle(state, links, kind, link)
                if changed != state:
                    if not problems:
                        store.write_section(LOCKDOWN_KEY, with_pending(recorded, changed))
                    if kind == "new":
                        self.say(f"{link.name}: sysctls set")
                    state = changed
            self._sync_stacked(stacked_links(state.patterns, links) if state.patterns else ())

    def _handle(self, state: LockdownState, links: tuple[Link, ...], kind: str, link: Link) -> LockdownState:
        if kind == "del":
            return forget_interface(state, link.name, link.ifindex)
        # The dump's entry carries what the event does not (IPv6 configuration).
        current = next((found for found in links if found.ifindex == link.ifindex), None)
        steps = None if current is None else plan_link(state, current, links)
        if steps is None:
            return state
        for why in steps.kept:
            self.say(f"{link.name}: {why}")
        try:
            return apply_link(steps, state)
        except ApplyError as err:
            self.warn(f"{link.name}: {err}")
            return state

    def _sync_stacked(self, stacked: tuple[Link, ...]) -> None:
        indexes = tuple(sorted(link.ifindex for link in stacked))
        if indexes == self._synced:
            return
        if not list_ruleset(self.nft, {"set": {"family": "inet", "table": TABLE, "name": STACKED_SET}}):
            self._synced = None  # not in force: nothing to keep equal
            return
        try:
            apply_stacked(self.nft, stacked)
        except ApplyError as err:
            self.warn(str(err))
            return
        self._synced = indexes
        self.say("stacked devices locked down: " + (", ".join(link.name for link in stacked) or "none"))
