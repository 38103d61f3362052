"""The subscription trie against a model dict and the naive `topic_matches` oracle."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.shared import SharedGroupPicker
from broker.core.topics import parse_shared, topic_matches
from broker.core.trie import MATCH_CACHE_SIZE, SubscriptionTrie

LEVELS = ["a", "b", "", "$x"]
KEYS = ["c1", "c2", "c3"]
GROUPS = ["g1", "g2"]

levels_st = st.sampled_from(LEVELS)


@st.composite
def plain_filters(draw: st.DrawFn) -> str:
    body = draw(st.lists(st.sampled_from([*LEVELS, "+"]), min_size=0, max_size=4))
    if not body or draw(st.booleans()):
        body.append("#")
    filt = "/".join(body)
    return filt or "#"  # [""] joins to "", which is not a filter


@st.composite
def any_filters(draw: st.DrawFn) -> str:
    filt = draw(plain_filters())
    if draw(st.integers(0, 3)) == 0:
        return f"$share/{draw(st.sampled_from(GROUPS))}/{filt}"
    return filt


topics_st = st.lists(levels_st, min_size=1, max_size=4).map("/".join).filter(bool)

Model = dict[tuple[str, str], int]


def build(subs: list[tuple[str, str, int]]) -> tuple[SubscriptionTrie[int], Model]:
    trie: SubscriptionTrie[int] = SubscriptionTrie()
    model: Model = {}
    for filt, key, value in subs:
        trie.add(filt, key, value)
        model[(filt, key)] = value
    return trie, model


def expected_normal(model: Model, topic: str) -> list[tuple[str, int]]:
    return sorted(
        (key, value)
        for (filt, key), value in model.items()
        if parse_shared(filt)[0] is None and topic_matches(filt, topic)
    )


def expected_shared(model: Model, topic: str) -> dict[tuple[str, str], dict[str, int]]:
    out: dict[tuple[str, str], dict[str, int]] = {}
    for (filt, key), value in model.items():
        group, real = parse_shared(filt)
        if group is not None and topic_matches(real, topic):
            out.setdefault((group, real), {})[key] = value
    return out


def real_filters(model: Model) -> set[str]:
    return {parse_shared(filt)[1] for filt, _ in model}


subs_st = st.lists(st.tuples(any_filters(), st.sampled_from(KEYS), st.integers(0, 9)), max_size=25)


@settings(max_examples=300, deadline=None)
@given(subs=subs_st, topics=st.lists(topics_st, min_size=1, max_size=8))
def test_match_equals_naive_matcher(subs: list[tuple[str, str, int]], topics: list[str]) -> None:
    trie, model = build(subs)
    for topic in topics:
        assert sorted(trie.match(topic)) == expected_normal(model, topic)
        shared = trie.match_shared(topic)
        got = {(group, real): dict(members) for group, real, members in shared}
        assert len(got) == len(shared)  # one entry per (group, real filter)
        assert got == expected_shared(model, topic)
        normal_all, shared_all = trie.match_all(topic)
        assert sorted(normal_all) == expected_normal(model, topic)
        assert {(g, r): dict(m) for g, r, m in shared_all} == got


ops_st = st.lists(
    st.tuples(st.booleans(), any_filters(), st.sampled_from(KEYS), st.integers(0, 9)),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(ops=ops_st, topics=st.lists(topics_st, min_size=1, max_size=4))
def test_cached_matches_follow_every_change(
    ops: list[tuple[bool, str, str, int]], topics: list[str]
) -> None:
    """`match_all` remembers answers per topic; any add (a new value too) or remove forgets."""
    trie: SubscriptionTrie[int] = SubscriptionTrie()
    model: Model = {}
    for is_add, filt, key, value in ops:
        for topic in topics:  # fill the cache before each change
            trie.match_all(topic)
        if is_add:
            trie.add(filt, key, value)
            model[(filt, key)] = value
        else:
            trie.remove(filt, key)
            model.pop((filt, key), None)
        for topic in topics:
            normal, shared = trie.match_all(topic)
            assert sorted(normal) == expected_normal(model, topic)
            got = {(g, r): dict(m) for g, r, m in shared}
            assert got == expected_shared(model, topic)


@settings(max_examples=300, deadline=None)
@given(ops=ops_st, topics=st.lists(topics_st, min_size=1, max_size=6))
def test_a_change_forgets_only_the_topics_its_filter_matches(
    ops: list[tuple[bool, str, str, int]], topics: list[str]
) -> None:
    """The router keeps exact filters in a dict and caches wildcard answers per topic; a
    subscribe, re-subscribe or unsubscribe of filter F keeps every cached topic F cannot match,
    and the cache indexes stay consistent with each other."""
    trie: SubscriptionTrie[int] = SubscriptionTrie()
    for is_add, filt, key, value in ops:
        for topic in topics:
            trie.match_all(topic)
        before = set(trie._cache)
        real = parse_shared(filt)[1]
        if is_add:
            trie.add(filt, key, value)
        else:
            trie.remove(filt, key)
        kept = {t for t in before if not topic_matches(real, t)}
        assert kept <= set(trie._cache)
        assert set(trie._cache) == set(trie._cache_nodes) == set(trie._cached_topics.topics())
        for topic, nodes in trie._cache_nodes.items():
            assert all(topic in node.topics for node in nodes)
    assert set(trie._exact) == {
        parse_shared(f)[1] for f in trie.filters() if "+" not in f and "#" not in f
    }


def brute_force(model: Model, topic: str) -> tuple[list[tuple[str, int]], list[tuple]]:
    """Every stored filter tried against the topic with the reference matcher."""
    shared = expected_shared(model, topic)
    return expected_normal(model, topic), sorted(
        (g, r, sorted(m.items())) for (g, r), m in shared.items()
    )


def as_sorted(answer: tuple[list[tuple[str, int]], list]) -> tuple[list, list]:
    normal, shared = answer
    return sorted(normal), sorted((g, r, sorted(m.items())) for g, r, m in shared)


def check_cache_indexes(trie: SubscriptionTrie[int]) -> None:
    """The cache, its node lists, its topic trie and every node's `topics` agree."""
    assert set(trie._cache) == set(trie._cache_nodes) == set(trie._cached_topics.topics())
    assert len(trie._cache) <= trie._cache_size and len(trie._seen) <= trie._cache_size
    held: dict[int, set[str]] = {}
    for topic, nodes in trie._cache_nodes.items():
        for node in nodes:
            held.setdefault(id(node), set()).add(topic)
            assert topic in node.topics
    stack = list(trie._root.children.values())
    while stack:
        node = stack.pop()
        assert node.topics == held.get(id(node), set())  # no stale back-reference
        assert node.plus is node.children.get("+") and node.hash is node.children.get("#")
        stack.extend(node.children.values())
    live: set[int] = set()
    live_children: set[int] = set()
    stack = [trie._root]
    while stack:
        node = stack.pop()
        live.add(id(node))
        live_children.add(id(node.children))
        stack.extend(node.children.values())
    for probes, fixed in trie._frontier.values():
        assert all(id(node) in live for node in fixed)  # no pruned node
        assert all(id(children) in live_children for children in probes)
        # The fixed part matches whatever the last level: only nodes with subscribers.
        assert all(node.count for node in fixed)


