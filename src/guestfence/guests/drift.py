"""What the kernel holds compared with what guestfence would install.

The contract: ``status`` reports a difference for every object of our
tables whose content is not what the recorded state compiles to — tables,
chains (type, hook, priority, policy), every rule in order, sets and maps
with their elements, named counters (their identity, not their values).
Counter values (of named counters, anonymous ones and set elements') and
handles are the only things ignored.

How "what we would install" is known without a second description of the
ruleset: ``expected_listing`` applies the very batch ``restore`` would
apply (compile.compile_ruleset) inside a private, empty network namespace
that exists only for the call, and lists it back. Both sides then come
from the same kernel and libnftables in the same listing form, so the
comparison is generic: a new rule shape in compile.py needs no change here.
Only the bulk of the batch skips the scratch namespace (``split_direct``):
the set and map elements, whose listed form is their form in the batch (names, interface names, addresses as
``inet_ntop`` prints them, concatenations and verdicts of those). At 5,000
guests they are nearly all of the batch, and building them a second time
cost more than the rest of ``status``; what they are compared with is
still everything the kernel lists. An element of any other form goes
through the scratch namespace as before.

``compare_listings`` and ``describe_*`` are pure; ``expected_listing`` and
``live_listing`` are the only I/O.
"""

from __future__ import annotations

import ctypes
import difflib
import json
import os
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, final

from guestfence.errors import ApplyError, HostError
from guestfence.guests import names as n
from guestfence.nftables.apply import Command, NftHandle, apply_nft, list_ruleset, open_nft

Item = dict[str, Any]
T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_VOLATILE = ("handle", "packets", "bytes")


@final
@dataclass(frozen=True, slots=True)
class Drift:
    """One difference, in words; ``guest`` names the guest whose object it is (None: shared)."""

    guest: str | None
    text: str


def live_listing(nft: NftHandle | None = None) -> list[Item]:
    """Our tables (every family) as the kernel lists them now."""
    handle = nft or open_nft()
    return [item for family in n.FAMILIES for item in list_ruleset(handle, _table(family))]


def expected_listing(commands: Sequence[Command], *, meanwhile: Callable[[], T]) -> tuple[list[Item], T]:
    """``commands`` applied in a new, empty network namespace and listed
    back (but for what ``split_direct`` takes as it is), and what
    ``meanwhile`` returned (it runs in the calling thread while the scratch
    namespace is built: the live listing, say).

    The scratch work runs in a thread of its own: ``unshare(CLONE_NEWNET)``
    moves only that thread, so the caller's namespace and ruleset are never
    touched, and the scratch namespace goes away with the thread's netlink
    socket. libnftables runs without the GIL, so both listings proceed at once."""
    result: dict[str, Any] = {}
    built, direct = split_direct(commands)

    def scratch() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                raise HostError(f"cannot make a scratch network namespace to compare with: {os.strerror(errno)} (run as root)")
            nft = open_nft()
            apply_nft(nft, built, step="build the expected ruleset")
            result["items"] = live_listing(nft)
        except (HostError, ApplyError) as exc:
            result["error"] = exc

    worker = threading.Thread(target=scratch, name="guestfence-scratch-netns")
    worker.start()
    try:
        other = meanwhile()
    finally:
        worker.join()
    if "error" in result:
        raise result["error"]
    return [*result["items"], *direct], other


def split_direct(commands: Sequence[Command]) -> tuple[list[Command], list[Item]]:
    """(the commands to build in the scratch namespace, listing items of the
    rest): ``add element`` of plain values as an ``element`` item
    (``normalise`` puts its elements in their set). A set flushed or an
    element deleted in the batch keeps the whole batch in the scratch
    namespace. Pure."""
    if any(kind in ("delete", "destroy") and next(iter(body)) == "element" for c in commands for kind, body in c.items()):
        return list(commands), []
    flushed = {(b["set"]["family"], b["set"]["name"]) for c in commands if isinstance(b := c.get("flush"), dict) and "set" in b}
    built: list[Command] = []
    direct: list[Item] = []
    for command in commands:
        added = command.get("add")
        if (isinstance(added, dict) and "element" in added and (added["element"]["family"], added["element"]["name"]) not in flushed
              and all(_plain_element(e) for e in added["element"]["elem"])):  # fmt: skip
            direct.append({"element": added["element"]})
        else:
            built.append(command)
    return built, direct


