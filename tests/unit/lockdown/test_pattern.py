"""Interface patterns: names and the one nftables wildcard, a trailing '*'."""

from __future__ import annotations

import pytest

from guestfence.errors import PolicyErrorGroup, RuleSyntaxError
from guestfence.lockdown.pattern import parse_pattern, parse_patterns


@pytest.mark.parametrize(
    ("text", "matching", "not_matching"),
    [
        ("eth0.1", ["eth0.1"], ["eth0.10", "eth0", "xeth0.1"]),
        ("vlan*", ["vlan", "vlan7", "vlan.7"], ["vla", "avlan7"]),
        ("vmtap-abcd", ["vmtap-abcd"], ["vmtap-abcde"]),
        ("*", ["lo", "eth0"], []),
    ],
)
def test_matches_like_nftables(text: str, matching: list[str], not_matching: list[str]) -> None:
    pattern = parse_pattern(text)
    assert all(pattern.matches(name) for name in matching)
    assert not any(pattern.matches(name) for name in not_matching)


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("vl?n", 3, "'?' is not an nftables wildcard"),
        ("vm[0-9]", 3, "'[' is not an nftables wildcard"),
        ("a*b", 2, "'*' is a wildcard only at the end"),
        ("eth 0", 4, "' ' cannot appear in an interface name"),
        ("a/b", 2, "'/' cannot appear"),
        ("abcdefghijklmnop", 16, "too long"),
        ("", 1, "is not an interface name"),
        ("..", 1, "is not an interface name"),
    ],
)
def test_rejects_what_is_not_a_name_or_prefix_wildcard(text: str, column: int, message: str) -> None:
    with pytest.raises(RuleSyntaxError) as caught:
        parse_pattern(text)
    assert caught.value.column == column
    assert message in str(caught.value)


def test_reports_every_bad_pattern_at_once_and_drops_duplicates() -> None:
    with pytest.raises(PolicyErrorGroup) as caught:
        parse_patterns(["ok0", "a*b", "c?"])
    assert len(caught.value.errors) == 2
    assert [p.text for p in parse_patterns(["b", "a*", "b"])] == ["b", "a*"]
