"""``guestfence-cni``: a CNI chained plugin (spec 1.0.0; 0.4.0 results read too).

Installed as ``guestfence`` in the CNI plugin directories, it runs after an
interface plugin (bridge, ptp) in a conflist::

    {"type": "guestfence",
     "policy": {"default": "deny", "allow": ["tcp://@gateway:8080"], "deny": []},
     "stateDir": "/var/lib/guestfence"}          # optional, as $GUESTFENCE_STATE_DIR

- ADD reads ``prevResult``: the container's interface (``CNI_IFNAME``, the
  one with a ``sandbox``), its MAC, its IPs and their gateways, and the
  host-side interface (the one without a ``sandbox`` that is not a bridge).
  The kernel says whether that host interface is a bridge port: then the
  container is registered as a bridge-port guest (its traffic to the host
  arrives on the bridge, told apart by the port and its MAC); else as a
  routed guest on the host interface (ptp). ``@gateway`` is prevResult's
  gateway. It prints prevResult unchanged: the chain's result.
- DEL removes the guest ADD registered, found by its name, which is derived
  from the network name, ``CNI_CONTAINERID`` and ``CNI_IFNAME`` alone, so DEL
  needs no prevResult and succeeds when nothing is registered.
- CHECK fails unless the guest is registered as prevResult describes it and
  its rules are in the live ruleset unchanged.
- VERSION prints the supported versions.

Errors are the spec's error object on stdout and exit status 1: 4 bad
environment, 6 undecodable config, 7 invalid config (policy syntax
included), 1 incompatible version, 100+ guestfence's own (100 the host
refused, 101 applying failed, 102 CHECK found drift).

Reading the request and the result into a ``Guest`` is pure
(``read_request``, ``guest_from_result``); the kernel is asked only
``host_link`` questions, and the firewall changed only through ``registry``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, final

from guestfence.errors import GuestfenceError, HostError, PlanError, PolicyError
from guestfence.integrations import registry
from guestfence.guests.guest import Guest, parse_guest
from guestfence.policy.model import parse_policy
from guestfence.state import state_dir

CNI_VERSION = "1.0.0"
SUPPORTED_VERSIONS = ("0.4.0", "1.0.0")
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")
COMMENT_TAG = "cni"

# The spec's well-known error codes, and ours (100 and up).
INCOMPATIBLE_VERSION = 1
BAD_ENVIRONMENT = 4
UNDECODABLE = 6
INVALID_CONFIG = 7
HOST_REFUSED = 100
APPLY_FAILED = 101
CHECK_FAILED = 102


@final
class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, version: str) -> dict[str, Any]:
        return {"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details}


@final
@dataclass(frozen=True, kw_only=True)
class Request:
    command: str
    container_id: str
    ifname: str
    config: Mapping[str, Any]

    @property
    def version(self) -> str:
        return str(self.config.get("cniVersion", CNI_VERSION))


@final
@dataclass(frozen=True, kw_only=True)
class HostLink:
    """What the kernel says of a host-side interface named in prevResult."""

    is_bridge: bool
    master: str | None
    """The bridge this interface is a port of, if any."""


def read_request(environ: Mapping[str, str], stdin: str) -> Request:
    """The CNI_* environment and the stdin config, checked. Raises CniError."""
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(BAD_ENVIRONMENT, f"CNI_COMMAND is {command!r}", f"expected one of {', '.join(COMMANDS)}")
    try:
        config = json.loads(stdin) if stdin.strip() else {}
    except json.JSONDecodeError as exc:
        raise CniError(UNDECODABLE, "the network configuration on stdin is not JSON", str(exc)) from None
    if not isinstance(config, dict):
        raise CniError(UNDECODABLE, "the network configuration on stdin is not a JSON object")
    if command == "VERSION":
        return Request(command=command, container_id="", ifname="", config=config)
    version = config.get("cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version!r} is not supported", f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    for key in ("CNI_CONTAINERID", "CNI_IFNAME"):
        if not environ.get(key):
            raise CniError(BAD_ENVIRONMENT, f"{key} is not set")
    if not isinstance(config.get("name"), str) or not config["name"]:
        raise CniError(INVALID_CONFIG, "the network configuration has no 'name'")
    if command in ("ADD", "CHECK") and not isinstance(config.get("prevResult"), dict):
        raise CniError(INVALID_CONFIG, f"{command} needs a prevResult: guestfence is a chained plugin",
                       "put it after an interface plugin (bridge, ptp) in the conflist")  # fmt: skip
    return Request(command=command, container_id=environ["CNI_CONTAINERID"], ifname=environ["CNI_IFNAME"], config=config)


def guest_name(network: str, container_id: str, ifname: str) -> str:
    """The guest's name: the same for ADD, CHECK and DEL of one attachment."""
    digest = hashlib.sha256(f"{network}\0{container_id}\0{ifname}".encode()).hexdigest()
    return f"cni-{digest[:20]}"


def owner_comment(request: Request) -> str:
    """Who made the guest (shown in the ruleset; ``registry`` replaces only its own)."""
    return f"{COMMENT_TAG} {request.config['name'][:40]} {request.container_id[:32]} {request.ifname[:15]}"


