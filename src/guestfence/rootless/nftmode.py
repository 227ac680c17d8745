"""The root-assisted mode: the stack's own sockets filtered in the output hook. Pure.

The stack runs as a dedicated user; every packet its sockets send leaves
through the output hook, where this table sends the user's packets to a
chain holding the policy. ``@host`` is ``fib daddr type @to_host`` (local,
broadcast, multicast, anycast): the kernel reads its live routing table for
each new connection, so no address list is copied and an address added a
moment ago is the host's from its first packet. The output hook sees the
destination the kernel chose: ``0.0.0.0`` and ``::`` are already loopback
there, and an IPv4-mapped destination is already IPv4.
Nothing runs in the data path but the kernel.

    inet guestfence_rootless
      output      hook output, priority filter, policy accept
          meta skuid vmap @owners                 -> jump owner.UID
      owner.UID   ct state established,related accept
                  deny rules reject; allow rules accept; the default

A refusal is ``reject``: a TCP reset for TCP, an ICMP port unreachable for
the rest, so the stack's connect fails at once with ECONNREFUSED, as a
closed port would make it (an ICMP error alone leaves some stacks, pasta
among them, waiting for their own timeout).

The policy's rules become matches exactly as in the guests' firewall
(``guestfence.guests.compile.rule_matches``), so both backends read a rule
the same way.

Why a user and not a cgroup: ``socket cgroupv2`` is what would match a
cgroup, and the libnftables of Debian 12 (1.0.6) refuses it in JSON
("Invalid socket key value"); guestfence builds rulesets only as JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from guestfence.nftables.build import ACCEPT, Command, Expr, ct, match, meta
from guestfence.guests.compile import rule_matches
from guestfence.guests.names import ICMP_PROTOS, TO_HOST_TYPES
from guestfence.guests.compile import HOST_TYPES
from guestfence.policy.decide import require_gateway
from guestfence.policy.model import Action, Address, Policy, Proto, Rule

FAMILY = "inet"
TABLE = "guestfence_rootless"
OUTPUT = "output"
OWNERS = "owners"
PRIO_FILTER = 0
REJECT: Expr = {"reject": None}
TCP_RESET: Expr = {"reject": {"type": "tcp reset"}}


def owner_chain(uid: int) -> str:
    return f"owner.{uid}"


def compile_owner(uid: int, policy: Policy, names: Mapping[str, frozenset[Address]]) -> list[Command]:
    """One transaction: the table and base chain (idempotent), the owner's
    chain replaced whole, and its entry in the dispatch map."""
    require_gateway(policy, frozenset(), hint="a rootless stack has no gateway of its own: use @host or addresses")
    chain = owner_chain(uid)
    rules = [[match(ct("state"), ["established", "related"]), ACCEPT]]
    rules += _policy_rules(policy.deny, names, deny=True)
    rules += _policy_rules(policy.allow, names, deny=False)
    if policy.default is Action.ALLOW:
        rules.append([ACCEPT])
    else:
        rules += [[match(meta("l4proto"), "tcp"), TCP_RESET], [REJECT]]
    return [
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
        {"add": {"chain": _obj(name=OUTPUT, type="filter", hook="output", prio=PRIO_FILTER, policy="accept")}},
        {"add": {"map": _obj(name=OWNERS, type="uid", map="verdict")}},
        {"add": {"set": _obj(name=ICMP_PROTOS, type="inet_proto", elem=["icmp", "ipv6-icmp"])}},
        {"add": {"set": _obj(name=TO_HOST_TYPES, type="fib_addrtype", elem=sorted(HOST_TYPES))}},
        {"add": {"chain": _obj(name=chain)}},
        {"flush": {"chain": _obj(name=chain)}},
        {"flush": {"chain": _obj(name=OUTPUT)}},
        {"add": {"rule": _obj(chain=OUTPUT, expr=[{"vmap": {"key": meta("skuid"), "data": f"@{OWNERS}"}}])}},
        *({"add": {"rule": _obj(chain=chain, expr=exprs)}} for exprs in rules),
        {"add": {"element": _obj(name=OWNERS, elem=[[uid, {"jump": {"target": chain}}]])}},
    ]


def compile_release(uid: int) -> list[Command]:
    """Remove the owner's entry and chain (the table stays for other owners)."""
    return [
        {"delete": {"element": _obj(name=OWNERS, elem=[uid])}},
        {"delete": {"chain": _obj(name=owner_chain(uid))}},
    ]


def compile_flush() -> list[Command]:
    """Remove the whole table (add first, so a missing table is no error)."""
    table = {"family": FAMILY, "name": TABLE}
    return [{"add": {"table": table}}, {"delete": {"table": table}}]


def _obj(**fields: object) -> dict[str, object]:
    return {"family": FAMILY, "table": TABLE, **fields}


def _policy_rules(rules: Iterable[Rule], names: Mapping[str, frozenset[Address]], *,
                  deny: bool) -> list[list[Expr]]:
    compiled = []
    for rule in rules:
        verdict = (TCP_RESET if rule.proto is Proto.TCP else REJECT) if deny else ACCEPT
        compiled += [[*matches, verdict] for matches in rule_matches(rule, names, (), deny=deny)]
    return compiled
