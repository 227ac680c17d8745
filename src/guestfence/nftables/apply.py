"""The only caller of libnftables.

Every change is one ``json_cmd`` batch: the kernel applies it whole or not
at all, so on failure the previous ruleset stays and the error carries
libnftables' own message. Callers build the commands as JSON data (never
ruleset text), so nothing a user types can be parsed as a rule.

``apply_nft`` and ``list_ruleset`` take the handle as an argument so tests
of the callers can pass a recorder; ``open_nft`` makes the real one.
"""

from __future__ import annotations

from typing import Any, Protocol

from guestfence.errors import ApplyError, HostError

Command = dict[str, Any]


class NftHandle(Protocol):
    def json_cmd(self, json_root: dict[str, Any]) -> tuple[int, Any, str]: ...
    def set_dry_run(self, onoff: bool) -> bool: ...


def open_nft() -> NftHandle:
    """A libnftables context with JSON output. Raises HostError if unusable."""
    try:
        import nftables
    except ImportError as exc:
        raise HostError(
            "the libnftables Python binding is missing (apt-get install python3-nftables; run `make install`)"
        ) from exc
    try:
        nft = nftables.Nftables()
    except OSError as exc:
        raise HostError(f"cannot load libnftables: {exc}") from exc
    nft.set_json_output(True)
    nft.set_handle_output(True)
    return nft


def apply_nft(nft: NftHandle, commands: list[Command], *, step: str, check: bool = False) -> None:
    """Run ``commands`` as one transaction. ``check`` asks the kernel to
    validate without committing. Raises ApplyError with libnftables' text."""
    if not commands:
        return
    if check:
        nft.set_dry_run(True)
    try:
        rc, _, error = nft.json_cmd({"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]})
    finally:
        if check:
            nft.set_dry_run(False)
    if rc != 0:
        raise ApplyError("nftables", step, (error or f"libnftables returned {rc}").strip())


def list_ruleset(nft: NftHandle, what: Command) -> list[Command]:
    """The JSON objects of a ``list`` command, e.g. ``{"table": {"family": "inet",
    "name": "guestfence"}}``; [] when the object does not exist."""
    rc, output, error = nft.json_cmd({"nftables": [{"list": what}]})
    if rc != 0:
        if "No such file or directory" in (error or ""):
            return []
        if "Operation not permitted" in (error or ""):
            raise HostError("reading nftables needs CAP_NET_ADMIN: run as root")
        raise ApplyError("nftables", "list", (error or f"libnftables returned {rc}").strip())
    items = output.get("nftables", []) if isinstance(output, dict) else []
    return [item for item in items if "metainfo" not in item]