def _plain_element(element: Any) -> bool:
    """Whether nft lists ``element`` exactly as it was given."""
    if type(element) is list:
        return len(element) == 2 and _plain_key(element[0]) and (type(element[1]) is str or _plain_verdict(element[1]))
    return _plain_key(element)


def _plain_key(key: Any) -> bool:
    if type(key) is str:
        return _listed_as_given(key)
    if type(key) is not dict or len(key) != 1:
        return False
    if type(elem := key.get("elem")) is dict:
        return elem.keys() <= {"val", "comment"} and _plain_key(elem.get("val"))
    parts = key.get("concat")
    return type(parts) is list and all(type(part) is str and _listed_as_given(part) for part in parts)


def _plain_verdict(value: Any) -> bool:
    if type(value) is not dict or len(value) != 1:
        return False
    target = value.get("goto") or value.get("jump")
    return type(target) is dict and type(target.get("target")) is str


def _listed_as_given(text: str) -> bool:
    """An IPv6 address is listed as ``inet_ntop`` writes it; other text (names,
    IPv4 addresses, MACs) as it is, when it is already in that form."""
    if ":" not in text or len(text) == 17 and text.count(":") == 5:
        return text.isprintable() and "/" not in text and "*" not in text
    try:
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text)) == text
    except OSError:
        return False


def _table(family: str) -> Command:
    return {"table": {"family": family, "name": n.TABLE}}


# Normalising a listing: objects keyed by what identifies them.


@final
@dataclass(frozen=True, slots=True)
class Objects:
    """A listing as comparable data: ``attrs[(kind, family, name)]`` without
    handles and values, ``rules[(family, chain)]`` in order, ``elements[(kind,
    family, name)]``. Values are kept as listed: both sides come from the same
    libnftables, so equal objects are equal as data, and only what differs is
    put in canonical form (``_canon``) to be compared and described."""

    attrs: Mapping[tuple[str, str, str], Any]
    rules: Mapping[tuple[str, str], list[Any]]
    elements: Mapping[tuple[str, str, str], list[Any]]


def normalise(items: Iterable[Item]) -> Objects:
    attrs: dict[tuple[str, str, str], Any] = {}
    rules: dict[tuple[str, str], list[Any]] = {}
    elements: dict[tuple[str, str, str], list[Any]] = {}
    added: list[dict[str, Any]] = []
    for item in items:
        kind, body = next(iter(item.items()))
        if kind == "metainfo" or not isinstance(body, dict):
            continue
        if kind == "element":  # split_direct's: elements of a set or map listed elsewhere
            added.append(body)
            continue
        family = str(body.get("family"))
        if kind == "rule":
            rules.setdefault((family, str(body["chain"])), []).append(
                {"expr": [_stable_expr(e) for e in body.get("expr", [])], "comment": body.get("comment")})
            continue
        kept = {k: v for k, v in body.items() if k not in _VOLATILE}
        name = str(kept.get("name"))
        if kind in ("set", "map"):
            elements[(kind, family, name)] = [_uncounted(e) for e in kept.pop("elem", [])]
        if kind == "chain":
            rules.setdefault((family, name), [])
        attrs[(kind, family, name)] = kept
    for body in added:
        family, name = str(body["family"]), str(body["name"])
        kind = "map" if ("map", family, name) in elements else "set"
        elements.setdefault((kind, family, name), []).extend(body["elem"])
    return Objects(attrs=attrs, rules=rules, elements=elements)


def _uncounted(element: Any) -> Any:
    """A set element without its counter's values (a set with a counter per element)."""
    if type(element) is dict and type(elem := element.get("elem")) is dict and "counter" in elem:
        rest = {k: v for k, v in elem.items() if k != "counter"}
        return rest["val"] if rest.keys() == {"val"} else {"elem": rest}
    return element


