"""The server -> client Topic Alias table (broker.core.topic_alias), checked as a client sees it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.topic_alias import MIN_TOPIC_LENGTH, OutgoingAliases


class Client:
    """What a client knows: alias -> topic, updated as section 3.3.2.3.4 says."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.known: dict[int, str] = {}

    def receive(self, topic: str, alias: int) -> str:
        """Apply one PUBLISH as the table says to write it; the topic the client resolves."""
        if alias == 0:
            return topic
        number = abs(alias)
        assert 1 <= number <= self.maximum  # MQTT-3.1.2-26
        if alias < 0:  # topic name and alias: the client records the mapping
            self.known[number] = topic
            return topic
        assert number in self.known, "alias used before the client was told"
        return self.known[number]


topics = st.sampled_from([f"room/{i}/temperature" for i in range(12)] + ["a/b", "x"])


@settings(max_examples=200, deadline=None)
@given(maximum=st.integers(1, 6), sequence=st.lists(topics, max_size=80), drops=st.data())
def test_client_always_resolves_the_right_topic_MQTT_3_1_2_26(
    maximum: int, sequence: list[str], drops: st.DataObject
) -> None:
    table = OutgoingAliases(maximum)
    client = Client(maximum)
    for topic in sequence:
        alias = table.lookup(topic)
        if alias < 0 and drops.draw(st.booleans(), label="dropped"):
            table.forget(-alias)  # never sent: the client learns nothing
            continue
        assert client.receive(topic, alias) == topic
        assert len(table) <= maximum
        if len(topic) < MIN_TOPIC_LENGTH:
            assert alias == 0  # no saving to be had


def test_free_aliases_are_given_at_first_use() -> None:
    table = OutgoingAliases(3)
    assert [table.lookup(t) for t in ("t/one", "t/two", "t/one", "t/three")] == [-1, -2, 1, -3]
    assert table.mapping() == {1: "t/one", 2: "t/two", 3: "t/three"}


def test_most_used_topics_keep_their_aliases() -> None:
    table = OutgoingAliases(2)
    for _ in range(10):
        table.lookup("hot/topic")
    table.lookup("cold/topic")
    assert table.lookup("new/topic") == 0  # seen once: not admitted
    assert table.lookup("new/topic") == -2  # seen again: evicts the cold one
    assert table.lookup("hot/topic") == 1
    assert table.mapping() == {1: "hot/topic", 2: "new/topic"}


def test_a_stream_of_one_off_topics_never_evicts() -> None:
    table = OutgoingAliases(2)
    table.lookup("keep/one")
    table.lookup("keep/two")
    for i in range(1000):
        assert table.lookup(f"once/{i}") == 0
    assert table.mapping() == {1: "keep/one", 2: "keep/two"}


def test_forget_undoes_a_fresh_mapping() -> None:
    table = OutgoingAliases(1)
    assert table.lookup("big/topic") == -1
    table.forget(1)
    assert table.mapping() == {}
    assert table.lookup("big/topic") == -1  # told again next time


def test_needs_at_least_one_alias() -> None:
    with pytest.raises(ValueError):
        OutgoingAliases(0)
