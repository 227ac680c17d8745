"""The CNI plugin's reading of its request and of prevResult (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from guestfence.integrations.cni import CniError, HostLink, Request, guest_from_result, guest_name, handle, read_request

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_IFNAME": "eth0", "CNI_NETNS": "/run/netns/x"}
BRIDGE_RESULT = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "cni0", "mac": "02:00:00:00:00:01"},
        {"name": "veth1234", "mac": "02:00:00:00:00:02"},
        {"name": "eth0", "mac": "02:00:00:00:00:03", "sandbox": "/run/netns/x"},
    ],
    "ips": [{"interface": 2, "address": "203.0.113.2/28", "gateway": "203.0.113.1"}],
}
LINKS = {"cni0": HostLink(is_bridge=True, master=None), "veth1234": HostLink(is_bridge=False, master="cni0")}


def config(**extra: Any) -> str:
    return json.dumps({"cniVersion": "1.0.0", "name": "net1", "type": "guestfence", "prevResult": BRIDGE_RESULT, **extra})


def test_bridge_result_makes_a_bridge_port_guest_with_the_gateway() -> None:
    request = read_request(ENV, config(policy={"allow": ["tcp://@gateway:8080"]}))
    guest = guest_from_result(request, LINKS.__getitem__)
    assert (guest.iface, guest.bridge, guest.mac) == ("veth1234", "cni0", "02:00:00:00:00:03")
    assert [str(a) for a in guest.addresses] == ["203.0.113.2/28"] and [str(g) for g in guest.gateways] == ["203.0.113.1"]
    assert [str(r) for r in guest.policy.allow] == ["tcp://@gateway:8080"]
    assert guest.name == guest_name("net1", "c0ffee", "eth0")


def test_a_ptp_result_makes_a_routed_guest_on_the_host_veth() -> None:
    result = {**BRIDGE_RESULT, "interfaces": BRIDGE_RESULT["interfaces"][1:], "ips": [{**BRIDGE_RESULT["ips"][0], "interface": 1}]}
    request = read_request(ENV, json.dumps({"cniVersion": "1.0.0", "name": "net1", "prevResult": result}))
    guest = guest_from_result(request, {"veth1234": HostLink(is_bridge=False, master=None)}.__getitem__)
    assert (guest.iface, guest.bridge, guest.mac) == ("veth1234", None, None)


def test_the_name_is_the_same_for_one_attachment_and_differs_between_attachments() -> None:
    assert guest_name("n", "c", "eth0") == guest_name("n", "c", "eth0")
    assert len({guest_name("n", "c", "eth0"), guest_name("n", "c", "eth1"), guest_name("m", "c", "eth0"), guest_name("n", "d", "eth0")}) == 4


@pytest.mark.parametrize(
    ("env", "stdin", "code"),
    [
        ({**ENV, "CNI_COMMAND": "FROB"}, config(), 4),
        ({k: v for k, v in ENV.items() if k != "CNI_CONTAINERID"}, config(), 4),
        (ENV, "{not json", 6),
        (ENV, json.dumps({"cniVersion": "0.3.1", "name": "n", "prevResult": BRIDGE_RESULT}), 1),
        (ENV, json.dumps({"cniVersion": "1.0.0", "name": "n"}), 7),
    ],
)
def test_bad_requests_are_cni_errors(env: dict[str, str], stdin: str, code: int) -> None:
    with pytest.raises(CniError) as failed:
        read_request(env, stdin)
    assert failed.value.code == code


@pytest.mark.parametrize(
    "policy",
    [{"allow": ["tcp://@gateway:70000"]}, {"allow": "tcp://*:80"}, {"default": "maybe"}, {"alow": []}, ["tcp://*:80"]],
)
def test_a_bad_policy_is_an_invalid_config_error(policy: Any) -> None:
    with pytest.raises(CniError) as failed:
        guest_from_result(read_request(ENV, config(policy=policy)), LINKS.__getitem__)
    assert failed.value.code == 7


def test_a_result_without_one_host_side_interface_is_refused() -> None:
    result = {**BRIDGE_RESULT, "interfaces": [BRIDGE_RESULT["interfaces"][2]], "ips": [{**BRIDGE_RESULT["ips"][0], "interface": 0}]}
    with pytest.raises(CniError, match="exactly one host-side interface"):
        guest_from_result(read_request(ENV, json.dumps({"cniVersion": "1.0.0", "name": "n", "prevResult": result})), LINKS.__getitem__)


def test_version_needs_no_container() -> None:
    answer = handle(read_request({"CNI_COMMAND": "VERSION"}, '{"cniVersion": "1.0.0"}'))
    assert answer == {"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]}


def test_error_object_has_the_spec_fields() -> None:
    assert CniError(7, "bad", "why").to_json("1.0.0") == {"cniVersion": "1.0.0", "code": 7, "msg": "bad", "details": "why"}
    assert isinstance(Request(command="DEL", container_id="c", ifname="eth0", config={}).version, str)
