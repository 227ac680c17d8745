"""unix:// rules: grammar, canonical text, errors with columns, and the decision's laws."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guestfence.errors import RuleSyntaxError
from guestfence.policy.decide import decide_unix
from guestfence.policy.grammar import parse_unix_destination, parse_unix_rule
from guestfence.policy.model import Action, Policy, UnixFlow, UnixRule, UnixScope

components = st.from_regex(r"[A-Za-z0-9_.+=-]{1,12}", fullmatch=True).filter(lambda c: c not in (".", ".."))
paths = st.lists(components, min_size=1, max_size=5).map(lambda parts: "/" + "/".join(parts))
names = st.from_regex(r"[!-)+-~]{1,20}", fullmatch=True)  # printable, no space, no '*'
unix_rules = st.one_of(
    st.builds(lambda p: UnixRule(scope=UnixScope.PATH, target=p), paths),
    st.builds(lambda p: UnixRule(scope=UnixScope.TREE, target=p), st.one_of(paths, st.just("/"))),
    st.builds(lambda n: UnixRule(scope=UnixScope.ABSTRACT, target=n), names),
    st.just(UnixRule(scope=UnixScope.ANY_ABSTRACT)),
    st.just(UnixRule(scope=UnixScope.ANY)),
)


@given(unix_rules)
def test_formatting_then_parsing_gives_the_same_unix_rule(rule: UnixRule) -> None:
    assert parse_unix_rule(str(rule)) == rule


@given(st.text(alphabet="unix:/@*.ab "))
def test_fuzz_unix_text_raises_only_the_parsers_error(text: str) -> None:
    try:
        parse_unix_rule("unix://" + text)
    except RuleSyntaxError:
        pass


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("unix://", 7, "missing socket after unix://"),
        ("unix://run/docker.sock", 8, "relative socket path 'run/docker.sock'"),
        ("unix:///run//x", 13, "empty component in socket path"),
        ("unix:///run/", 12, "trailing slash in socket path"),
        ("unix:///run/../x", 13, "'..' component in socket path"),
        ("unix:///r*n/x", 10, "'*' can only be the whole last component"),
        ("unix://@", 8, "missing abstract socket name"),
        ("unix://@a*", 10, "'*' inside an abstract name"),
        ("unix:///", 8, "'/' is a directory, not a socket"),
        ("unix:///run/x y", 14, "unexpected whitespace"),
    ],
)
def test_bad_unix_rules_name_the_column_and_what_was_expected(text: str, column: int, message: str) -> None:
    with pytest.raises(RuleSyntaxError) as caught:
        parse_unix_rule(text)
    assert caught.value.column == column
    assert message in caught.value.message


def test_a_destination_names_one_socket() -> None:
    assert parse_unix_destination("unix:///run/docker.sock") == UnixFlow(path="/run/docker.sock")
    assert parse_unix_destination("unix://@/tmp/.X11-unix/X0") == UnixFlow(abstract="/tmp/.X11-unix/X0")
    with pytest.raises(RuleSyntaxError, match="not '\\*'"):
        parse_unix_destination("unix:///run/*")


POLICY = Policy.parse(
    allow=["unix:///run/user/*", "unix:///tmp/echo.sock", "unix://@allowed"],
    deny=["unix:///run/user/0/*"],
)


@pytest.mark.parametrize(
    ("destination", "decided_by"),
    [
        ("unix:///tmp/echo.sock", "allow unix:///tmp/echo.sock"),
        ("unix:///tmp/echo.sock2", "default deny"),
        ("unix:///run/user/1000/bus", "allow unix:///run/user/*"),
        ("unix:///run/user", "default deny"),  # the directory itself is not below itself
        ("unix:///run/user/0/bus", "deny unix:///run/user/0/*"),  # deny beats allow
        ("unix://@allowed", "allow unix://@allowed"),
        ("unix://@allowed2", "default deny"),
        ("unix:///allowed", "default deny"),  # a path is never an abstract name
    ],
)
def test_deny_beats_allow_beats_the_default(destination: str, decided_by: str) -> None:
    assert decide_unix(POLICY, parse_unix_destination(destination)).decided_by == decided_by


def test_bare_host_and_star_stand_for_every_unix_socket() -> None:
    denied = Policy.parse(default="allow", deny=["@host"])
    assert not decide_unix(denied, UnixFlow(path="/run/docker.sock")).allowed
    assert not decide_unix(denied, UnixFlow(abstract="x")).allowed
    assert Policy.parse(allow=["*"]).allow_unix == (UnixRule(scope=UnixScope.ANY),)
    explicit = Policy.parse(default="allow", deny=["tcp://@host:*"])
    assert decide_unix(explicit, UnixFlow(path="/run/docker.sock")).allowed


def test_scopes_match_what_they_say() -> None:
    every_abstract = Policy.of(default=Action.DENY, allow=[UnixRule(scope=UnixScope.ANY_ABSTRACT)])
    assert decide_unix(every_abstract, UnixFlow(abstract="a")).allowed
    assert not decide_unix(every_abstract, UnixFlow(path="/a")).allowed
    every_path = Policy.parse(allow=["unix:///*"])
    assert decide_unix(every_path, UnixFlow(path="/a/b")).allowed
    assert not decide_unix(every_path, UnixFlow(abstract="a")).allowed
