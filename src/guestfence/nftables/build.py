"""Small builders of libnftables JSON: objects, commands, matches, statements.

Pure: each function returns plain dicts in the libnftables JSON schema
(libnftables-json(5)). User-supplied values only ever become JSON *values*
here; no function formats ruleset text. Commands about objects are built
by a ``Table`` (each backend makes one of its own table name: guests
``inet guestfence``, lockdown ``guestfence_lockdown``, rootless
``guestfence_rootless``); expressions and statements belong to no table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, final

from guestfence.policy.model import ANY_PORT, Network, PortRange
from guestfence.value import Value, init_field

Command = dict[str, Any]
Expr = dict[str, Any]

ACCEPT: Expr = {"accept": None}
DROP: Expr = {"drop": None}


def map_entry(key: Any, target_chain: str, comment: str | None = None) -> list[Any]:
    """A verdict-map element: ``key : goto target_chain``."""
    shown = {"elem": {"val": key, "comment": comment}} if comment else key
    return [shown, goto(target_chain)]


def concat(*parts: Any) -> dict[str, Any]:
    return {"concat": list(parts)}


# Expressions


def payload(protocol: str, field: str) -> Expr:
    return {"payload": {"protocol": protocol, "field": field}}


def raw_th(offset_bits: int, length_bits: int) -> Expr:
    """Raw bits of the transport header (here: the ND target address)."""
    return {"payload": {"base": "th", "offset": offset_bits, "len": length_bits}}


def meta(key: str) -> Expr:
    return {"meta": {"key": key}}


def ct(key: str) -> Expr:
    return {"ct": {"key": key}}


def fib_daddr_type() -> Expr:
    return {"fib": {"flags": ["daddr"], "result": "type"}}


def match(left: Expr, right: Any, op: str = "==") -> Expr:
    return {"match": {"op": op, "left": left, "right": right}}


def one_or_set(values: Sequence[Any]) -> Any:
    """A single value as itself, several as an anonymous set."""
    return values[0] if len(values) == 1 else {"set": list(values)}


def net_value(network: Network) -> Any:
    """An address as a string, a wider network as a prefix."""
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return {"prefix": {"addr": str(network.network_address), "len": network.prefixlen}}


def ports_value(ports: Sequence[PortRange]) -> Any | None:
    """The ``th dport`` right-hand side, or None when every port matches."""
    if tuple(ports) == (ANY_PORT,):
        return None
    items = [r.lo if r.lo == r.hi else {"range": [r.lo, r.hi]} for r in ports]
    return one_or_set(items)


# Statements


def goto(chain: str) -> Expr:
    return {"goto": {"target": chain}}


def jump(chain: str) -> Expr:
    return {"jump": {"target": chain}}


def counter_ref(name: str) -> Expr:
    """Count into the named counter object ``name``."""
    return {"counter": name}


def counter() -> Expr:
    return {"counter": None}


def meter_limit(name: str, key: Expr, rate: int, per: str, burst: int) -> Expr:
    """Pass while the rate of packets of each ``key`` allows: a limit per key,
    kept in the dynamic set ``name`` (elements appear as keys are seen; a
    table listing does not show them)."""
    return {"meter": {"name": name, "key": key, "stmt": limit(rate, per, burst)}}


def limit(rate: int, per: str, burst: int) -> Expr:
    return {"limit": {"rate": rate, "per": per, "burst": burst}}


def log(prefix: str) -> Expr:
    return {"log": {"prefix": prefix, "level": "warn"}}


def masquerade() -> Expr:
    return {"masquerade": None}


def vmap(key: Expr, map_name: str) -> Expr:
    """Look ``key`` up in the verdict map ``map_name`` and take its verdict."""
    return {"vmap": {"key": key, "data": f"@{map_name}"}}


@final
class Table(Value):
    """One of guestfence's tables, by name (the same name in every family it
    uses): the commands about the objects in it. Each backend names its own
    (guests: ``inet guestfence``; lockdown, rootless: theirs)."""

    __slots__ = ("name",)
    __match_args__ = ("name",)
    name: str

    def __init__(self, name: str) -> None:
        init_field(self, "name", name)

    def _obj(self, family: str, **fields: Any) -> dict[str, Any]:
        return {"family": family, "table": self.name, **fields}

    def add_table(self, family: str) -> Command:
        return {"add": {"table": {"family": family, "name": self.name}}}

    def delete_table(self, family: str) -> Command:
        return {"delete": {"table": {"family": family, "name": self.name}}}

    def add_chain(self, family: str, name: str) -> Command:
        return {"add": {"chain": self._obj(family, name=name)}}

    def add_base_chain(self, family: str, name: str, *, hook: str, prio: int, kind: str = "filter") -> Command:
        """A base chain with policy accept: it dispatches or drops what it names, the rest goes on."""
        return {"add": {"chain": self._obj(family, name=name, type=kind, hook=hook, prio=prio, policy="accept")}}

    def flush_chain(self, family: str, name: str) -> Command:
        return {"flush": {"chain": self._obj(family, name=name)}}

    def delete_chain(self, family: str, name: str) -> Command:
        return {"delete": {"chain": self._obj(family, name=name)}}

    def add_counter(self, family: str, name: str) -> Command:
        return {"add": {"counter": self._obj(family, name=name)}}

    def delete_counter(self, family: str, name: str) -> Command:
        return {"delete": {"counter": self._obj(family, name=name)}}

    def add_set(self, family: str, name: str, key_type: str | Sequence[str], elements: Sequence[Any] = (), *,
                counters: bool = False, interval: bool = False) -> Command:  # fmt: skip
        """A named set (a list of types: concatenated keys); with ``elements``,
        created holding them (re-adding is a no-op). ``counters``: each element
        counts the packets whose lookup found it; ``interval``: elements may be prefixes."""
        body = self._obj(family, name=name, type=key_type if isinstance(key_type, str) else list(key_type))
        if interval:
            body["flags"] = ["interval"]
        if elements:
            body["elem"] = list(elements)
        if counters:
            body["stmt"] = [counter()]
        return {"add": {"set": body}}

    def flush_set(self, family: str, name: str) -> Command:
        return {"flush": {"set": self._obj(family, name=name)}}

    def add_verdict_map(self, family: str, name: str, key_type: str | Sequence[str]) -> Command:
        key = key_type if isinstance(key_type, str) else list(key_type)
        return {"add": {"map": self._obj(family, name=name, type=key, map="verdict")}}

    def add_element(self, family: str, set_name: str, elements: Iterable[Any]) -> Command:
        return {"add": {"element": self._obj(family, name=set_name, elem=list(elements))}}

    def delete_element(self, family: str, set_name: str, elements: Iterable[Any]) -> Command:
        return {"delete": {"element": self._obj(family, name=set_name, elem=list(elements))}}

    def add_rule(self, family: str, chain: str, exprs: Sequence[Expr], comment: str | None = None) -> Command:
        rule = self._obj(family, chain=chain, expr=list(exprs))
        if comment:
            rule["comment"] = comment
        return {"add": {"rule": rule}}
