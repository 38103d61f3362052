"""Runs of plain QoS 1 PUBLISHes (`broker.protocol.acked_runs`) handled as a whole.

Why here and not in `handle_publish`: `handle_publish` and `Broker.publish` take each message
through checks that, for a run of frames to one topic from one client, come out the same for
every message: the topic name and limits, the ACL, the publish hooks, who matches, the other
nodes. `handle_acked_run` takes them once per run and then does per message only what is per
message: a `Message` for each QoS 1 delivery (its packet id and inflight slot are the
session's business, as ever), the run's bytes re-framed once for QoS 0 subscribers
(`AckedRun.as_qos0`, passed on as a QoS 0 run is), and the PUBACKs of the whole run in one
write, after every message of the run was routed (MQTT-4.3.2-2: ownership is taken before
the PUBACK). When any check could come out differently per message, or a message needs
something only the packet path does, it answers False having done nothing, and the channel
hands the frames to `handle_publish` one by one: behaviour never depends on this module.

Declined (packet path): `durable_acks` (each ack waits for its commit), a `publish_limit`, a
topic that is invalid, over a limit or starts with `$`, a Maximum QoS of 0, publish hooks, a
shared group (here or in the cluster), a subscription identifier, another node the topic routes
to, the publisher among the subscribers (its PUBACK goes before its own copy,
`Connection.hold_output`), an offline QoS 0 subscriber or one the QoS 0 bytes do not fit
(`ClientPort.passes`), and a PUBACK larger than the publisher's Maximum Packet Size.
"""

from __future__ import annotations

from broker.core.broker import Broker
from broker.core.client_port import ClientPort
from broker.core.connection import Connection
from broker.core.handle_publish import run_declines_topic
from broker.core.message import Message
from broker.core.session import Session
from broker.protocol.acked_runs import AckedRun
from broker.protocol.constants import MQTT_5, PacketType, ReasonCode
from broker.protocol.packets import PubAck

#: QoS 0 subscribers (given the bytes) and QoS 1 subscribers (given a Message each).
Targets = tuple[list[tuple[Session, ClientPort]], list[Session]]


def handle_acked_run(channel: Connection, run: AckedRun) -> bool:
    """Route the messages of `run` and acknowledge them, as `handle_publish` would each of
    them; False (nothing done) when that needs the packets (module docstring)."""
    broker = channel.broker
    settings = broker.settings
    topic = run.topic
    gate = broker.commit_gate
    if (
        settings.max_qos_allowed < 1
        or (gate is not None and gate.client_acks)  # durable_acks: acks wait per message
        or run_declines_topic(settings, topic)
    ):
        return False
    session = channel.session
    info = channel.info
    assert session is not None and info is not None
    is_v5 = channel.version == MQTT_5
    if channel.max_packet_out < (5 if is_v5 else 4):  # a 0x10 PUBACK of 5.0 is 5 bytes
        return False
    publisher = session.client_id
    targets = plan_acked_run(broker, topic, publisher)
    if targets is None:
        return False
    qos0, qos1 = targets
    qos0_run = None
    if qos0:
        qos0_run = run.as_qos0()
        for _, port in qos0:
            if not port.passes(qos0_run):
                return False
    count = run.count
    counters = broker.metrics.counters
    counters["messages/received"] += count
    counters["messages/qos1/received"] += count
    channel.recv_msg += count
    if not broker.hooks.run_authorize(info, "publish", topic):
        counters["messages/dropped"] += count
        if is_v5:
            reason = channel.reason(f"not authorized to publish to {topic!r}")
            for packet_id in run.packet_ids():
                channel.send(PubAck(packet_id, ReasonCode.NOT_AUTHORIZED, reason))
        else:
            channel.send_acks(run.acks(), count, PacketType.PUBACK)
        return True
    if qos1:
        _deliver_qos1(broker, run, qos1, publisher)
    if qos0_run is not None:
        for target, port in qos0:
            sent = port.send_run(qos0_run)
            target.count_passed(sent, count - sent)
    code = 0
    if not qos0 and not qos1:
        counters["messages/dropped"] += count  # as `Broker.publish`: nobody matched
        code = ReasonCode.NO_MATCHING_SUBSCRIBERS if is_v5 else 0
    channel.send_acks(run.acks(code), count, PacketType.PUBACK)
    return True


def _deliver_qos1(broker: Broker, run: AckedRun, targets: list[Session], publisher: str) -> None:
    """Give each message of `run` to each of `targets` at QoS 1, as `Broker.publish` would,
    one target at a time (sessions share nothing but counters). A target whose queue is full
    stays full for the rest of the run (nothing it acknowledges is read meanwhile): the rest
    is dropped and counted at once (`Session.refuses`), without making their messages."""
    now = broker.clock()
    node = broker.node_name
    topic = run.topic
    count = run.count
    messages: list[Message | None] = [None] * count
    for target in targets:
        for i in range(count):
            if target.refuses(now):
                target.count_refused(count - i)
                break
            message = messages[i]
            if message is None:
                payload = run.payload(i)
                message = messages[i] = Message(topic, payload, 1, False, {}, publisher, now, node)
            target.deliver(message, 1, False, None, now)


def plan_acked_run(broker: Broker, topic: str, publisher: str) -> Targets | None:
    """Who `Broker.publish` would give each QoS 1 message to `topic` from client `publisher`
    to, at which QoS, each once (MQTT-3.3.5-1: the highest QoS of its matching
    subscriptions); None when the run must take the packet path (module docstring)."""
    dispatcher = broker.shared_dispatcher
    if broker.hooks.message_publish or (dispatcher is not None and dispatcher.has_groups(topic)):
        return None
    hooks = broker.forward_hooks
    if hooks:
        forwarder = broker.run_forwarder
        if forwarder is None or len(hooks) != 1:
            return None
        nodes = forwarder.run_nodes(topic)
        if nodes is None or nodes:
            return None
    normal, groups = broker.router.match_all(topic)
    if groups:
        return None
    granted: dict[str, int] = {}
    for client_id, sub in normal:
        if client_id == publisher:
            if sub.no_local:
                continue  # MQTT-3.8.3-3
            return None  # its PUBACK goes before its own copy: the packet path holds it
        if sub.identifier is not None:
            return None
        qos = 1 if sub.qos else 0
        if granted.get(client_id, -1) < qos:
            granted[client_id] = qos
    sessions = broker.sessions
    connected = broker.connected
    qos0: list[tuple[Session, ClientPort]] = []
    qos1: list[Session] = []
    for client_id, qos in granted.items():
        session = sessions.get(client_id)
        if session is None:
            continue
        if qos:
            qos1.append(session)
            continue
        port = connected.get(client_id)
        if port is None or session.outlet is not port:
            return None
        qos0.append((session, port))
    return qos0, qos1
