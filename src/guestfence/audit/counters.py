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
    named through a map (``{"counter": {"map": {"data": "@m"}}}``: every
    counter the map names)."""
    items = list(items)
    named = {c["name"]: c.get("packets", 0) for item in items if isinstance(c := item.get("counter"), dict)}
    mapped = {m["name"]: [e[1] for e in m.get("elem", []) if isinstance(e, list) and len(e) == 2]
              for item in items if isinstance(m := item.get("map"), dict) and m.get("map") == "counter"}  # fmt: skip
    total = 0
    for item in items:
        expr = item.get("rule", {}).get("expr", [])
        if not any("drop" in stmt for stmt in expr):
            continue
        for stmt in expr:
            counter = stmt.get("counter")
            if isinstance(counter, dict) and isinstance(counter.get("map"), dict):
                data = str(counter["map"].get("data", "")).removeprefix("@")
                total += sum(int(named.get(name, 0)) for name in mapped.get(data, []))
            elif isinstance(counter, dict):
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
