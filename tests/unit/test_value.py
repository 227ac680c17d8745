"""guestfence.value.Value behaves as the frozen dataclass it stands in for."""

from __future__ import annotations

import copy
import dataclasses
import ipaddress

import pytest

from guestfence.policy.model import (
    AnyHost,
    Context,
    NetHost,
    Policy,
    PortRange,
    Proto,
    Rule,
    parse_policy,
)
from guestfence.resolve import Resolution
from guestfence.value import Value, init_field, replace


class Pair(Value):
    __slots__ = ("a", "b")

    def __init__(self, *, a: object, b: object = 0) -> None:
        init_field(self, "a", a)
        init_field(self, "b", b)


class OtherPair(Value):
    __slots__ = ("a", "b")

    def __init__(self, *, a: object, b: object = 0) -> None:
        init_field(self, "a", a)
        init_field(self, "b", b)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DataPair:
    a: object
    b: object = 0


def test_is_frozen() -> None:
    pair = Pair(a=1)
    with pytest.raises(AttributeError):
        pair.a = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del pair.b
    with pytest.raises(AttributeError):
        pair.c = 3  # type: ignore[attr-defined]
    assert (pair.a, pair.b) == (1, 0)


def test_equal_and_hashed_by_fields_within_its_class_only() -> None:
    assert Pair(a=1, b=2) == Pair(a=1, b=2) and hash(Pair(a=1, b=2)) == hash(Pair(a=1, b=2))
    assert Pair(a=1, b=2) != Pair(a=1, b=3)
    assert Pair(a=1, b=2) != OtherPair(a=1, b=2)
    assert len({Pair(a=1), Pair(a=1), Pair(a=2)}) == 2


def test_repr_and_hash_are_the_dataclass_ones() -> None:
    assert repr(Pair(a=1, b="x")) == repr(DataPair(a=1, b="x")).replace("DataPair", "Pair")
    assert hash(Pair(a=1, b="x")) == hash(DataPair(a=1, b="x"))
    rule = Rule(proto=Proto.TCP, host=NetHost(ipaddress.ip_network("192.0.2.0/24")), ports=(PortRange(22, 22),))
    assert repr(rule) == ("Rule(proto=<Proto.TCP: 'tcp'>, host=NetHost(network=IPv4Network('192.0.2.0/24')), "
                          "ports=(PortRange(lo=22, hi=22),))")
    assert repr(AnyHost()) == "AnyHost()" and AnyHost() == AnyHost() and hash(AnyHost()) == hash(())


def test_copies_are_the_value_itself() -> None:
    policy = parse_policy(allow=["tcp://192.0.2.1:22"])
    assert copy.copy(policy) is policy and copy.deepcopy(policy) is policy


def test_port_ranges_order_as_the_dataclass_did() -> None:
    ranges = [PortRange(80, 90), PortRange(22, 22), PortRange(80, 81), PortRange(0, 65535)]
    assert sorted(ranges) == [PortRange(0, 65535), PortRange(22, 22), PortRange(80, 81), PortRange(80, 90)]
    assert PortRange(1, 2) < PortRange(1, 3) <= PortRange(1, 3) and PortRange(2, 2) > PortRange(1, 9) >= PortRange(1, 9)
    with pytest.raises(TypeError):
        assert PortRange(1, 2) < (1, 2)  # type: ignore[operator]


def test_fields_left_out_of_equality_and_hash() -> None:
    # Context compares its gateways and guests, not the callable or the names.
    assert Context(names={"a.example": frozenset()}, address_type=len) == Context()
    assert hash(Context(names={"a.example": frozenset()})) == hash(Context())
    assert Context(gateways=frozenset({ipaddress.ip_address("192.0.2.1")})) != Context()
    # Resolution compares its mappings but hashes none of them.
    assert Resolution(failures={"a.example": "no"}) != Resolution()
    assert hash(Resolution(failures={"a.example": "no"})) == hash(Resolution())


def test_constructors_check_their_invariants() -> None:
    with pytest.raises(ValueError):
        PortRange(2, 1)
    with pytest.raises(ValueError):
        Rule(proto=Proto.TCP, host=AnyHost())
    with pytest.raises(ValueError):
        Policy(allow=(Rule(proto=Proto.ICMP, host=AnyHost()),) * 2)
    with pytest.raises(TypeError):
        Rule(Proto.ICMP, AnyHost())  # type: ignore[misc]  # keyword-only, as the dataclass was


def test_replace_makes_a_new_checked_value_of_a_value_or_a_dataclass() -> None:
    pair = Pair(a=1, b=2)
    assert replace(pair, b=3) == Pair(a=1, b=3) and pair == Pair(a=1, b=2)
    assert replace(DataPair(a=1), b=5) == DataPair(a=1, b=5)
    with pytest.raises(TypeError):
        replace(pair, c=1)
    with pytest.raises(ValueError):
        replace(PortRange(1, 2), lo=3)


def test_pickles_as_the_slotted_dataclass_did() -> None:
    import pickle

    policy = parse_policy(allow=["tcp://192.0.2.1:22", "icmp://*"], deny=["udp://@host:53"])
    assert pickle.loads(pickle.dumps(policy)) == policy
    assert pickle.loads(pickle.dumps(Context(names={"a.example": frozenset()}))).names == {"a.example": frozenset()}
