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
(``guestfence.nftables.match.rule_matches``, shared), so both backends read
a rule the same way.

Why a user and not a cgroup: ``socket cgroupv2`` is what would match a
cgroup, and the libnftables of Debian 12 (1.0.6) refuses it in JSON
("Invalid socket key value"); guestfence builds rulesets only as JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from guestfence.nftables.build import ACCEPT, Command, Expr, Table, ct, jump, match, meta, vmap
from guestfence.nftables.match import constant_sets, rule_matches
from guestfence.policy.decide import require_gateway
from guestfence.policy.model import Action, Address, Policy, Proto, Rule

FAMILY = "inet"
TABLE = "guestfence_rootless"
OURS = Table(TABLE)
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
        OURS.add_table(FAMILY),
        OURS.add_base_chain(FAMILY, OUTPUT, hook="output", prio=PRIO_FILTER),
        OURS.add_verdict_map(FAMILY, OWNERS, "uid"),
        *constant_sets(OURS, FAMILY),
        OURS.add_chain(FAMILY, chain),
        OURS.flush_chain(FAMILY, chain),
        OURS.flush_chain(FAMILY, OUTPUT),
        OURS.add_rule(FAMILY, OUTPUT, [vmap(meta("skuid"), OWNERS)]),
        *(OURS.add_rule(FAMILY, chain, exprs) for exprs in rules),
        OURS.add_element(FAMILY, OWNERS, [[uid, jump(chain)]]),
    ]


def compile_release(uid: int) -> list[Command]:
    """Remove the owner's entry and chain (the table stays for other owners)."""
    return [OURS.delete_element(FAMILY, OWNERS, [uid]), OURS.delete_chain(FAMILY, owner_chain(uid))]


def compile_flush() -> list[Command]:
    """Remove the whole table (add first, so a missing table is no error)."""
    return [OURS.add_table(FAMILY), OURS.delete_table(FAMILY)]


def _policy_rules(rules: Iterable[Rule], names: Mapping[str, frozenset[Address]], *,
                  deny: bool) -> list[list[Expr]]:
    compiled = []
    for rule in rules:
        verdict = (TCP_RESET if rule.proto is Proto.TCP else REJECT) if deny else ACCEPT
        compiled += [[*matches, verdict] for matches in rule_matches(rule, names, (), deny=deny)]
    return compiled