publish_topics_st = st.sampled_from(["a", "b", "a/b", "a/", "/a", "", "a//b", "$x", "$x/a", "b/$x"])
steps_st = st.lists(
    st.one_of(
        st.tuples(st.just("sub"), any_filters(), st.sampled_from(KEYS), st.integers(0, 9)),
        st.tuples(st.just("unsub"), any_filters(), st.sampled_from(KEYS), st.just(0)),
        st.tuples(
            st.just("pub"), topics_st | publish_topics_st.filter(bool), st.just(""), st.just(0)
        ),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(steps=steps_st, cache_size=st.integers(1, 4))
def test_cached_equals_uncached_equals_brute_force(
    steps: list[tuple[str, str, str, int]], cache_size: int
) -> None:
    """After any sequence of subscribes, unsubscribes and publishes (topics repeating, a cache
    of 1-4 topics so that the doorkeeper, evictions and invalidations all happen): the cached
    answer, the uncached walk and every filter tried by the reference matcher agree, for
    `$`-topics (MQTT-4.7.2-1), `$share/` and `$queue/` groups, `+` on empty levels and `#`
    matching its parent level (MQTT-4.7.1-2/3)."""
    trie: SubscriptionTrie[int] = SubscriptionTrie(cache_size=cache_size)
    model: Model = {}
    for kind, arg, key, value in steps:
        if kind == "sub":
            trie.add(arg, key, value)
            model[(arg, key)] = value
        elif kind == "unsub":
            trie.remove(arg, key)
            model.pop((arg, key), None)
        else:
            for _ in range(2):  # the first sighting passes the doorkeeper, the second fills
                cached = as_sorted(trie.match_all(arg))
                uncached = as_sorted((trie.match(arg), trie.match_shared(arg)))
                assert cached == uncached == brute_force(model, arg)
                # From the parent's remembered frontier, or by a full walk: the same nodes.
                walked = trie._walk(arg.split("/"), arg.startswith("$"), None)
                assert sorted(map(id, trie._match_wild(arg))) == sorted(map(id, walked))
        check_cache_indexes(trie)


def test_a_new_node_on_a_parent_path_reaches_topics_below_that_parent() -> None:
    """A parent's remembered frontier is forgotten when a wildcard node is created or pruned:
    `a/b/+` creates the node `a/b` that topics under `a/b` must now pass through."""
    trie: SubscriptionTrie[int] = SubscriptionTrie()
    trie.add("a/+/x", "k1", 1)
    for _ in range(3):
        assert trie.match_all("a/b/x") == ([("k1", 1)], [])
    assert "a/b" in trie._frontier
    trie.add("a/b/+", "k2", 2)
    assert sorted(trie.match_all("a/b/x")[0]) == [("k1", 1), ("k2", 2)]
    assert sorted(trie.match("a/b/y")) == [("k2", 2)]
    trie.remove("a/b/+", "k2")  # pruned: no frontier may still hold `a/b`
    assert trie.match_all("a/b/x") == ([("k1", 1)], []) and trie.match("a/b/y") == []


def test_exact_filters_are_not_in_the_trie() -> None:
    trie: SubscriptionTrie[int] = SubscriptionTrie()
    trie.add("a/b", "c1", 1)
    trie.add("$share/g/a/b", "c2", 2)
    assert not trie._root.children and set(trie._exact) == {"a/b"}
    trie.add("a/+", "c3", 3)
    assert set(trie._root.children) == {"a"}
    normal, shared = trie.match_all("a/b")
    assert sorted(normal) == [("c1", 1), ("c3", 3)]
    assert [(g, f, dict(m)) for g, f, m in shared] == [("g", "a/b", {"c2": 2})]


def test_resubscribe_keeps_unrelated_cached_topics() -> None:
    trie: SubscriptionTrie[int] = SubscriptionTrie()
    trie.add("x/+", "c1", 1)
    trie.add("y/#", "c2", 2)
    trie.add("z", "c3", 3)
    for topic in ("x/1", "y/1", "z", "w") * 2:  # remembered from the second sighting on
        trie.match_all(topic)
    trie.add("x/+", "c1", 4)  # a re-subscribe with new options
    assert set(trie._cache) == {"y/1", "z", "w"}
    assert trie.match_all("x/1")[0] == [("c1", 4)]
    trie.add("z", "c4", 5)  # exact filters never touch the wildcard cache
    trie.add("q/+", "c5", 6)  # a new wildcard filter forgets only what it matches
    assert set(trie._cache) == {"x/1", "y/1", "z", "w"}
    trie.add("+", "c6", 7)
    assert set(trie._cache) == {"x/1", "y/1"}
    assert sorted(trie.match_all("z")[0]) == [("c3", 3), ("c4", 5), ("c6", 7)]


def test_match_cache_is_bounded() -> None:
    """A full cache keeps its topics (their hits go on) and declines new ones; once it has
    declined as many as it holds, it forgets everything at once and fills again."""
    size = MATCH_CACHE_SIZE
    trie: SubscriptionTrie[int] = SubscriptionTrie()
    trie.add("a/#", "k", 1)
    for i in range(size * 2 + 5):
        assert trie.match_all(f"a/{i}")[0] == [("k", 1)]
        assert trie.match_all(f"a/{i}")[0] == [("k", 1)]
        if i == size * 2 - 2:  # the first `size` topics were kept, `size - 1` declined
            assert set(trie._cache) == {f"a/{j}" for j in range(size)}
    # The `size`-th it would have declined cleared the cache, and it and the rest were kept.
    assert set(trie._cache) == {f"a/{j}" for j in range(size * 2 - 1, size * 2 + 5)}
    assert len(trie._cached_topics) == 6
    assert trie._root.children["a"].children["#"].topics == set(trie._cache)


def test_one_off_topics_are_answered_but_not_remembered() -> None:
    """A topic is remembered on its second sighting within the last `cache_size` new topics, so
    a stream of always-new topics pays the walk only; the doorkeeper itself stays bounded."""
    trie: SubscriptionTrie[int] = SubscriptionTrie(cache_size=8)
    trie.add("a/+", "k", 1)
    for i in range(100):
        assert trie.match_all(f"a/{i}") == ([("k", 1)], [])
        assert trie.match_all(f"b/{i}") == ([], [])
    assert not trie._cache and len(trie._seen) <= 8
    trie.match_all("a/x")
    assert "a/x" not in trie._cache
    assert trie.match_all("a/x") == ([("k", 1)], [])
    assert "a/x" in trie._cache and "a/x" not in trie._seen
    assert trie.match_all("a/x") is trie._cache["a/x"]


@settings(max_examples=300, deadline=None)
@given(ops=ops_st)
def test_add_remove_against_model(ops: list[tuple[bool, str, str, int]]) -> None:
    trie: SubscriptionTrie[int] = SubscriptionTrie()
    model: Model = {}
    for is_add, filt, key, value in ops:
        real = parse_shared(filt)[1]
        had_real = real in real_filters(model)
        if is_add:
            first = trie.add(filt, key, value)
            model[(filt, key)] = value
            assert first == (not had_real)
        else:
            removed, last = trie.remove(filt, key)
            assert removed == ((filt, key) in model)
            model.pop((filt, key), None)
            assert last == (removed and real not in real_filters(model))
        assert len(trie) == len(model)
        assert sorted(trie.filters()) == sorted(real_filters(model))
        assert trie.get(filt, key) == model.get((filt, key))
        assert trie.has_filter(real) == (real in real_filters(model))
    # Remove everything, in a shuffled order: nothing may be left behind.
    items = list(model)
    random.Random(len(items)).shuffle(items)
    for filt, key in items:
        assert trie.remove(filt, key)[0]
    assert len(trie) == 0
    assert list(trie.filters()) == []
    assert trie._is_empty_tree()


def test_add_replaces_value_and_reports_first_only() -> None:
    trie: SubscriptionTrie[int] = SubscriptionTrie()
    assert trie.add("a/+", "c1", 1) is True
    assert trie.add("a/+", "c1", 2) is False  # replace, not a new subscriber
    assert trie.get("a/+", "c1") == 2
    assert trie.add("$share/g/a/+", "c2", 3) is False  # same real filter already routed
    assert trie.add("$share/g/b", "c2", 3) is True  # a shared group's first member routes too
    assert len(trie) == 3
    assert trie.remove("a/+", "c1") == (True, False)  # the shared member keeps the route
    assert trie.remove("a/+", "c1") == (False, False)
    assert trie.remove("$share/g/a/+", "c2") == (True, True)
    assert trie.remove("nope/x", "c1") == (False, False)


def test_overlapping_filters_yield_one_entry_each() -> None:
    trie: SubscriptionTrie[str] = SubscriptionTrie()
    trie.add("a/#", "c1", "wide")
    trie.add("a/b", "c1", "exact")
    trie.add("+/b", "c2", "plus")
    assert sorted(trie.match("a/b")) == [("c1", "exact"), ("c1", "wide"), ("c2", "plus")]
    assert sorted(trie.match("a")) == [("c1", "wide")]  # a/# matches a
    assert trie.match("$x/b") == []


def test_dollar_rule_only_at_first_level() -> None:
    trie: SubscriptionTrie[int] = SubscriptionTrie()
    trie.add("#", "c1", 1)
    trie.add("+/monitor/Clients", "c2", 2)
    trie.add("$SYS/#", "c3", 3)
    trie.add("a/+", "c4", 4)
    assert trie.match("$SYS/monitor/Clients") == [("c3", 3)]
    assert sorted(trie.match("a/$x")) == [("c1", 1), ("c4", 4)]


def test_shared_groups_by_real_filter() -> None:
    trie: SubscriptionTrie[int] = SubscriptionTrie()
    trie.add("$share/g1/s/+", "c1", 1)
    trie.add("$share/g1/s/+", "c2", 1)
    trie.add("$share/g2/s/#", "c3", 1)
    trie.add("$queue/s/x", "c4", 1)
    trie.add("s/x", "c5", 0)
    got = sorted((g, f, sorted(m)) for g, f, m in trie.match_shared("s/x"))
    assert got == [("$queue", "s/x", ["c4"]), ("g1", "s/+", ["c1", "c2"]), ("g2", "s/#", ["c3"])]
    assert trie.match("s/x") == [("c5", 0)]
    assert trie.has_filter("$share/g1/s/+")
    assert not trie.has_filter("$share/g2/s/+")
    assert sorted(trie.filters()) == ["s/#", "s/+", "s/x"]


def test_invalid_filter_rejected() -> None:
    trie: SubscriptionTrie[int] = SubscriptionTrie()
    for bad in ["", "a/#/b", "a+", "$share/g", "$share//a"]:
        with pytest.raises(ValueError):
            trie.add(bad, "c1", 1)
    assert len(trie) == 0 and trie._is_empty_tree()


def test_match_walks_only_relevant_nodes() -> None:
    """Not a timing test: many unrelated filters do not change what a match touches."""
    trie: SubscriptionTrie[int] = SubscriptionTrie()
    trie.add("sport/tennis/+", "c1", 1)
    baseline = len(trie._match_nodes("sport/tennis/p1"))
    for i in range(2000):
        trie.add(f"other/{i}/+", "c2", i)
        trie.add(f"sport/golf/{i}", "c2", i)
    assert len(trie._match_nodes("sport/tennis/p1")) == baseline == 1


# -- shared group picker -----------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 7), k=st.integers(1, 5))
def test_round_robin_is_fair_and_in_turn(n: int, k: int) -> None:
    picker = SharedGroupPicker()
    members = [f"m{i}" for i in range(n)]
    picks = [picker.pick("g", "f/+", members, "pub", "f/x") for _ in range(k * n)]
    assert picks == members * k
    assert Counter(picks) == {m: k for m in members}


def test_round_robin_cursor_per_group_and_filter() -> None:
    picker = SharedGroupPicker("round_robin")
    members = ["a", "b", "c"]
    assert picker.pick("g1", "f", members, "p", "t") == "a"
    assert picker.pick("g2", "f", members, "p", "t") == "a"
    assert picker.pick("g1", "h", members, "p", "t") == "a"
    assert picker.pick("g1", "f", members, "p", "t") == "b"
    # Only eligible members passed: the choice stays within them.
    assert picker.pick("g1", "f", ["a"], "p", "t") == "a"
    picker.forget("g1", "f")
    assert picker.pick("g1", "f", members, "p", "t") == "a"


@pytest.mark.parametrize("strategy", ["round_robin", "random", "hash_clientid", "hash_topic"])
def test_pick_empty_is_none(strategy: str) -> None:
    assert SharedGroupPicker(strategy).pick("g", "f", [], "p", "t") is None


def test_random_uses_rng_and_stays_in_members() -> None:
    picker = SharedGroupPicker("random", rng=random.Random(7))
    members = ["a", "b", "c"]
    picks = [picker.pick("g", "f", members, "p", "t") for _ in range(300)]
    assert set(picks) == set(members)


def test_hash_strategies_are_sticky() -> None:
    members = ["a", "b", "c", "d"]
    by_client = SharedGroupPicker("hash_clientid")
    assert len({by_client.pick("g", "f", members, "pub1", f"t/{i}") for i in range(20)}) == 1
    by_topic = SharedGroupPicker("hash_topic")
    assert len({by_topic.pick("g", "f", members, f"p{i}", "t/1") for i in range(20)}) == 1


def test_unknown_strategy_rejected() -> None:
    with pytest.raises(ValueError):
        SharedGroupPicker("sticky-ish")
