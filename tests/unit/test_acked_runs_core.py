"""The QoS 1 fast path (`broker.core.acked_runs`) changes nothing a client or an operator can
see: the same traffic with QoS 1 runs and with every PUBLISH as a packet gives every client the
same bytes (deliveries with their packet ids, PUBACKs with their reason codes, in order) and
leaves every counter, inflight window and queue the same, whatever the subscribers' versions,
QoS and options, the ACL, the inflight and queue limits, offline sessions and subscribers
acknowledging between reads."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from memharness import MemBroker, MemClient
from runs_support import acked_spy, packets_only

from broker.protocol.codec import Decoder, encode
from broker.protocol.constants import MQTT_3_1_1, MQTT_5, PropertyId, ReasonCode
from broker.protocol.packets import (
    Disconnect,
    Packet,
    PingReq,
    PubAck,
    Publish,
    Subscribe,
    SubscriptionRequest,
)

TOPICS = ["a/b", "a/c", "b/b", "b/c", "$x/b"]
#: (version, [(filter, qos, no_local, subscription identifier)], what it asked in CONNECT).
Subscriber = tuple[int, list[tuple[str, int, bool, int | None]], str]
POOL: list[Subscriber] = [
    (MQTT_3_1_1, [("a/b", 1, False, None)], ""),
    (MQTT_3_1_1, [("a/#", 0, False, None), ("a/+", 1, False, None)], ""),  # one copy, QoS 1
    (MQTT_5, [("a/b", 0, False, None)], ""),
    (MQTT_5, [("+/b", 1, False, 7)], ""),  # a subscription identifier: the packet path
    (MQTT_3_1_1, [("b/#", 0, False, None), ("$x/#", 1, False, None)], ""),
    (MQTT_5, [("+/+", 1, False, None)], "receive2"),  # Receive Maximum 2
    (MQTT_5, [("a/#", 1, False, None)], "mps"),  # Maximum Packet Size below some PUBLISHes
    (MQTT_5, [("a/#", 0, False, None)], "mps"),
    (MQTT_5, [("+/+", 0, False, None)], "alias"),  # topic aliases: QoS 0 bytes differ
    (MQTT_3_1_1, [("#", 1, False, None)], "offline"),  # a persistent session, disconnected
    (MQTT_3_1_1, [("a/c", 0, False, None)], "offline"),
]
ASKS: dict[str, dict[int, Any]] = {
    "": {},
    "receive2": {PropertyId.RECEIVE_MAXIMUM: 2},
    "mps": {PropertyId.MAXIMUM_PACKET_SIZE: 40},
    "alias": {PropertyId.TOPIC_ALIAS_MAXIMUM: 5},
    "offline": {},
}


def qos1_batches() -> st.SearchStrategy[list[list[Packet]]]:
    ids = st.integers(0, 3).map(lambda i: [1, 2, 0x0100, 0xFFFF][i])
    plain = st.builds(
        Publish,
        topic=st.sampled_from(TOPICS),
        payload=st.sampled_from([b"x", b"y" * 40, b""]),
        qos=st.just(1),
        packet_id=ids,
    )
    other = st.one_of(
        st.builds(Publish, topic=st.sampled_from(TOPICS), payload=st.just(b"q")),  # QoS 0
        st.builds(
            Publish,
            topic=st.sampled_from(TOPICS),
            payload=st.just(b"r"),
            qos=st.just(1),
            retain=st.just(True),
            packet_id=st.just(5),
        ),
        st.builds(
            Publish,
            topic=st.sampled_from(TOPICS),
            payload=st.just(b"d"),
            qos=st.just(1),
            dup=st.just(True),
            packet_id=st.just(6),
        ),
        st.builds(
            Publish,
            topic=st.sampled_from(TOPICS),
            payload=st.just(b"t"),
            qos=st.just(2),
            packet_id=st.just(7),
        ),
        st.just(PingReq()),
    )
    repeated = st.lists(plain, min_size=1, max_size=2).flatmap(
        lambda distinct: st.lists(st.sampled_from(distinct), min_size=1, max_size=30)
    )
    batch = st.lists(st.one_of(repeated, other.map(lambda p: [p])), max_size=6).map(
        lambda groups: [p for g in groups for p in g]
    )
    return st.lists(batch, min_size=1, max_size=4)


def ack_all(client: MemClient, data: bytes, decoder: Decoder) -> None:
    """Acknowledge every QoS 1 PUBLISH in `data`, as a subscriber that keeps up."""
    acks = [
        PubAck(p.packet_id)
        for p in decoder.feed(data)
        if isinstance(p, Publish) and p.qos == 1 and p.packet_id is not None
    ]
    if acks:
        client.send(*acks)


def run_scenario(
    publisher_version: int,
    batches: list[list[Packet]],
    subscribers: list[Subscriber],
    *,
    self_no_local: bool,
    deny: str | None,
    acking: bool,
    **config: Any,
) -> dict[str, Any]:
    """Connect the subscribers and the publisher, publish `batches` (one read each), the
    subscribers acknowledging after each read when `acking`; what every client got and
    every counter, window and queue."""
    mem = MemBroker(**config)
    broker = mem.broker
    if deny is not None:
        broker.hooks.authorize.append(
            lambda info, action, topic: False if action == "publish" and topic == deny else None
        )
    subs: list[tuple[MemClient, Decoder, bytearray]] = []
    for i, (version, filters, ask) in enumerate(subscribers):
        props = dict(ASKS[ask])
        offline = ask == "offline"
        fields: dict[str, Any] = {"clean_start": not offline}
        if offline and version == MQTT_5:
            props[PropertyId.SESSION_EXPIRY_INTERVAL] = 600
        client, _ = mem.connect(f"sub{i}", version, properties=props, **fields)
        for j, (filt, qos, no_local, ident) in enumerate(filters):
            sprops = {PropertyId.SUBSCRIPTION_IDENTIFIER: ident} if ident else {}
            client.send(Subscribe(j + 1, [SubscriptionRequest(filt, qos, no_local)], sprops))
        client.received()
        if offline:
            client.send(Disconnect())
        subs.append((client, Decoder(version=version), bytearray()))
    publisher, _ = mem.connect("pub", publisher_version)
    publisher.send(Subscribe(1, [SubscriptionRequest("a/b", 1, self_no_local)]))
    publisher.received()
    for batch in batches:
        publisher.send_raw(b"".join(encode(p, publisher_version) for p in batch))
        for client, decoder, log in subs:
            data, client.link.out = bytes(client.link.out), bytearray()
            log += data
            if acking and not client.closed:
                ack_all(client, data, decoder)
    outcome: dict[str, Any] = {
        "counters": {k: v for k, v in broker.metrics.counters.items() if v},
        "limits": {k: v for k, v in broker.limits.items() if v},
    }
    for client, _, log in [*subs, (publisher, None, bytearray())]:
        log += client.link.out
        channel = client.channel
        session = broker.sessions.get(str(channel.client_id))
        outcome[str(channel.client_id)] = (
            bytes(log), client.closed,
            channel.recv_oct, channel.recv_pkt, channel.recv_msg,
            channel.send_oct, channel.send_cnt, channel.send_pkt, channel.send_msg,
            None if session is None else (
                session.deliver_msg, session.mqueue_dropped, session.enqueue_msg,
                list(session.inflight), [(m.payload, q) for m, q, *_ in session.queue],
            ),
        )  # fmt: skip
    return outcome


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([MQTT_3_1_1, MQTT_5]),
    qos1_batches(),
    st.lists(st.sampled_from(POOL), min_size=0, max_size=4),
    st.booleans(),
    st.sampled_from([None, "a/b", "b/b"]),
    st.booleans(),
    st.sampled_from([{}, {"max_inflight_messages": 3, "max_queued_messages": 4}]),
)
def test_qos1_runs_change_nothing_a_client_or_operator_sees(
    version: int,
    batches: list[list[Packet]],
    subscribers: list[Subscriber],
    no_local: bool,
    deny: str | None,
    acking: bool,
    limits: dict[str, int],
) -> None:
    args: dict[str, Any] = {"self_no_local": no_local, "deny": deny, "acking": acking, **limits}
    with acked_spy():
        fast = run_scenario(version, batches, subscribers, **args)
    with packets_only():
        reference = run_scenario(version, batches, subscribers, **args)
    assert fast == reference


def test_a_qos1_run_is_routed_then_acknowledged_in_one_write() -> None:
    """MQTT-4.3.2-2: each PUBACK carries its PUBLISH's packet id, sent having taken
    ownership (every message of the run is with its subscriber first); MQTT-4.6.0-2: the
    PUBACKs in the order the PUBLISHes came. MQTT-3.3.5-1: a subscriber with two matching
    subscriptions gets one copy, at the higher QoS."""
    batch: list[Packet] = [
        Publish("a/c", bytes([i]) * 10, qos=1, packet_id=i + 1) for i in range(50)
    ]
    subscribers: list[Subscriber] = [POOL[1], POOL[2]]  # sub0: 'a/#' QoS 0 + 'a/+' QoS 1
    args: dict[str, Any] = {"self_no_local": True, "deny": None, "acking": True}
    with acked_spy() as calls:
        outcome = run_scenario(MQTT_3_1_1, [batch], subscribers, **args)
    assert calls == [50]
    with packets_only():
        assert run_scenario(MQTT_3_1_1, [batch], subscribers, **args) == outcome
    acks = b"".join(encode(PubAck(i + 1)) for i in range(50))
    assert outcome["pub"][0].endswith(acks), "one PUBACK per PUBLISH, in order"
    delivered = Decoder().feed(outcome["sub0"][0])
    assert [(p.payload, p.qos) for p in delivered if isinstance(p, Publish)] == [
        (bytes([i]) * 10, 1) for i in range(50)
    ]
    counters = outcome["counters"]
    assert counters["messages/qos1/received"] == counters["packets/puback/sent"] == 50
    assert counters["packets/publish/received"] == 50


def test_qos1_run_to_qos0_subscribers_goes_as_qos0_frames() -> None:
    """A QoS 0 subscription gets each message at QoS 0 (min of the two, MQTT-3.8.4-8 in
    3.1.1), without a packet id: the run's bytes re-framed once."""
    batch: list[Packet] = [Publish("b/b", bytes([i]) * 5, qos=1, packet_id=9) for i in range(20)]
    subscribers: list[Subscriber] = [POOL[4]]  # 'b/#' at QoS 0
    args: dict[str, Any] = {"self_no_local": True, "deny": None, "acking": False}
    with acked_spy() as calls:
        outcome = run_scenario(MQTT_5, [batch], subscribers, **args)
    assert calls == [20]
    assert outcome["sub0"][0] == b"".join(encode(Publish("b/b", bytes([i]) * 5)) for i in range(20))