def guest_from_result(request: Request, host_link: Callable[[str], HostLink]) -> Guest:
    """The guest prevResult describes, with the config's policy. Raises CniError."""
    result = request.config["prevResult"]
    where = "prevResult"
    interfaces = result.get("interfaces")
    if not isinstance(interfaces, list) or not all(isinstance(i, dict) for i in interfaces):
        raise CniError(INVALID_CONFIG, f"{where} has no 'interfaces' list", "guestfence needs the interface plugin's result")
    mine = [n for n, i in enumerate(interfaces) if i.get("sandbox") and i.get("name") == request.ifname]
    if len(mine) != 1:
        raise CniError(INVALID_CONFIG, f"{where} names no container interface {request.ifname!r} (with a sandbox)")
    container = interfaces[mine[0]]
    ips = [ip for ip in result.get("ips") or [] if isinstance(ip, dict) and ip.get("interface", mine[0]) == mine[0]]
    addresses = [ip.get("address") for ip in ips]
    gateways = list(dict.fromkeys(ip["gateway"] for ip in ips if ip.get("gateway")))
    if not addresses:
        raise CniError(INVALID_CONFIG, f"{where} gives {request.ifname} no address", "the IPAM plugin must assign one")
    host_side = []
    for entry in interfaces:
        if entry.get("sandbox") or not isinstance(entry.get("name"), str):
            continue
        link = host_link(entry["name"])
        if not link.is_bridge:
            host_side.append((entry["name"], link))
    if len(host_side) != 1:
        found = ", ".join(name for name, _ in host_side) or "none"
        raise CniError(INVALID_CONFIG, f"{where} must name exactly one host-side interface of the container (found: {found})")
    iface, link = host_side[0]
    policy = _policy(request.config.get("policy"))
    try:
        return parse_guest(
            name=guest_name(request.config["name"], request.container_id, request.ifname),
            iface=iface,
            addresses=addresses,
            gateways=gateways,
            policy=policy,
            mac=container.get("mac") if link.master else None,
            bridge=link.master,
            comment=owner_comment(request),
            where=f"{where}: ",
        )
    except PolicyError as exc:
        raise CniError(INVALID_CONFIG, str(exc)) from None


def _policy(data: Any) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict) or set(data) - {"default", "allow", "deny"}:
        raise CniError(INVALID_CONFIG, "'policy' must be an object with 'default', 'allow' and 'deny'",
                       'e.g. {"default": "deny", "allow": ["tcp://@gateway:8080"], "deny": []}')  # fmt: skip
    allow, deny, default = data.get("allow", []), data.get("deny", []), data.get("default", "deny")
    if not all(isinstance(r, str) for r in (*allow, *deny)) or not isinstance(allow, list) or not isinstance(deny, list):
        raise CniError(INVALID_CONFIG, "'policy.allow' and 'policy.deny' must be lists of rules (strings)")
    if not isinstance(default, str):
        raise CniError(INVALID_CONFIG, "'policy.default' must be \"allow\" or \"deny\"")
    try:
        return parse_policy(allow=allow, deny=deny, default=default)
    except PolicyError as exc:
        raise CniError(INVALID_CONFIG, "invalid policy in the network configuration", str(exc)) from None


def host_link(name: str) -> HostLink:
    """Ask the kernel (this network namespace) about a host-side interface."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=name)
            if not found:
                raise CniError(INVALID_CONFIG, f"prevResult names host interface {name!r}, which does not exist here")
            link = ipr.get_links(found[0])[0]
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            master_index = link.get_attr("IFLA_MASTER")
            master = ipr.get_links(master_index)[0].get_attr("IFLA_IFNAME") if master_index else None
    except NetlinkError as exc:
        raise CniError(HOST_REFUSED, f"cannot inspect interface {name!r}", str(exc)) from None
    return HostLink(is_bridge=kind == "bridge", master=master)


def _state_dir(request: Request) -> str:
    explicit = request.config.get("stateDir")
    if explicit is not None and (not isinstance(explicit, str) or not explicit.startswith("/")):
        raise CniError(INVALID_CONFIG, "'stateDir' must be an absolute path")
    return state_dir(explicit)


def handle(request: Request, link: Callable[[str], HostLink] = host_link) -> dict[str, Any] | None:
    """Do what the request asks; the result to print, if any. Raises CniError."""
    if request.command == "VERSION":
        return {"cniVersion": CNI_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}
    directory = _state_dir(request)
    try:
        if request.command == "DEL":
            name = guest_name(request.config["name"], request.container_id, request.ifname)
            registry.unregister_where(lambda g: g.name == name, directory)
            return None
        guest = guest_from_result(request, link)
        if request.command == "ADD":
            registry.register(guest, directory, owner="cni")
            return {**request.config["prevResult"], "cniVersion": request.version}
        problems = registry.check(guest, directory)
        if problems:
            raise CniError(CHECK_FAILED, "; ".join(problems))
        return None
    except CniError:
        raise
    except (PolicyError, PlanError) as exc:
        raise CniError(INVALID_CONFIG, str(exc)) from None
    except HostError as exc:
        raise CniError(HOST_REFUSED, str(exc)) from None
    except GuestfenceError as exc:  # ApplyError: the previous state was kept
        raise CniError(APPLY_FAILED, str(exc)) from None


def main() -> NoReturn:
    stdin = sys.stdin.read()
    version = CNI_VERSION
    try:
        request = read_request(os.environ, stdin)
        version = request.version if request.command != "VERSION" else version
        result = handle(request)
    except CniError as err:
        json.dump(err.to_json(version), sys.stdout)
        sys.stdout.write("\n")
        print(f"guestfence-cni: {err.msg}" + (f" ({err.details})" if err.details else ""), file=sys.stderr)
        sys.exit(1)
    if result is not None:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    sys.exit(0)