def element_counts(items: Iterable[Item], sets: Mapping[tuple[str, str], str]) -> list[tuple[str, Any, int, int]]:
    """(what, key, packets, bytes) of every element of the counting ``sets``
    ((family, name) -> what they count) in a listing. Pure."""
    found = []
    for item in items:
        body = item.get("set")
        if isinstance(body, dict) and (what := sets.get((str(body.get("family")), str(body.get("name"))))) is not None:
            for element in body.get("elem", []):
                elem = element.get("elem") if isinstance(element, dict) else None
                if isinstance(elem, dict) and isinstance(counter := elem.get("counter"), dict):
                    found.append((what, elem.get("val"), int(counter.get("packets", 0)), int(counter.get("bytes", 0))))
    return found


def _stable_expr(expr: Any) -> Any:
    """An anonymous counter's values change with traffic; its presence does not."""
    if isinstance(expr, dict) and isinstance(expr.get("counter"), dict) and "packets" in expr["counter"]:
        return {"counter": None}
    return expr


_CANON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def _canon(value: Any) -> str:
    return _CANON.encode(value)


# Comparing.


Owner = Callable[[Any], "str | None"]


def compare_listings(expected: Iterable[Item], live: Iterable[Item], *, element_owner: Owner | None = None) -> list[Drift]:
    """Every difference between two listings, in words. Pure. ``element_owner``:
    the guest a set or map element belongs to (default: the guest whose chain a
    verdict-map element goes to, if any)."""
    element_owner = element_owner or _element_owner
    want, have = normalise(expected), normalise(live)
    drifts: list[Drift] = []
    # A table missing on one side is one difference, not one per object in it.
    one_sided = {family for (kind, family, _) in set(want.attrs) ^ set(have.attrs) if kind == "table"}
    for key in sorted(set(want.attrs) | set(have.attrs)):
        kind, family, name = key
        if family in one_sided and kind != "table":
            continue
        owner = n.guest_of(name)
        label = f"{kind} {family} {name}" if kind != "table" else f"table {family} {n.TABLE}"
        if key not in have.attrs:
            drifts.append(Drift(owner, f"{label} is missing"))
        elif key not in want.attrs:
            drifts.append(Drift(owner, f"{label} is not part of what guestfence installs"))
        elif want.attrs[key] != have.attrs[key]:
            drifts.append(Drift(owner, f"{label} was changed: {_describe_attrs(_canon(have.attrs[key]))}, "
                                       f"expected {_describe_attrs(_canon(want.attrs[key]))}"))
    for key in sorted(set(want.rules) & set(have.rules)):
        if want.rules[key] != have.rules[key]:
            drifts += _rule_drift(key, [_canon(r) for r in want.rules[key]], [_canon(r) for r in have.rules[key]])
    for key in sorted(set(want.elements) & set(have.elements)):
        if want.elements[key] != have.elements[key] and not _same_elements(want.elements[key], have.elements[key]):
            drifts += _element_drift(key, sorted(map(_canon, want.elements[key])), sorted(map(_canon, have.elements[key])),
                                     element_owner)  # fmt: skip
    return drifts


def _same_elements(want: Sequence[Any], have: Sequence[Any]) -> bool:
    """Equal as multisets, by ``repr`` (C speed; tens of thousands of elements
    at 5,000 guests): a difference in key order alone is not taken as equal
    here, and ``_element_drift`` then compares the canonical forms."""
    return len(want) == len(have) and Counter(map(repr, want)) == Counter(map(repr, have))


def _rule_drift(key: tuple[str, str], want: Sequence[str], have: Sequence[str]) -> list[Drift]:
    family, chain = key
    owner = n.guest_of(chain)
    where = f"chain {family} {chain}"
    drifts = []
    matcher = difflib.SequenceMatcher(None, want, have, autojunk=False)
    for op, w1, w2, h1, h2 in matcher.get_opcodes():
        if op in ("delete", "replace"):
            for index in range(w1, w2):
                drifts.append(Drift(owner, f"{where}: rule {index + 1} `{describe_rule(want[index])}` is missing"))
        if op in ("insert", "replace"):
            for index in range(h1, h2):
                drifts.append(Drift(owner, f"{where}: unexpected rule at position {index + 1}: `{describe_rule(have[index])}`"))
    return drifts


