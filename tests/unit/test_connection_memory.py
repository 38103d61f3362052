"""Structural facts about what an idle connection holds (issue 15: memory per connection).

A `Connection` keeps what every connection sets in slots; the fields most connections never
change are class defaults until one sets its own, which then lives in that connection's
`__dict__` alone. No sizes are asserted: only which objects exist (sizes: `minibroker-bench
memory`). `vars()` makes an empty dict where none was; that is harmless here.
"""

from __future__ import annotations

from memharness import MemBroker

from broker.core.connection import Connection
from broker.core.topic_alias import NO_ALIASES
from broker.protocol.constants import MQTT_3_1, MQTT_5, PropertyId, ReasonCode
from broker.protocol.packets import Publish, Will


def test_a_plain_connection_sets_nothing_outside_its_slots() -> None:
    mem = MemBroker()
    client, ack = mem.connect("plain")
    assert ack.reason_code == ReasonCode.SUCCESS
    channel = client.channel
    assert vars(channel) == {}
    # ... and reads the class defaults
    assert channel.will is None and channel.proto_name == "MQTT" and not channel.is_bridge
    assert channel.problem_info and channel.publish_will and channel.held_at is None
    assert channel.topic_aliases is NO_ALIASES and channel.auth is None


def test_a_field_set_by_one_connection_is_its_own() -> None:
    mem = MemBroker()
    will = Will("wills/a", b"gone")
    with_will, _ = mem.connect("a", will=will)
    other, _ = mem.connect("b")
    assert vars(with_will.channel) == {"will": will}
    assert other.channel.will is None and Connection.will is None
    old, _ = mem.connect("c", version=MQTT_3_1, protocol_name="MQIsdp")
    assert vars(old.channel) == {"proto_name": "MQIsdp"}
    bridge, _ = mem.connect("d", bridge=True)
    assert vars(bridge.channel) == {"is_bridge": True}
    assert not other.channel.is_bridge and other.channel.proto_name == "MQTT"


def test_a_v5_connect_sets_only_what_differs() -> None:
    mem = MemBroker()
    quiet, _ = mem.connect(
        "q", version=MQTT_5, properties={PropertyId.REQUEST_PROBLEM_INFORMATION: 0}
    )
    assert vars(quiet.channel) == {"problem_info": False}
    plain, _ = mem.connect("p", version=MQTT_5)
    assert vars(plain.channel) == {} and plain.channel.problem_info


def test_a_hold_is_kept_by_the_held_connection_only() -> None:
    mem = MemBroker()
    held, _ = mem.connect("held")
    other, _ = mem.connect("other")
    hold = held.channel.hold_input()
    assert hold and held.channel.held_at is not None
    assert other.channel.held_at is None and other.channel.hold_count == 0
    held.channel.release_input(hold)
    assert held.channel.held_at is None


def test_an_incoming_topic_alias_takes_its_own_table() -> None:
    mem = MemBroker()
    sender, _ = mem.connect("s", version=MQTT_5, properties={PropertyId.TOPIC_ALIAS_MAXIMUM: 0})
    other, _ = mem.connect("o", version=MQTT_5)
    sender.send(Publish("a/b", b"x", properties={PropertyId.TOPIC_ALIAS: 1}))
    assert not sender.closed
    assert sender.channel.topic_aliases == {1: "a/b"}
    assert other.channel.topic_aliases is NO_ALIASES and not NO_ALIASES
