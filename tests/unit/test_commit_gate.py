"""Commit-gated acks (`broker.core.commit_gate`) without sockets: which acks the core parks,
which go at once, what a commit releases and in what order; the cluster receiver's FORWARD_ACK
behind a commit; and persistence's flush releasing the acks it covers (and keeping them when
the write fails)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from memharness import MemLink

from broker.core.broker import Broker
from broker.core.channel import Channel
from broker.core.commit_gate import CommitGate, DirtySessions
from broker.core.message import Message
from broker.protocol.codec import Decoder, encode
from broker.protocol.constants import MQTT_5
from broker.protocol.packets import (
    Connect,
    Packet,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Subscribe,
    SubscriptionRequest,
)
from broker.server.persistence import Persistence
from cluster.receiver import Receiver
from cluster.wire import (
    Address,
    Body,
    Hello,
    MessageType,
    forward_batch_body,
    forward_entry,
)


class Client:
    """A channel with a decoder of what it was sent."""

    def __init__(self, broker: Broker, client_id: str, *, persistent: bool, v5: bool = False):
        self.link = MemLink()
        self.channel = Channel(broker, self.link, "127.0.0.1", 40000)
        self.version = MQTT_5 if v5 else 4
        self.decoder = Decoder(version=self.version)
        props = {0x11: 3600} if v5 and persistent else {}
        self.send(
            Connect(
                client_id,
                protocol_level=self.version,
                clean_start=not persistent or v5,
                properties=props,
            )
        )
        assert not self.link.closed
        self.packets()  # the CONNACK

    def send(self, packet: Packet) -> None:
        self.channel.data_received(encode(packet, self.version))

    def packets(self) -> list[Packet]:
        data, self.link.out = bytes(self.link.out), bytearray()
        return list(self.decoder.feed(data))


def persisting(client_acks: bool = True) -> tuple[Broker, CommitGate]:
    """A broker with persistence's bookkeeping on (as `Persistence.open` sets it)."""
    broker = Broker(clock=lambda: 1000.0)
    dirty = DirtySessions()
    broker.dirty_sessions = dirty
    broker.dirty_retained = set()
    gate = broker.commit_gate = CommitGate(dirty, client_acks)
    return broker, gate


def commit(gate: CommitGate) -> None:
    """What the flusher does once its transaction is durable."""
    gate.dirty.clear()
    for release in gate.take():
        release()


def subscriber(broker: Broker, client_id: str, *, persistent: bool) -> Client:
    sub = Client(broker, client_id, persistent=persistent)
    sub.send(Subscribe(1, [SubscriptionRequest("t/#", 2)]))
    sub.packets()  # SUBACK
    return sub


# -- the gate itself ---------------------------------------------------------------------------


def test_the_first_ack_parked_wakes_the_flusher_and_take_is_in_order() -> None:
    gate = CommitGate(DirtySessions(), client_acks=True)
    woken: list[int] = []
    gate.wake = lambda: woken.append(1)
    sent: list[str] = []
    gate.hold(lambda: sent.append("a"))
    gate.hold(lambda: sent.append("b"))
    assert woken == [1], "one wake per commit, not one per ack"
    taken = gate.take()
    gate.hold(lambda: sent.append("c"))  # parked after the snapshot: the next commit's
    assert woken == [1, 1]
    for release in taken:
        release()
    assert sent == ["a", "b"]
    gate.give_back([lambda: sent.append("x")])  # a failed commit's acks go first next time
    for release in gate.take():
        release()
    assert sent == ["a", "b", "x", "c"]


def test_marks_move_only_for_persistent_sessions() -> None:
    broker, gate = persisting()
    subscriber(broker, "clean", persistent=False)
    before = gate.marks
    broker.publish(Message("t/1", b"x", 1, False))
    assert gate.marks == before, "a clean session's delivery is no durable state"
    subscriber(broker, "keep", persistent=True)
    before = gate.marks
    broker.publish(Message("t/1", b"x", 1, False))
    assert gate.marks > before


# -- acks to clients (durable_acks) ------------------------------------------------------------


def test_puback_waits_for_the_commit_of_a_persistent_delivery() -> None:
    broker, gate = persisting()
    sub = subscriber(broker, "keep", persistent=True)
    sub.channel.close()  # offline: the message is queued in its session
    pub = Client(broker, "pub", persistent=False)
    pub.send(Publish("t/1", b"m1", 1, packet_id=7))
    assert pub.packets() == [], "no PUBACK before the commit"
    assert "keep" in broker.dirty_sessions  # type: ignore[operator]
    commit(gate)
    assert pub.packets() == [PubAck(7)]


