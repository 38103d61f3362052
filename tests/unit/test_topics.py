"""Topic name / filter validation and the reference matcher, case by case from the spec."""

from __future__ import annotations

import pytest

from broker.core.topics import (
    parse_shared,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)

# -- topic names -------------------------------------------------------------------------------


def test_topic_name_must_not_be_empty_MQTT_4_7_3_1() -> None:
    assert not validate_topic_name("")


@pytest.mark.parametrize("topic", ["a/+", "+", "a/#", "#", "a+b", "a#"])
def test_topic_name_has_no_wildcards_MQTT_3_3_2_2(topic: str) -> None:
    assert not validate_topic_name(topic)


@pytest.mark.parametrize("topic", ["a", "/", "a//b", "/a", "a/", "$SYS/broker/uptime", " ", "é/ü"])
def test_topic_name_valid_examples_MQTT_4_7_1_1(topic: str) -> None:
    assert validate_topic_name(topic)


def test_topic_name_no_null_character_MQTT_1_5_3_2() -> None:
    assert not validate_topic_name("a\x00b")


def test_topic_name_no_lone_surrogate_MQTT_1_5_3_1() -> None:
    assert not validate_topic_name("a\ud800")


def test_topic_name_at_most_65535_bytes_MQTT_1_5_3() -> None:
    assert validate_topic_name("a" * 65535)
    assert not validate_topic_name("a" * 65536)
    assert not validate_topic_name("é" * 32768)  # 65536 bytes in UTF-8


# -- topic filters -----------------------------------------------------------------------------


def test_filter_must_not_be_empty_MQTT_4_7_3_1() -> None:
    assert not validate_topic_filter("")


@pytest.mark.parametrize("filt", ["#", "a/#", "a/b/#", "/#", "+/#", "a//#"])
def test_hash_last_and_alone_is_valid_MQTT_4_7_1_2(filt: str) -> None:
    assert validate_topic_filter(filt)


@pytest.mark.parametrize("filt", ["#/a", "a/#/b", "a#", "a/b#", "#a", "##", "a/#/#"])
def test_hash_must_be_last_and_alone_MQTT_4_7_1_2(filt: str) -> None:
    assert not validate_topic_filter(filt)


@pytest.mark.parametrize("filt", ["+", "+/+", "/+", "a/+/b", "+/tennis/#", "sport/+/player1", "+/"])
def test_plus_alone_is_valid_MQTT_4_7_1_3(filt: str) -> None:
    assert validate_topic_filter(filt)


@pytest.mark.parametrize("filt", ["sport+", "a/b+/c", "++", "+a", "a/+b"])
def test_plus_must_occupy_entire_level_MQTT_4_7_1_3(filt: str) -> None:
    assert not validate_topic_filter(filt)


def test_filter_no_null_character_MQTT_1_5_3_2() -> None:
    assert not validate_topic_filter("a/\x00")


@pytest.mark.parametrize(
    "filt", ["$share/g/a", "$share/g/+/b/#", "$share/g/#", "$share/g//a", "$queue/a/+"]
)
def test_shared_filter_valid_MQTT_4_8_2_1(filt: str) -> None:
    assert validate_topic_filter(filt)


@pytest.mark.parametrize(
    "filt",
    [
        "$share",
        "$share/",
        "$share/g",
        "$share/g/",
        "$share//a",
        "$share/g+/a",
        "$share/+/a",
        "$share/g#/a",
        "$share/#/a",
        "$share/g/a#",
        "$share/g/#/a",
        "$queue",
        "$queue/",
    ],
)
def test_shared_filter_invalid_MQTT_4_8_2_1_and_4_8_2_2(filt: str) -> None:
    assert not validate_topic_filter(filt)


def test_share_prefix_only_as_whole_first_level() -> None:
    # `$sharex/...` is an ordinary filter, not a shared subscription.
    assert validate_topic_filter("$sharex/g")
    assert parse_shared("$sharex/g/a") == (None, "$sharex/g/a")


def test_parse_shared() -> None:
    assert parse_shared("$share/grp/a/+/#") == ("grp", "a/+/#")
    assert parse_shared("$share/grp//a") == ("grp", "/a")
    assert parse_shared("$queue/a/b") == ("$queue", "a/b")
    assert parse_shared("a/b") == (None, "a/b")
    assert parse_shared("$SYS/#") == (None, "$SYS/#")
    with pytest.raises(ValueError):
        parse_shared("$share/grp")
    with pytest.raises(ValueError):
        parse_shared("$queue")


# -- matching (spec section 4.7 examples) ------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player1/score/wimbledon",
    ],
)
def test_hash_multi_level_example_MQTT_4_7_1_2(topic: str) -> None:
    assert topic_matches("sport/tennis/player1/#", topic)


def test_hash_matches_parent_MQTT_4_7_1_2() -> None:
    assert topic_matches("sport/#", "sport")
    assert topic_matches("a/#", "a")
    assert not topic_matches("a/b/#", "a")
    assert topic_matches("#", "a/b/c")
    assert topic_matches("a/#", "a/")


def test_plus_single_level_examples_MQTT_4_7_1_3() -> None:
    assert topic_matches("sport/tennis/+", "sport/tennis/player1")
    assert topic_matches("sport/tennis/+", "sport/tennis/player2")
    assert not topic_matches("sport/tennis/+", "sport/tennis/player1/ranking")
    assert not topic_matches("sport/+", "sport")
    assert topic_matches("sport/+", "sport/")


def test_plus_matches_empty_levels_MQTT_4_7_1_3() -> None:
    assert topic_matches("+/+", "/finance")
    assert topic_matches("/+", "/finance")
    assert not topic_matches("+", "/finance")
    assert topic_matches("a/+/b", "a//b")
    assert topic_matches("+", "")  # a single empty level (not a valid topic name, but a level)


def test_dollar_topics_not_matched_by_leading_wildcard_MQTT_4_7_2_1() -> None:
    assert not topic_matches("#", "$SYS/broker/uptime")
    assert not topic_matches("+/monitor/Clients", "$SYS/monitor/Clients")
    assert not topic_matches("+", "$SYS")
    assert topic_matches("$SYS/#", "$SYS/broker/uptime")
    assert topic_matches("$SYS/#", "$SYS")
    assert topic_matches("$SYS/monitor/+", "$SYS/monitor/Clients")
    # Only the first level is special.
    assert topic_matches("a/+", "a/$x")
    assert topic_matches("a/#", "a/$x/y")


def test_literal_levels_are_exact() -> None:
    assert topic_matches("a/b", "a/b")
    assert not topic_matches("a/b", "a/b/")
    assert not topic_matches("a/b", "a")
    assert not topic_matches("A/b", "a/b")
    assert not topic_matches("a", "/a")
