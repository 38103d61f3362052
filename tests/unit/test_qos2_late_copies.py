"""A QoS 2 message is not routed to a session copy that arrived on the node after the message
was published (`Broker.late_for`), and its publish stamp travels with it (`cluster.wire`)."""

from __future__ import annotations

import pytest
from cluster_fakes import FakeClient, msgpack_roundtrip

from broker.core.broker import Broker
from broker.core.hlc import Stamp
from broker.core.message import Message
from broker.core.qos2_once import SEEN_MAX as QOS2_SEEN_MAX
from broker.protocol.packets import Publish
from cluster.handoff import Handoff, deliver_to
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
    session = broker.import_session(msgpack_roundtrip(state), moved=True)
    assert session.arrived is not None and session.arrived.ms == int((NOW + 3) * 1000)
    broker.publish(copy_from("other", int((NOW + 1) * 1000)), forward=False, shared=False)
    assert broker.late_skipped == 1  # it reached the session on the source node


def test_a_session_restored_from_disk_keeps_its_arrival() -> None:
    """A restarted node: what peers held for it while it was down (published after the
    session arrived, before the restart) is delivered, not taken for late."""
    clock = [NOW]
    before = Broker(clock=lambda: clock[0])
    connected(before, "c").drop()
    state = msgpack_roundtrip(before.sessions["c"].export_state())
    clock[0] = NOW + 30
    broker = Broker(clock=lambda: clock[0])
    session = broker.import_session(state)  # as `broker.server.persistence` restores it
    assert session.arrived == before.sessions["c"].arrived
    broker.publish(copy_from("other", int((NOW + 10) * 1000)), forward=False, shared=False)
    assert broker.late_skipped == 0 and len(session.queue) == 1
    old_file = {k: v for k, v in state.items() if k != "arrived"}  # an older data file
    assert Broker(clock=lambda: NOW).import_session(old_file).arrived is None


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


def test_a_persistent_session_accepts_a_qos2_message_once_and_remembers_a_bounded_number() -> None:
    broker = Broker(clock=lambda: NOW)
    client = connected(broker, "c")
    session = broker.sessions["c"]
    assert session.arrived is not None
    ms = session.arrived.ms + 1
    broker.publish(copy_from("other", ms), forward=False, shared=False)
    broker.publish(copy_from("other", ms), forward=False, shared=False)  # the same message
    assert payloads(client) == [b"m"] and broker.qos2_repeats == 1
    for i in range(QOS2_SEEN_MAX + 5):
        assert session.accept_qos2(Stamp(ms + 1 + i, 0, "other"))
    assert session.qos2_seen is not None and len(session.qos2_seen) == QOS2_SEEN_MAX
    assert session.accept_qos2(Stamp(ms, 0, "other"))  # the oldest went first


def test_a_session_without_expiry_keeps_no_record() -> None:
    broker = Broker(clock=lambda: NOW)
    client = connected(broker, "c", clean_start=True)
    session = broker.sessions["c"]
    assert session.arrived is not None
    message = copy_from("other", session.arrived.ms + 1)
    broker.publish(message, forward=False, shared=False)
    broker.publish(message, forward=False, shared=False)
    assert payloads(client) == [b"m", b"m"] and session.qos2_seen is None


def test_the_record_moves_with_the_session_and_a_repeat_is_dropped_there() -> None:
    """A copy held for the old node and passed on by its handoff (`deliver_to`), or routed to
    the new one, after the session moved with the message in its state."""
    source = Broker(clock=lambda: NOW)
    connected(source, "c").drop()
    arrived = source.sessions["c"].arrived
    assert arrived is not None
    message = copy_from("other", arrived.ms + 1)
    source.publish(message, forward=False, shared=False)  # queued, offline
    state = source.surrender_session("c", "here")
    assert state is not None and state["qos2_seen"] == [[arrived.ms + 1, 0, "other"]]
    broker = Broker(clock=lambda: NOW - 5)  # (a clock behind: not skipped as late)
    broker.import_session(msgpack_roundtrip(state), moved=True)
    assert deliver_to(broker, "c", copy_from("other", arrived.ms + 1)) == 0
    broker.publish(copy_from("other", arrived.ms + 1), forward=False, shared=False)
    assert broker.qos2_repeats == 2 and broker.late_skipped == 0
    client = FakeClient(broker)
    client.connect("c", clean_start=False)
    assert payloads(client) == [b"m"]  # once, from the state


def test_a_malformed_record_is_refused() -> None:
    broker = Broker(clock=lambda: NOW)
    connected(broker, "c").drop()
    state = broker.surrender_session("c", "x")
    assert state is not None
    with pytest.raises(ValueError, match="qos2_seen"):
        Broker(clock=lambda: NOW).import_session({**state, "qos2_seen": [[1, 2]]})