def _element_drift(key: tuple[str, str, str], want: Sequence[str], have: Sequence[str], owner: Owner) -> list[Drift]:
    kind, family, name = key
    drifts = []
    for text, elements in (("is missing", set(want) - set(have)), ("is not part of what guestfence installs", set(have) - set(want))):
        for element in sorted(elements):
            value = json.loads(element)
            drifts.append(Drift(owner(value) or n.guest_of(name), f"{kind} {family} {name}: element {describe_value(value)} {text}"))
    return drifts


def _element_owner(element: Any) -> str | None:
    """The guest a verdict-map element sends to, if any."""
    if isinstance(element, list) and len(element) == 2 and isinstance(element[1], dict):
        target = element[1].get("goto", element[1].get("jump", {}))
        if isinstance(target, dict):
            return n.guest_of(str(target.get("target", "")))
    return None


# Rules and values in words, close to nft's own syntax (for the reader, not for nft).


def describe_rule(canonical: str) -> str:
    rule = json.loads(canonical)
    words = " ".join(describe_expr(e) for e in rule["expr"])
    return words + (f" comment {json.dumps(rule['comment'])}" if rule.get("comment") else "")


def describe_expr(expr: Any) -> str:
    if not isinstance(expr, dict) or len(expr) != 1:
        return describe_value(expr)
    (kind, body), = expr.items()
    if kind == "match":
        op = "" if body["op"] in ("==", "in") else f"{body['op']} "
        return f"{describe_value(body['left'])} {op}{describe_value(body['right'])}"
    if kind in ("accept", "drop", "return", "continue", "masquerade") and not body:
        return kind
    if kind in ("goto", "jump"):
        return f"{kind} {body['target']}"
    if kind == "vmap":
        return f"{describe_value(body['key'])} vmap {describe_value(body['data'])}"
    if kind in ("counter", "limit") and isinstance(body, dict) and isinstance(body.get("map"), dict):
        return f"{kind} name {describe_value(body['map'].get('key'))} map {describe_value(body['map'].get('data'))}"
    if kind == "meter" and isinstance(body, dict):
        return f"meter {body.get('name')} {{ {describe_value(body.get('key'))} {describe_expr(body.get('stmt'))} }}"
    if kind == "counter":
        return "counter" if body is None else f"counter name {describe_value(body)}"
    if kind == "log":
        return "log" + "".join(f" {k} {json.dumps(v) if k == 'prefix' else v}" for k, v in body.items())
    if kind == "limit":
        return f"limit rate {body.get('rate')}/{body.get('per')}" + (f" burst {body['burst']}" if body.get("burst") else "")
    return f"{kind} {describe_value(body)}"


def describe_value(value: Any) -> str:
    if isinstance(value, dict) and len(value) == 1:
        (kind, body), = value.items()
        if kind == "payload" and "protocol" in body:
            return f"{body['protocol']} {body['field']}"
        if kind == "payload":
            return f"@{body.get('base')},{body.get('offset')},{body.get('len')}"
        if kind in ("meta", "ct"):
            return f"{kind} {body['key']}"
        if kind == "fib":
            return f"fib {' . '.join(body.get('flags', []))} {body.get('result')}"
        if kind == "set" and isinstance(body, list):
            return "{ " + ", ".join(describe_value(v) for v in body) + " }"
        if kind == "prefix":
            return f"{body['addr']}/{body['len']}"
        if kind == "range":
            return f"{describe_value(body[0])}-{describe_value(body[1])}"
        if kind == "concat":
            return " . ".join(describe_value(v) for v in body)
        if kind == "elem":
            return describe_value(body.get("val"))
        return describe_expr(value)
    if isinstance(value, list):
        if len(value) == 2 and isinstance(value[1], dict):
            return f"{describe_value(value[0])} : {describe_expr(value[1])}"
        return "{ " + ", ".join(describe_value(v) for v in value) + " }"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _describe_attrs(canonical: str) -> str:
    attrs = json.loads(canonical)
    return ", ".join(f"{k} {describe_value(v)}" for k, v in sorted(attrs.items()) if k not in ("family", "table", "name"))
