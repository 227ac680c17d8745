"""Policy files: sections, named policies, and errors placed at file:line:column."""

from __future__ import annotations

from pathlib import Path

import pytest

from guestfence.config import format_config, load_config, load_policy, parse_config, split_policy_spec
from guestfence.errors import ConfigError, PolicyError, PolicyErrorGroup
from guestfence.policy.model import Action

FILE = """\
default = "deny"
allow = ["tcp://@gateway:8080", "icmp://*"]

[policy.web]
default = "allow"
deny = ["tcp://@host:*"]
"""


def test_top_level_is_the_unnamed_policy_and_tables_are_named() -> None:
    config = parse_config(FILE, source="p.toml")
    assert [str(r) for r in config.policy(None).allow] == ["icmp://*", "tcp://@gateway:8080"]
    web = config.policy("web")
    assert web.default is Action.ALLOW and [str(r) for r in web.deny] == ["tcp://@host:*"]


def test_policy_spec_selects_a_named_policy(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(FILE)
    assert split_policy_spec(f"{path}:web") == (str(path), "web")
    assert load_policy(f"{path}:web").default is Action.ALLOW
    with pytest.raises(ConfigError, match="no policy named 'nope' \\(available: web\\)"):
        load_policy(f"{path}:nope")


def test_only_named_policies_need_a_name_when_several() -> None:
    config = parse_config('[policy.a]\nallow=[]\n[policy.b]\nallow=[]\n', source="p.toml")
    with pytest.raises(ConfigError, match="choose one with p.toml:NAME \\(available: a, b\\)"):
        config.policy(None)


def test_reports_every_problem_with_its_position() -> None:
    text = 'default = "deny"\nallow = ["tcp://ok:1", "udp://x:0"]\ncolour = 1\n[policy.w]\ndeny = ["icmp://*:1"]\n'
    with pytest.raises(PolicyErrorGroup) as caught:
        parse_config(text, source="p.toml")
    messages = [str(e).splitlines()[0] for e in caught.value.errors]
    assert messages == [
        "p.toml:3: unknown key 'colour' (expected default, allow, deny, guest_pattern, [policy.NAME], [[guest]] or [lockdown])",
        "p.toml:2:33: port 0 is out of range (expected 1-65535)",
        "p.toml:5:18: icmp rules take no port",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("allow = [", "p.toml: invalid TOML"),
        ("a = 1\nb = = 2", "p.toml:2: invalid TOML"),
        ('allow = "tcp://x:1"', "p.toml:1: 'allow' must be a list of rule strings"),
        ('default = "maybe"', "unknown default 'maybe' (expected 'allow' or 'deny')"),
        ("policy = 3", "'policy' must be a table of named policies"),
    ],
)
def test_structural_errors_are_policy_errors(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_config(text, source="p.toml")
    assert message in str(caught.value)


def test_unreadable_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "missing.toml")


def test_formatted_config_parses_back_to_the_same_policies() -> None:
    config = parse_config(FILE, source="p.toml")
    again = parse_config(format_config(config), source="again.toml")
    assert dict(again.policies) == dict(config.policies)


def test_lockdown_section_lists_interface_patterns_with_positions() -> None:
    config = parse_config('[lockdown]\ninterfaces = ["eth0.1", "vlan*", "eth0.1"]\n', source="p.toml")
    assert config.lockdown is not None and not config.lockdown.force
    assert [p.text for p in config.lockdown.interfaces] == ["eth0.1", "vlan*"]
    assert parse_config('allow = []\n', source="p.toml").lockdown is None
    with pytest.raises(PolicyError) as caught:
        parse_config('[lockdown]\ninterfaces = ["vl?n"]\nforce = "yes"\n', source="p.toml")
    assert "p.toml:2:18: '?' is not an nftables wildcard" in str(caught.value)
    assert "p.toml:3: 'force' in [lockdown] must be true or false" in str(caught.value)


def test_guests_of_one_policy_text_share_one_policy_and_a_bad_rule_is_reported_for_each() -> None:
    def guests(*allows: str) -> str:
        return "\n".join(f'[[guest]]\nname = "g{i}"\niface = "vmtap-{i}"\naddress = "192.0.2.{i + 2}/32"\nnet_allow = ["{allow}"]\n'
                         for i, allow in enumerate(allows))  # fmt: skip

    a, b, c = parse_config(guests("tcp://@gateway:8080", "tcp://@gateway:8080", "udp://@gateway:53"), source="p.toml").guests
    assert a.policy is b.policy and a.policy is not c.policy and [str(r) for r in c.policy.allow] == ["udp://@gateway:53"]
    with pytest.raises(PolicyErrorGroup) as raised:
        parse_config(guests("tcp://@gateway:0", "tcp://@gateway:0"), source="p.toml")
    assert len(raised.value.errors) == 2, "each guest's bad rule is reported, not only the first"
