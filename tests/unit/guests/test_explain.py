"""guests.explain: a registered guest's flows decided as its firewall decides them."""

from __future__ import annotations

import ipaddress

import pytest

from guestfence.guests.explain import explain_guest, guest_context
from guestfence.guests.firewall import Registered, Registry
from guestfence.guests.guest import parse_guest
from guestfence.policy.grammar import parse_destination
from guestfence.policy.model import Action, Flow, Policy, Proto, local_types

HOST = {ipaddress.ip_address(a) for a in ("192.0.2.5", "198.51.100.7")}


def member(name: str, index: int, **policy: object) -> Registered:
    base = 4 * index
    guest = parse_guest(name=name, iface=f"vmtap-{name}", addresses=[f"192.0.2.{base + 2}/30", f"2001:db8:{index}::2/64"],
                        gateways=[f"192.0.2.{base + 1}"], policy=Policy.parse(**policy))  # type: ignore[arg-type]
    return Registered(guest=guest)


G1 = member("g1", 1, default="allow", allow=["tcp://192.0.2.8/30:22"], deny=["tcp://@host:22"])
REGISTRY = Registry(members=(G1, member("g2", 2), member("g3", 3)))
CONTEXT = guest_context(G1, REGISTRY, local_types(HOST))


@pytest.mark.parametrize(("dest", "verdict", "decided_by"), [
    ("tcp://192.0.2.10:22", "allow", "allow tcp://192.0.2.8/30:22"),  # another guest, named
    ("tcp://192.0.2.14:22", "deny", "deny (another guest)"),  # another guest, only the default
    ("tcp://192.0.2.5:22", "deny", "deny tcp://@host:22"),
    ("tcp://203.0.113.9:22", "allow", "default allow"),
    ("tcp://127.0.0.1:80", "deny", "deny (martian)"),
    ("tcp://0.0.0.0:80", "deny", "deny (martian)"),
    ("udp://[::]:53", "deny", "deny (martian)"),
    ("tcp://[::1]:80", "deny", "deny (martian)"),
])  # fmt: skip
def test_a_guest_flow_is_decided_with_the_guests_context(dest: str, verdict: str, decided_by: str) -> None:
    decision = explain_guest(G1, parse_destination(dest), CONTEXT)
    assert (decision.action.value, decision.decided_by) == (verdict, decided_by)


def test_a_mapped_destination_on_the_wire_is_a_martian() -> None:
    flow = Flow(proto=Proto.TCP, address=ipaddress.ip_address("::ffff:192.0.2.5"), port=80)
    assert explain_guest(G1, flow, CONTEXT).decided_by == "deny (martian)"


def test_a_translated_flow_needs_both_destinations() -> None:
    aimed = parse_destination("tcp://203.0.113.80:80")
    to_host = explain_guest(G1, aimed, CONTEXT, dnat=parse_destination("tcp://198.51.100.7:22"))
    assert to_host.action is Action.DENY and to_host.decided_by == "deny tcp://@host:22" and "translates" in to_host.reason
    elsewhere = explain_guest(G1, aimed, CONTEXT, dnat=parse_destination("tcp://203.0.113.81:8080"))
    assert elsewhere.action is Action.ALLOW


def test_explain_json_names_the_link_essentials_the_policy_does_not(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """ND and MLD to the host and ct established/related are accepted for
    every guest whatever its policy: --guest --json says so, from the
    compiler's own set, next to each flow."""
    import json

    from guestfence.cli import main

    (tmp_path / "state.json").write_text(json.dumps({"version": 1, "guests": REGISTRY.to_json()}))
    code = main(["explain", "--guest", "g2", "--json", "--state-dir", str(tmp_path), "icmp://[2001:db8:2::1]",
                 "tcp://192.0.2.9:22"])  # fmt: skip
    (v6, v4) = json.loads(capsys.readouterr().out)
    assert code == 0 and v6["verdict"] == "deny"  # the policy says nothing of ICMP ...
    assert v6["link_essentials"][0] == ("icmpv6 type {nd-neighbor-solicit, nd-neighbor-advert, mld-listener-report, "
                                        "mld2-listener-report} to the host: neighbour discovery and MLD")  # ... the link still works
    assert [e.split(":")[0] for e in v4["link_essentials"]] == ["ct state established,related"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # read-only: no lock file
    main(["explain", "--json", "--net-allow", "tcp://192.0.2.9:22", "tcp://192.0.2.9:22"])
    assert "link_essentials" not in json.loads(capsys.readouterr().out)[0]  # a policy alone has no link