def test_clean_sessions_and_qos0_never_wait() -> None:
    broker, gate = persisting()
    subscriber(broker, "clean", persistent=False)
    pub = Client(broker, "pub", persistent=True)
    pub.send(Publish("t/1", b"m1", 1, packet_id=1))
    assert pub.packets() == [PubAck(1)]
    subscriber(broker, "keep", persistent=True)
    pub.send(Publish("t/1", b"m2", 0))
    assert not gate.waiting, "QoS 0 has no ack to hold"
    pub.send(Publish("t/2", b"m3", 1, packet_id=2))
    assert pub.packets() == [] and len(gate.waiting) == 1


def test_durable_acks_off_acks_at_once_but_forwards_still_see_the_marks() -> None:
    broker, gate = persisting(client_acks=False)
    subscriber(broker, "keep", persistent=True)
    pub = Client(broker, "pub", persistent=False)
    before = gate.marks
    pub.send(Publish("t/1", b"m1", 1, packet_id=3))
    assert pub.packets() == [PubAck(3)]
    assert not gate.waiting and gate.marks > before


def test_own_message_comes_back_after_the_held_ack() -> None:
    """The PUBACK still precedes the client's own copy when both wait for the commit."""
    broker, gate = persisting()
    client = subscriber(broker, "self", persistent=True)
    client.send(Publish("t/me", b"mine", 1, packet_id=9))
    assert client.packets() == []
    commit(gate)
    first, second = client.packets()
    assert first == PubAck(9)
    assert isinstance(second, Publish) and second.payload == b"mine"


def test_incoming_qos2_pubrec_and_pubcomp_wait_for_a_persistent_publisher() -> None:
    broker, gate = persisting()
    pub = Client(broker, "pub2", persistent=True)
    pub.send(Publish("nobody/here", b"q2", 2, packet_id=4))
    assert pub.packets() == [], "its awaiting_rel entry must be on disk first"
    pub.send(Publish("nobody/here", b"q2", 2, packet_id=4, dup=True))  # a resend, same state
    assert pub.packets() == []
    commit(gate)
    assert pub.packets() == [PubRec(4), PubRec(4)]
    pub.send(PubRel(4))
    assert pub.packets() == [], "the id leaves awaiting_rel on disk before PUBCOMP"
    commit(gate)
    assert pub.packets() == [PubComp(4)]


def test_pubrel_to_a_persistent_subscriber_waits_for_the_commit() -> None:
    broker, gate = persisting()
    sub = subscriber(broker, "keep", persistent=True)
    clean = subscriber(broker, "clean", persistent=False)
    broker.publish(Message("t/q2", b"x", 2, False))
    (delivery,) = sub.packets()
    (clean_delivery,) = clean.packets()
    assert isinstance(delivery, Publish) and isinstance(clean_delivery, Publish)
    assert delivery.packet_id is not None and clean_delivery.packet_id is not None
    commit(gate)
    sub.send(PubRec(delivery.packet_id))
    clean.send(PubRec(clean_delivery.packet_id))
    assert clean.packets() == [PubRel(clean_delivery.packet_id)], "clean: at once"
    assert sub.packets() == [], "persistent: its 'released' state is committed first"
    commit(gate)
    assert sub.packets() == [PubRel(delivery.packet_id)]


def test_an_ack_for_a_closed_connection_is_dropped() -> None:
    broker, gate = persisting()
    sub = subscriber(broker, "keep", persistent=True)
    sub.channel.close()
    pub = Client(broker, "pub", persistent=False)
    pub.send(Publish("t/1", b"m1", 1, packet_id=5))
    pub.channel.close()
    out = len(pub.link.out)
    commit(gate)
    assert len(pub.link.out) == out, "nothing written to a closed link"


# -- FORWARD_ACK after the commit (cluster.receiver) -----------------------------------------


class Frames:
    def __init__(self) -> None:
        self.sent: list[tuple[Address, MessageType, Body]] = []

    def __call__(self, address: Address, kind: MessageType, body: Body) -> bool:
        self.sent.append((address, kind, body))
        return True


def forward_batch(seq: int, topic: str) -> Body:
    body = forward_batch_body("a@x", [forward_entry(Message(topic, b"p", 1, False))])
    return {**body, "seq": seq}


