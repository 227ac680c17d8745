"""names.py and guest.py: what a guest may be called and what it is made of."""

from __future__ import annotations

import pytest

from guestfence.errors import PolicyError
from guestfence.guests.guest import guest_from_json, guest_to_json, parse_guest, parse_pattern
from guestfence.guests.names import GUEST_NAME, SEPARATOR, guest_chain, guest_of
from guestfence.policy.model import Policy


def test_separator_is_not_allowed_in_guest_names_so_objects_cannot_collide() -> None:
    assert guest_chain("a", "host") == guest_chain(f"a{SEPARATOR}host"), "this is why the name is refused"
    assert not GUEST_NAME.match(f"a{SEPARATOR}host")
    assert guest_of(guest_chain("vm-1", "drop")) == "vm-1"
    assert guest_of("prerouting") is None


@pytest.mark.parametrize("name", ['x" ; flush ruleset', "a.b", "vm1}", "@guests", "", "-vm", "x" * 33, "vm\n1", "vm 1"])
def test_rejects_guest_names_that_could_mean_something_else(name: str) -> None:
    with pytest.raises(PolicyError, match="invalid guest name"):
        parse_guest(name=name, iface="vmtap-a", addresses=["192.0.2.2/30"])


@pytest.mark.parametrize("iface", ["@guests", "vmtap*", 'x";flush', "$var", "a/b", ".", "..", "x" * 16, "-x", ""])
def test_rejects_interface_names_nftables_would_read_as_more_than_a_name(iface: str) -> None:
    with pytest.raises(PolicyError, match="invalid interface name"):
        parse_guest(name="vm1", iface=iface, addresses=["192.0.2.2/30"])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(addresses=[]), "no address"),
        (dict(addresses=["192.0.2.300/30"]), "invalid address '192.0.2.300/30'"),
        (dict(addresses=["::ffff:192.0.2.2/128"]), "IPv4-mapped"),
        (dict(addresses=["0.0.0.0/0"]), "cannot be a guest's own address"),
        (dict(gateways=["gw"]), "invalid gateway 'gw'"),
        (dict(mac="02:00:00:00:00"), "invalid MAC"),
        (dict(bridge="br0"), "needs --mac"),
        (dict(comment="a\nb"), "only printable characters"),
    ],
)
def test_rejects_bad_fields_naming_the_guest(fields: dict, message: str) -> None:
    base = dict(name="vm1", iface="vmtap-a", addresses=["192.0.2.2/30"])
    with pytest.raises(PolicyError, match=f"guest vm1: .*{message}"):
        parse_guest(**{**base, **fields})


def test_recorded_form_reads_back_to_the_same_guest() -> None:
    guest = parse_guest(
        name="vm1", iface="vnet3", addresses=["192.0.2.2/30", "2001:db8::2/64"], gateways=["192.0.2.1"],
        policy=Policy.parse(allow=["tcp://@gateway:8080"], deny=["tcp://@host:22"]), mac="02:AA:00:00:00:01",
        masquerade=True, bridge="br0", comment="web",
    )  # fmt: skip
    assert guest.mac == "02:aa:00:00:00:01"
    assert guest_from_json(guest_to_json(guest), where="state") == guest


def test_pattern_is_a_name_with_an_optional_trailing_star() -> None:
    assert parse_pattern("vmtap*") == "vmtap*" and parse_pattern("") == ""
    for bad in ("*", "vm*tap", "@x", "a b*"):
        with pytest.raises(PolicyError, match="invalid guest interface pattern"):
            parse_pattern(bad)


def test_a_guest_with_unix_rules_reads_back_equal_from_its_record() -> None:
    """The record keeps the unix:// rules the firewall ignores, so an
    integration's check (recorded == requested) holds for such a policy."""
    from guestfence.guests.guest import guest_from_json, guest_to_json

    guest = parse_guest(name="vm1", iface="vmtap-a", addresses=["192.0.2.2/30"],
                        policy=Policy.parse(allow=["udp://*:53", "unix:///run/x.sock"], deny=["unix://@*"]))  # fmt: skip
    assert guest_from_json(guest_to_json(guest), where="test") == guest


# Forms ipaddress accepts or refuses that a C parser might read otherwise:
# leading zeros, scopes, netmask prefixes, embedded IPv4, non-ASCII digits.
ADDRESS_FORMS = [
    "192.0.2.1", "01.2.3.4", "1.2.3.04", "256.1.1.1", "1.2.3", "1.2.3.4.5", " 1.2.3.4", "1.2.3.4 ", "0x1.2.3.4",
    "::", "::1", "2001:db8::2", "2001:DB8::2", "0001:db8::", "1::2::3", "::ffff:1.2.3.4", "::1.2.3.4",
    "::ffff:01.2.3.4", "fe80::1%eth0", "1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:8:9", "12345::", "", "::g",
    "1.2.3.4/24", "1.2.3.4/255.255.255.0", "1.2.3.4/0.0.0.255", "1.2.3.4/0", "1.2.3.4/33", "1.2.3.4/032",
    "2001:db8::2/64", "2001:db8::2/129", "2001:db8::2/+64", "2001:db8::2/ 64", "2001:db8::2/64/1",
    "2001:db8::2/", "/64", "1.2.3.4/\u0663", "::/0", "fe80::1%x/64",
]  # fmt: skip


@pytest.mark.parametrize("text", ADDRESS_FORMS)
def test_record_addresses_parse_exactly_as_ipaddress_does(text: str) -> None:
    import ipaddress

    from guestfence.guests.guest import _fast_address, _fast_interface

    def outcome(parse, value):  # type: ignore[no-untyped-def]
        try:
            parsed = parse(value)
        except ValueError:
            return "refused"
        return type(parsed), parsed, str(parsed), getattr(parsed, "network", None)

    assert outcome(_fast_address, text) == outcome(ipaddress.ip_address, text)
    assert outcome(_fast_interface, text) == outcome(ipaddress.ip_interface, text)


@pytest.mark.parametrize("text", [*ADDRESS_FORMS, "127.0.0.1/8", "0.0.0.0/0", "224.0.0.1/4", "239.1.2.3", "::1/128", "::/128",
                                  "ff02::1/64", "::ffff:192.0.2.1/120", "::ffff:192.0.2.1", "1.2.3.4/32", 5, None])
def test_the_record_fast_path_accepts_only_what_parse_guest_accepts_and_reads_it_the_same(text: object) -> None:
    # guest add reads the other recorded guests' addresses without making them (own_address_of, gateway_of);
    # a form they do not take is parsed, so they may leave one out, never accept one parse_guest refuses.
    import ipaddress

    from guestfence.guests.guest import _parse_address, _parse_interface, gateway_of, own_address_of

    try:
        ip = _parse_interface(text, "vm1", "").ip  # type: ignore[arg-type]
        parsed = (ip.version, int(ip))
    except PolicyError:
        parsed = None
    found = own_address_of(text)
    assert found is None or found == parsed
    try:
        _parse_address(text, "vm1", "")  # type: ignore[arg-type]
    except PolicyError:
        assert not gateway_of(text)
    # The plain forms every record holds take the fast path.
    assert own_address_of("192.0.2.2/30") == (4, int(ipaddress.ip_address("192.0.2.2")))
    assert own_address_of("2001:db8::2/64") == (6, int(ipaddress.ip_address("2001:db8::2")))
    assert gateway_of("192.0.2.1") and gateway_of("2001:db8::1")
