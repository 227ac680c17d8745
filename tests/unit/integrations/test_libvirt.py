"""The libvirt hook's reading of domain XML and its decision per call (pure)."""

from __future__ import annotations

import pytest

from guestfence.errors import PolicyError
from guestfence.integrations.libvirt import Nothing, Register, Unregister, decide, parse_domain

UUID = "0f5c7e9a-1b2c-4d3e-8f90-123456789abc"
FENCE = """
  <metadata>
    <guestfence:guest xmlns:guestfence="https://guestfence.example/xmlns/1">
      <guestfence:policy default="deny"><guestfence:allow>tcp://@gateway:8080</guestfence:allow></guestfence:policy>
      <guestfence:interface mac="52:54:00:00:00:01">
        <guestfence:address>192.0.2.2/30</guestfence:address><guestfence:gateway>192.0.2.1</guestfence:gateway>
      </guestfence:interface>
      <guestfence:interface mac="52:54:00:00:00:02">
        <guestfence:address>198.51.100.5/24</guestfence:address><guestfence:gateway>198.51.100.1</guestfence:gateway>
        <guestfence:policy default="deny"><guestfence:allow>icmp://@gateway</guestfence:allow></guestfence:policy>
      </guestfence:interface>
    </guestfence:guest>
  </metadata>"""
ETHERNET = "<interface type='ethernet'><mac address='52:54:00:00:00:01'/><target dev='vmtap-lv1'/></interface>"
BRIDGED = "<interface type='bridge'><mac address='52:54:00:00:00:02'/><source bridge='br0'/><target dev='vnet7'/></interface>"


def domain(*interfaces: str, fence: str = FENCE) -> str:
    return f"<domain type='qemu'><name>web1</name><uuid>{UUID}</uuid>{fence}<devices>{''.join(interfaces)}</devices></domain>"


def test_start_registers_each_interface_with_its_policy() -> None:
    action = decide(parse_domain(domain(ETHERNET, BRIDGED)), "start", "begin")
    assert isinstance(action, Register) and action.prefix == "lv-0f5c7e9a1b2c-"
    routed, bridged = action.guests
    assert (routed.name, routed.iface, routed.bridge, routed.mac) == ("lv-0f5c7e9a1b2c-0", "vmtap-lv1", None, None)
    assert [str(r) for r in routed.policy.allow] == ["tcp://@gateway:8080"]
    assert (bridged.iface, bridged.bridge, bridged.mac) == ("vnet7", "br0", "52:54:00:00:00:02")
    assert [str(r) for r in bridged.policy.allow] == ["icmp://@gateway"], "an interface's own policy replaces the domain's"
    assert routed.comment == "libvirt web1"


def test_teardown_removes_by_domain_whatever_the_xml_says() -> None:
    for operation in ("stopped", "release"):
        assert decide(parse_domain(domain(fence="")), operation, "end") == Unregister(prefix="lv-0f5c7e9a1b2c-")


def test_a_domain_without_metadata_is_left_alone_and_other_calls_do_nothing() -> None:
    assert isinstance(decide(parse_domain(domain(ETHERNET, fence="")), "start", "begin"), Nothing)
    assert isinstance(decide(parse_domain(domain(ETHERNET)), "started", "begin"), Nothing)


def test_prepare_checks_the_metadata_before_any_tap_exists() -> None:
    untargeted = "<interface type='ethernet'><mac address='52:54:00:00:00:01'/></interface>"
    assert isinstance(decide(parse_domain(domain(untargeted)), "prepare", "begin"), Nothing)
    with pytest.raises(PolicyError, match="70000"):
        decide(parse_domain(domain(untargeted, fence=FENCE.replace("8080", "70000"))), "prepare", "begin")


@pytest.mark.parametrize(
    ("interfaces", "message"),
    [
        ((ETHERNET, BRIDGED.replace(":02'", ":03'")), "no guestfence:interface describes it"),
        (("<interface type='direct'><mac address='52:54:00:00:00:01'/><target dev='macvtap0'/></interface>",), "fences only"),
        (("<interface type='ethernet'><mac address='52:54:00:00:00:01'/></interface>",), "no target dev"),
        ((BRIDGED.replace("<source bridge='br0'/>", ""),), "no source bridge"),
    ],
)
def test_start_fails_closed(interfaces: tuple[str, ...], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        decide(parse_domain(domain(*interfaces)), "start", "begin")


@pytest.mark.parametrize("text", ["<domain", "<network><name>x</name></network>", "<domain><name>x</name></domain>"])
def test_bad_xml_is_bad_input(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_domain(text)