async def test_forward_ack_waits_for_the_commit_and_later_acks_queue_behind_it() -> None:
    broker, gate = persisting(client_acks=False)
    subscriber(broker, "keep", persistent=True)
    subscriber(broker, "clean", persistent=False)
    frames = Frames()

    def deliver(message: Message, extra: Body, hello: Hello) -> None:
        broker.publish(message, forward=False, shared=False)

    receiver = Receiver("b@x", Counter(), lambda: 1000.0, frames, {"publish": deliver},
                        lambda: True, lambda: broker.commit_gate)  # fmt: skip
    hello = Hello(name="a@x", epoch=1, address=("10.0.0.1", 7946), version=4)
    receiver.on_forward_batch(hello, forward_batch(1, "t/persistent"))
    receiver.on_forward_batch(hello, forward_batch(2, "u/nobody"))  # behind seq 1
    await asyncio.sleep(0)
    assert frames.sent == [], "no FORWARD_ACK before the commit"
    assert len(gate.waiting) == 2
    commit(gate)
    await asyncio.sleep(0)
    assert [(kind, body["seq"]) for _, kind, body in frames.sent] == [(MessageType.FORWARD_ACK, 2)]
    receiver.on_forward_batch(hello, forward_batch(3, "u/nobody"))  # nothing held: at once
    await asyncio.sleep(0)
    assert frames.sent[-1][2]["seq"] == 3 and not gate.waiting


async def test_forward_ack_goes_at_once_without_persistence() -> None:
    broker = Broker(clock=lambda: 1000.0)
    subscriber(broker, "keep", persistent=True)
    frames = Frames()

    def deliver(message: Message, extra: Body, hello: Hello) -> None:
        broker.publish(message, forward=False, shared=False)

    receiver = Receiver("b@x", Counter(), lambda: 1000.0, frames, {"publish": deliver},
                        lambda: True, lambda: broker.commit_gate)  # fmt: skip
    hello = Hello(name="a@x", epoch=1, address=("10.0.0.1", 7946), version=4)
    receiver.on_forward_batch(hello, forward_batch(1, "t/persistent"))
    await asyncio.sleep(0)
    assert [body["seq"] for _, _, body in frames.sent] == [1]


# -- persistence releases what its commit covers -------------------------------------------------


def test_flush_sends_the_acks_after_the_write_and_keeps_them_when_it_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = Broker(clock=lambda: 1000.0)
    store = Persistence(broker, str(tmp_path), durable_acks=True)
    store.open()
    gate = broker.commit_gate
    assert gate is not None and gate.client_acks
    subscriber(broker, "keep", persistent=True).channel.close()
    pub = Client(broker, "pub", persistent=False)
    pub.send(Publish("t/1", b"m1", 1, packet_id=1))
    assert pub.packets() == []

    def broken(changes: Any, *, full: bool) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_write", broken)
    with pytest.raises(sqlite3.OperationalError):
        store.flush()
    assert pub.packets() == [], "a failed commit releases nothing"
    assert len(gate.waiting) == 1 and "keep" in broker.dirty_sessions  # type: ignore[operator]
    monkeypatch.undo()
    assert store.flush() >= 1
    assert pub.packets() == [PubAck(1)]
    store.close()


async def test_the_running_flusher_commits_when_an_ack_waits(tmp_path: Path) -> None:
    """With an hour-long interval, only the wake-up of a parked ack can make this commit."""
    broker = Broker(clock=lambda: 1000.0)
    store = Persistence(broker, str(tmp_path), interval_ms=3_600_000, durable_acks=True)
    store.open()
    store.start()
    try:
        subscriber(broker, "keep", persistent=True).channel.close()
        for _ in range(100):  # the flusher is asleep for its interval (nothing waits yet)
            await asyncio.sleep(0)
            if store._wakeup is not None and not store.flushes:
                break
        assert store._wakeup is not None
        pub = Client(broker, "pub", persistent=False)
        flushes = store.flushes
        for packet_id in (1, 2, 3):
            pub.send(Publish("t/1", b"m", 1, packet_id=packet_id))
        assert pub.packets() == []
        got: list[Packet] = []
        async with asyncio.timeout(10):
            while len(got) < 3:
                await asyncio.sleep(0.01)
                got += pub.packets()
        assert got == [PubAck(1), PubAck(2), PubAck(3)]
        assert store.flushes > flushes
        pub.send(Publish("t/1", b"m", 1, packet_id=4))  # parked; stop saves, then sends it
    finally:
        await store.stop()
    assert pub.packets() == [PubAck(4)]