def test_nobody_subscribed_and_not_authorized_acks_of_mqtt5() -> None:
    """5.0: PUBACK 0x10 when no subscriber matched, 0x87 when the ACL refused (3.4.2.1)."""
    args: dict[str, Any] = {"self_no_local": True, "acking": False}
    batch: list[Packet] = [Publish("b/c", b"x", qos=1, packet_id=i + 1) for i in range(10)]
    with acked_spy() as calls:
        outcome = run_scenario(MQTT_5, [batch], [], deny=None, **args)
        denied = run_scenario(MQTT_5, [batch], [], deny="b/c", **args)
    assert calls == [10, 10]
    acks = Decoder(version=MQTT_5).feed(outcome["pub"][0])
    assert [(a.packet_id, a.reason_code) for a in acks if isinstance(a, PubAck)] == [
        (i + 1, ReasonCode.NO_MATCHING_SUBSCRIBERS) for i in range(10)
    ]
    acks = Decoder(version=MQTT_5).feed(denied["pub"][0])
    assert [(a.packet_id, a.reason_code) for a in acks if isinstance(a, PubAck)] == [
        (i + 1, ReasonCode.NOT_AUTHORIZED) for i in range(10)
    ]
    assert denied["counters"]["messages/dropped"] == 10


def test_with_durable_acks_a_run_takes_the_packet_path_and_its_acks_wait() -> None:
    """`durable_acks`: a PUBACK for a message queued into a persistent session waits for the
    commit (`broker.core.commit_gate`); the run path writes its PUBACKs at once, so it
    declines and each PUBLISH's ack is parked by `handle_publish` (MQTT-4.3.2-2 still: every
    ack after its message is owned)."""
    from broker.core.commit_gate import CommitGate, DirtySessions

    mem = MemBroker()
    broker = mem.broker
    dirty = broker.dirty_sessions = DirtySessions()  # as persistence sets it up at start
    gate = broker.commit_gate = CommitGate(dirty, client_acks=True)
    props = {PropertyId.SESSION_EXPIRY_INTERVAL: 600}
    sub, _ = mem.connect("keeper", MQTT_5, properties=props, clean_start=False)
    sub.send(Subscribe(1, [SubscriptionRequest("d/x", 1)]))
    sub.received()
    sub.send(Disconnect())
    publisher, _ = mem.connect("pub", MQTT_3_1_1)
    batch = [Publish("d/x", bytes([i]), qos=1, packet_id=i + 1) for i in range(20)]
    with acked_spy() as calls:
        publisher.send_raw(b"".join(encode(p, MQTT_3_1_1) for p in batch))
    assert calls == [-20], "declined: the packet path parks each ack"
    assert not publisher.link.out, "no PUBACK before the commit"
    released = gate.take()
    assert len(released) == 20
    for release in released:
        release()
    acks = Decoder().feed(bytes(publisher.link.out))
    assert [p.packet_id for p in acks if isinstance(p, PubAck)] == list(range(1, 21))
