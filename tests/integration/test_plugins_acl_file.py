"""acl_file: the ACL file's rules parsed, then enforced on real clients while loaded only."""

from __future__ import annotations

from pathlib import Path

import pytest
from plugin_support import app_config, client, running_app, suback
from test_core_support import payloads, until_sentinel

from broker.core.topics import topic_matches
from broker.plugins.acl_file import READ, WRITE, filter_within, parse_acl

ACL = """\
# anonymous clients
topic read public/#

user admin
topic readwrite #
topic read $SYS/#

user alice
topic alice/#
topic read shared/+
topic deny alice/secret

pattern write clients/%c/out
pattern read users/%u/#
"""

SUBACK_FAILURE = 0x80


def test_parse_and_check_rules() -> None:
    acl = parse_acl(ACL)
    # anonymous: only the lines before the first `user`
    assert acl.check("anon", None, READ, "public/a/b")
    assert not acl.check("anon", None, WRITE, "public/a")
    # user sections; no access word = readwrite; deny wins over a wider allow
    assert acl.check("c", "alice", WRITE, "alice/x") and acl.check("c", "alice", READ, "alice/x")
    assert not acl.check("c", "alice", WRITE, "alice/secret")
    assert not acl.check("c", "alice", READ, "public/a")  # anonymous lines are not hers
    assert acl.check("c", "alice", READ, "shared/x") and not acl.check(
        "c", "alice", WRITE, "shared/x"
    )
    # a subscription filter matches only the same or a wider wildcard
    assert acl.check("c", "alice", READ, "shared/+")
    assert not acl.check("c", "alice", READ, "shared/#")
    assert acl.check("c", "alice", READ, "alice/+/x") and acl.check("c", "alice", READ, "alice/#")
    assert not acl.check("c", "alice", READ, "+/x")
    # patterns apply to every client, with %c / %u substituted
    assert acl.check("dev1", None, WRITE, "clients/dev1/out")
    assert not acl.check("dev1", None, WRITE, "clients/dev2/out")
    assert acl.check("x", "bob", READ, "users/bob/inbox")
    assert not acl.check("x", None, READ, "users/undefined/inbox")  # %u needs a username
    assert not acl.check("a+b", None, WRITE, "clients/a+b/out")  # wildcard in %c: skipped
    # default deny
    assert not acl.check("c", "nobody", READ, "anything")


@pytest.mark.parametrize(
    ("rule", "sub", "expected"),
    [
        ("a/+", "a/+", True),
        ("a/+", "a/#", False),
        ("a/#", "a/b/#", True),
        ("a/#", "a", True),
        ("a", "a/#", False),
        ("a/b", "a/+", False),
        ("#", "$SYS/x", False),
        ("$SYS/#", "$SYS/+/x", True),
        ("+/+", "x/+", True),
    ],
)
def test_filter_within(rule: str, sub: str, expected: bool) -> None:
    assert filter_within(rule, sub) is expected


@pytest.mark.parametrize("topic", ["a", "a/b", "a/b/c", "$SYS/x", "/a", "a//b"])
@pytest.mark.parametrize("rule", ["a/#", "a/+", "+/b", "#", "a/b", "$SYS/#", "+//b", "+/+/+"])
def test_filter_within_is_topic_matches_for_topic_names(rule: str, topic: str) -> None:
    assert filter_within(rule, topic) == topic_matches(rule, topic)


@pytest.mark.parametrize(
    "text", ["topic", "user", "topic read", "topic read a/#/b", "frobnicate x", "pattern deny"]
)
def test_parse_errors_name_the_line(text: str) -> None:
    with pytest.raises(ValueError, match=r"acl.txt:2: "):
        parse_acl("# first\n" + text + "\n", "acl.txt")


async def test_enforced_while_loaded_then_not(tmp_path: Path) -> None:
    acl_path = tmp_path / "acl"
    acl_path.write_text(ACL)
    cfg = app_config(tmp_path, acl_file=str(acl_path))
    async with running_app(cfg) as app:
        assert app.plugins.get("acl_file") is not None
        async with (
            client(app, "admin", username="admin") as admin,
            client(app, "alice-1", username="alice") as alice,
        ):
            assert await suback(admin, "#") == 0
            # allowed publish arrives; denied ones are dropped (3.1.1 cannot say why)
            await alice.publish("alice/x", b"ok", qos=1)
            await alice.publish("alice/secret", b"denied", qos=1)
            await alice.publish("bob/x", b"denied", qos=1)
            got = await until_sentinel(admin, admin, "admin/sentinel", qos=1)
            assert [(m.topic.value, m.payload) for m in got] == [("alice/x", b"ok")]
            # subscribe: read access to the filter
            assert await suback(alice, "shared/+") == 0
            assert await suback(alice, "shared/#") == SUBACK_FAILURE
            assert await suback(alice, "bob/#") == SUBACK_FAILURE

            app.plugins.unload("acl_file")
            assert app.broker.hooks.authorize == []
            assert await suback(alice, "bob/#") == 0
            await alice.publish("alice/secret", b"now allowed", qos=1)
            got = await until_sentinel(admin, admin, "admin/sentinel", qos=1)
            assert payloads(got) == [b"now allowed"]


async def test_delayed_topic_checked_against_its_target(tmp_path: Path) -> None:
    acl_path = tmp_path / "acl"
    acl_path.write_text("user alice\ntopic write alice/#\n")
    cfg = app_config(
        tmp_path, acl_file=str(acl_path), plugins={"delayed_publish": {"enabled": True}}
    )
    async with running_app(cfg) as app, client(app, "alice-2", username="alice") as alice:
        delayed = app.plugins.get("delayed_publish")
        assert delayed is not None
        await alice.publish("$delayed/100/bob/x", b"no", qos=1)
        await alice.publish("$delayed/100/alice/x", b"yes", qos=1)
        assert getattr(delayed, "pending", None) == 1
