"""The retained store against a model dict and the naive `topic_matches` oracle."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.retained import RetainedStore
from broker.core.topics import topic_matches

LEVELS = ["a", "b", "", "$x"]

topics_st = st.lists(st.sampled_from(LEVELS), min_size=1, max_size=4).map("/".join).filter(bool)


@st.composite
def filters(draw: st.DrawFn) -> str:
    body = draw(st.lists(st.sampled_from([*LEVELS, "+"]), min_size=0, max_size=4))
    if not body or draw(st.booleans()):
        body.append("#")
    filt = "/".join(body)
    return filt or "#"  # [""] joins to "", which is not a filter


@settings(max_examples=300, deadline=None)
@given(
    stored=st.dictionaries(topics_st, st.integers(0, 99), max_size=20),
    filts=st.lists(filters(), min_size=1, max_size=8),
)
def test_match_equals_naive_filtering(stored: dict[str, int], filts: list[str]) -> None:
    store: RetainedStore[int] = RetainedStore()
    for topic, msg in stored.items():
        assert store.set(topic, msg)
    for filt in filts:
        expected = sorted((t, m) for t, m in stored.items() if topic_matches(filt, t))
        assert sorted(store.match(filt)) == expected


ops_st = st.lists(
    st.tuples(st.sampled_from(["set", "delete"]), topics_st, st.integers(0, 9)), max_size=40
)


@settings(max_examples=300, deadline=None)
@given(ops=ops_st)
def test_set_replace_delete_against_model(ops: list[tuple[str, str, int]]) -> None:
    store: RetainedStore[int] = RetainedStore()
    model: dict[str, int] = {}
    for op, topic, msg in ops:
        if op == "set":
            assert store.set(topic, msg)
            model[topic] = msg
        else:
            assert store.delete(topic) == (topic in model)
            model.pop(topic, None)
        assert len(store) == len(model)
        assert store.get(topic) == model.get(topic)
        assert sorted(store) == sorted(model.items())
        assert sorted(store.topics()) == sorted(model)
    for topic in list(model):
        assert store.delete(topic)
    assert len(store) == 0
    assert store._is_empty_tree()


def test_hash_matches_parent_and_dollar_rule() -> None:
    store: RetainedStore[str] = RetainedStore()
    for topic in ["a", "a/b", "a/b/c", "$SYS/x", "/a", "b/$x"]:
        store.set(topic, topic)
    assert sorted(t for t, _ in store.match("a/#")) == ["a", "a/b", "a/b/c"]
    assert sorted(t for t, _ in store.match("#")) == ["/a", "a", "a/b", "a/b/c", "b/$x"]
    assert [t for t, _ in store.match("$SYS/#")] == ["$SYS/x"]
    assert sorted(t for t, _ in store.match("+/+")) == ["/a", "a/b", "b/$x"]
    assert store.match("+/x") == []
    assert sorted(t for t, _ in store.match("a/+/#")) == ["a/b", "a/b/c"]


def test_delete_prunes_only_empty_branches() -> None:
    store: RetainedStore[int] = RetainedStore()
    store.set("a/b/c", 1)
    store.set("a", 2)
    assert store.delete("a/b/c")
    assert not store.delete("a/b/c")
    assert not store.delete("a/b")  # an intermediate node holds no message
    assert store.get("a") == 2
    assert store._root.children["a"].children == {}
    assert store.delete("a")
    assert store._is_empty_tree()


def test_max_messages_limits_new_topics_only() -> None:
    store: RetainedStore[int] = RetainedStore(max_messages=2)
    assert store.set("a", 1)
    assert store.set("b/c", 2)
    assert not store.set("b/d", 3)  # new topic, store full
    assert not store.set("b", 3)  # an existing node but no message there: still new
    assert store.set("a", 10)  # replace is always allowed
    assert store.get("a") == 10 and store.get("b/d") is None and len(store) == 2
    assert "d" not in store._root.children["b"].children  # refused sets leave no nodes
    store.delete("a")
    assert store.set("b/d", 3)
