"""How many packets guestfence's own ruleset has dropped, so far.

A UDP probe that gets no answer is "open or filtered" unless something
says it dropped the datagram. In the host namespace that something is the
counters on the drop rules of table ``inet guestfence``: a probe is called
dropped when their sum rose while it alone was sent.

``sum_drop_counters`` is pure (ruleset JSON in, packets out);
``collect_drop_count`` reads the live table through guestfence.nftables.apply.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from guestfence.errors import HostError
from guestfence.nftables.apply import NftHandle, list_ruleset, open_nft

TABLE = {"family": "inet", "name": "guestfence"}


def collect_drop_count(nft: NftHandle) -> int | None:
    """Packets counted by drop rules of ``inet guestfence``; None without that table."""
    items = list_ruleset(nft, {"table": TABLE})
    return sum_drop_counters(items) if items else None


def sum_drop_counters(items: Iterable[dict[str, Any]]) -> int:
    """The packets of every counter on a rule whose verdict is drop, anonymous
    (``{"counter": {"packets": N}}``), named (``{"counter": "name"}``) or
    the elements of a set the rule looks up whose elements count (a set
    with a counter per element: the lookup counts into the element found)."""
    items = list(items)
    named = {c["name"]: c.get("packets", 0) for item in items if isinstance(c := item.get("counter"), dict)}
    counting = {f"@{body['name']}": sum(int(e["elem"]["counter"].get("packets", 0)) for e in body.get("elem", [])
                                       if isinstance(e, dict) and isinstance(e.get("elem"), dict) and isinstance(e["elem"].get("counter"), dict))
                for item in items if isinstance(body := item.get("set"), dict)}  # fmt: skip
    total = 0
    for item in items:
        expr = item.get("rule", {}).get("expr", [])
        if not any("drop" in stmt for stmt in expr):
            continue
        for stmt in expr:
            lookup = stmt.get("match")
            if isinstance(lookup, dict) and lookup.get("op") in ("==", "in") and isinstance(lookup.get("right"), str):
                total += counting.get(lookup["right"], 0)
            counter = stmt.get("counter")
            if isinstance(counter, dict):
                total += int(counter.get("packets", 0))
            elif isinstance(counter, str):
                total += int(named.get(counter, 0))
    return total


def open_counters() -> NftHandle | None:
    """A libnftables handle to read counters with, or None where there is none:
    without libnftables a UDP silence stays "no answer", never "dropped"."""
    try:
        return open_nft()
    except HostError:
        return None
