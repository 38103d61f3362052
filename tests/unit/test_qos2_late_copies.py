"""A QoS 2 message is not routed to a session copy that arrived on the node after the message
was published (`Broker.late_for`), and its publish stamp travels with it (`cluster.wire`)."""

from __future__ import annotations

from cluster_fakes import FakeClient, msgpack_roundtrip

from broker.core.broker import Broker
from broker.core.hlc import Stamp
from broker.core.message import Message
from broker.protocol.packets import Publish
from cluster.handoff import Handoff
from cluster.wire import forward_body, forward_entry, parse_forward, parse_forward_batch

NOW = 1000.0


def payloads(client: FakeClient) -> list[bytes]:
    return [p.payload for p in client.received() if isinstance(p, Publish)]


def copy_from(node: str, ms: int, qos: int = 2, payload: bytes = b"m") -> Message:
    """A copy forwarded by `node` (`publish(forward=False, shared=False)`), published at `ms`."""
    message = Message("t/1", payload, qos, node=node)
    message.stamp = Stamp(ms, 0, node)
    return message


def connected(broker: Broker, client_id: str, clean_start: bool = False) -> FakeClient:
    client = FakeClient(broker)
    client.connect(client_id, clean_start=clean_start)
    client.subscribe("t/#", qos=2)
    client.received()
    return client


def test_a_local_qos2_publish_is_stamped_and_delivered() -> None:
    broker = Broker(clock=lambda: NOW)
    client = connected(broker, "c")
    message = Message("t/1", b"local", 2)
    broker.publish(message)
    assert message.stamp is not None and message.stamp.node == broker.settings.node_name
    assert payloads(client) == [b"local"]
    qos1 = Message("t/1", b"one", 1)
    broker.publish(qos1)
    assert qos1.stamp is None  # only QoS 2 is stamped
    assert broker.late_skipped == 0


def test_a_copy_published_before_the_session_arrived_is_skipped_and_counted() -> None:
    broker = Broker(clock=lambda: NOW)
    client = connected(broker, "c")
    arrived = broker.sessions["c"].arrived
    assert arrived is not None and arrived.ms == int(NOW * 1000)
    dropped = broker.metrics.counters["messages/dropped"]
    broker.publish(
        copy_from("other", arrived.ms - 1, payload=b"early"), forward=False, shared=False
    )
    broker.publish(copy_from("other", arrived.ms + 1, payload=b"late"), forward=False, shared=False)
    assert payloads(client) == [b"late"]
    assert broker.late_skipped == 1
    assert broker.metrics.counters["messages/dropped"] == dropped + 1


def test_only_the_copy_that_arrived_later_is_skipped() -> None:
    """Two sessions, one older than the message, one newer (the many-subscriber branch)."""
    clock = [NOW]
    broker = Broker(clock=lambda: clock[0])
    old = connected(broker, "old")
    clock[0] = NOW + 5
    new = connected(broker, "new")
    broker.publish(copy_from("other", int((NOW + 1) * 1000)), forward=False, shared=False)
    assert payloads(old) == [b"m"] and payloads(new) == []
    assert broker.late_skipped == 1


def test_qos0_and_qos1_copies_and_copies_without_a_stamp_are_never_skipped() -> None:
    broker = Broker(clock=lambda: NOW)
    client = connected(broker, "c")
    early = int(NOW * 1000) - 10_000
    broker.publish(copy_from("other", early, qos=1, payload=b"q1"), forward=False, shared=False)
    broker.publish(copy_from("other", early, qos=0, payload=b"q0"), forward=False, shared=False)
    broker.publish(Message("t/1", b"older-node", 2, node="other"), forward=False, shared=False)
    assert sorted(payloads(client)) == [b"older-node", b"q0", b"q1"]
    assert broker.late_skipped == 0


def test_an_imported_session_arrives_at_its_import() -> None:
    clock = [NOW]
    source = Broker(clock=lambda: clock[0])
    connected(source, "c").drop()
    state = source.surrender_session("c", "here")
    assert state is not None
    clock[0] = NOW + 3
    broker = Broker(clock=lambda: clock[0])
    session = broker.import_session(msgpack_roundtrip(state))
    assert session.arrived is not None and session.arrived.ms == int((NOW + 3) * 1000)
    broker.publish(copy_from("other", int((NOW + 1) * 1000)), forward=False, shared=False)
    assert broker.late_skipped == 1  # it reached the session on the source node


def test_a_session_resumed_here_keeps_its_arrival() -> None:
    clock = [NOW]
    broker = Broker(clock=lambda: clock[0])
    connected(broker, "c").drop()
    clock[0] = NOW + 10
    client = connected(broker, "c")
    broker.publish(copy_from("other", int((NOW + 1) * 1000)), forward=False, shared=False)
    assert payloads(client) == [b"m"]  # the copy was here, offline, when it was published


def test_the_publish_stamp_of_a_qos2_message_travels_in_batches_and_single_forwards() -> None:
    message = Message("t/1", b"x", 2, publisher="p")
    message.stamp = Stamp(123, 4, "n1")
    body = msgpack_roundtrip({"origin": "n1", "msgs": [forward_entry(message)]})
    [(copy, extra)], bad = parse_forward_batch(body, now=NOW)  # type: ignore[misc]
    assert bad == 0 and copy.stamp == Stamp(123, 4, "n1") and extra.get("kind") is None
    single = parse_forward(msgpack_roundtrip(forward_body(message, "n1")), now=NOW)
    assert single.stamp == Stamp(123, 4, "n1")
    qos1 = Message("t/1", b"x", 1)
    qos1.stamp = Stamp(1, 0, "n1")
    assert len(forward_entry(qos1)) == 7  # nothing added below QoS 2
    assert "hlc" not in forward_body(qos1, "n1")


def test_a_session_kind_forward_keeps_its_fields_with_the_stamp() -> None:
    message = Message("t/1", b"x", 2)
    message.stamp = Stamp(5, 0, "n1")
    entry = forward_entry(message, {"kind": "session", "cid": "c"})
    assert entry[7] == {"kind": "session", "cid": "c", "hlc": [5, 0, "n1"]}


def test_the_old_node_does_not_pass_on_a_qos2_message_older_than_its_copy() -> None:
    """`cluster.handoff`: a copy held for the old node that arrives after the surrender, and
    was published before the surrendered copy arrived there, reached the session elsewhere."""
    sent: list[bytes] = []

    def send(node: str, message: Message, extra: dict[str, object]) -> int:
        sent.append(message.payload)
        return 1

    handoff = Handoff("h", send, lambda cid, m: 0, later=lambda d, cb: None)
    handoff.surrendered("c", "b", ["t/#"], NOW, arrived=Stamp(5000, 0, "h"))
    handoff.on_message(copy_from("p", 4999, payload=b"older"), NOW)
    handoff.on_message(copy_from("p", 5001, payload=b"newer"), NOW)
    handoff.on_message(copy_from("p", 4999, qos=1, payload=b"qos1"), NOW)
    assert sent == [b"newer", b"qos1"] and handoff.stats["late_skipped"] == 1
