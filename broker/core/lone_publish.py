"""A read that is one plain QoS 0 PUBLISH, delivered in one frame of Python (the low-rate path).

Why: at 1,000 msg/s every message arrives alone, and its latency is the whole path through the
core, cold (README "Latency of a lone message"). The general way for such a read is
`Decoder.feed_runs` (`lone_frame`: a `PublishRun` of one), `Channel._dispatch`,
`handle_publish_run`, `run_declines_topic`, `plan_run`, `local_targets`, `publish_run`,
`_deliver`, `Connection.send_run` and `_count_qos0`: about 20 Python calls for what is one
topic lookup and one write. `publish_lone` takes the same decisions in one function, for the
common case only: the publisher's decoder holds nothing, the read is exactly one frame that
`lone_frame` accepts, no rule of `handle_publish_run`'s checks or `plan_run`'s would decline a
run of it, no other node routes its topic, and each subscriber gets these very bytes
(`Connection.passes`, connected, below `max_outgoing_buffer`). Anything else returns False
before any side effect, and the read takes the general way, which decides everything again.

Counted as the general way counts, after the writes (the counters are not on a message's way)
unless an ACL hook is asked, which sees them as the general way leaves them.
`tests/unit/test_lone_publish.py` runs the same scenarios with and without this function and
compares every client's bytes and every counter.
"""

from __future__ import annotations

from broker.core.connection import Connection
from broker.core.session import Session
from broker.core.states import CONNECTED
from broker.protocol.constants import MQTT_5
from broker.protocol.runs import PLAIN_QOS0

__all__ = ["publish_lone"]


def publish_lone(channel: Connection, data: bytes) -> bool:
    """Deliver `data`, a whole read of a CONNECTED channel, when it is one plain QoS 0
    PUBLISH of the common case (module docstring), the read counted too; False, with nothing
    done or counted, otherwise."""
    # The frame: the checks of `lone_frame` (and so of `scan_frames`).
    n = len(data)
    if n < 4 or data[0] != PLAIN_QOS0:
        return False
    decoder = channel.decoder
    if decoder._buf is not None or n > decoder.max_packet_size:
        return False
    v5 = decoder.version == MQTT_5
    known = channel.lone_head
    if known is not None and known[0] == n and data.startswith(known[1]):
        topic = known[2]  # the same head as the last one: the same checks passed
    else:
        length = data[1]
        head = 2
        if length > 0x7F:
            second = data[2]
            if second == 0 or second > 0x7F:  # non-minimal (MQTT-1.5.5-1) or 16 KiB and over
                return False
            length = (length & 0x7F) | (second << 7)
            head = 3
        if head + length != n:
            return False
        topic_end = head + 2 + ((data[head] << 8) | data[head + 1])
        if v5:
            if topic_end >= n or data[topic_end] != 0:
                return False
        elif topic_end > n:
            return False
        try:
            topic = str(data[head + 2 : topic_end], "utf-8")
        except UnicodeDecodeError:
            return False
        # The topic's own checks of `run_declines_topic`.
        if not topic or topic[0] == "$" or "\x00" in topic or "+" in topic or "#" in topic:
            return False
        channel.lone_head = (n, data[: topic_end + 1 if v5 else topic_end], topic)
    # The checks of `run_declines_topic` (and `topic_limit`) that depend on the settings.
    broker = channel.broker
    settings = broker.settings
    if settings.publish_rate is not None:
        return False
    levels = settings.max_topic_levels
    if levels and topic.count("/") >= levels:
        return False
    limit = settings.max_topic_length
    if limit and len(topic) * 4 > limit and len(topic.encode("utf-8")) > limit:
        return False
    # The routing: `plan_run` on a node with no other node to forward to, and `local_targets`.
    if broker.hooks.message_publish or broker.forward_hooks:
        return False
    dispatcher = broker.shared_dispatcher
    if dispatcher is not None and dispatcher.has_groups(topic):
        return False
    normal, groups = broker.router.match_all(topic)
    if groups and dispatcher is None:
        return False
    session = channel.session
    info = channel.info
    assert session is not None and info is not None
    publisher = session.client_id
    sessions = broker.sessions
    connected = broker.connected
    cap = settings.max_outgoing_buffer
    targets: list[tuple[Session, Connection]] = []
    for client_id, sub in normal:
        if sub.no_local and client_id == publisher:
            continue  # MQTT-3.8.3-3
        if sub.identifier is not None:
            return False
        target = sessions.get(client_id)
        if target is None:
            continue
        port = connected.get(client_id)
        if (
            not isinstance(port, Connection)
            or target.outlet is not port
            or port.state != CONNECTED
            or (port.version == MQTT_5) is not v5  # another family: other bytes
            or port.out_aliases is not None
            or port.held_out is not None
            or n > port.max_packet_out
            or port.link.buffered() > cap  # (`send_run` would drop it)
        ):
            return False
        targets.append((target, port))
    if len(targets) > 1 and len(normal) > 1:  # one copy per client (MQTT-3.3.5-1)
        targets = list({id(target): (target, port) for target, port in targets}.values())
    # Decided: what the general way does, counted as it counts; the writes come first (the
    # counters are not on the message's way), unless a hook is asked, which may look at them.
    hooks = broker.hooks
    asked = bool(hooks.authorize)
    if asked:
        _count_received(channel, n)
    if not asked or hooks.run_authorize(info, "publish", topic):
        for _, port in targets:
            port.link.write(data)
        allowed = True
    else:
        allowed = False
    counters = broker.metrics.counters
    if not asked:  # `_count_received`, written out (one call less per message)
        channel.recv_oct += n
        channel.recv_cnt += 1
        counters["bytes/received"] += n
        channel.last_received = broker.clock()
        counters["messages/received"] += 1
        counters["messages/qos0/received"] += 1
        channel.recv_msg += 1
    if allowed and targets:
        for target, port in targets:
            port.send_oct += n
            port.send_cnt += 1
            port.send_pkt += 1
            port.send_msg += 1
            target.deliver_msg += 1
        sent = len(targets)
        counters["bytes/sent"] += n * sent
        counters["packets/sent"] += sent
        counters["packets/publish/sent"] += sent
        counters["messages/sent"] += sent
        counters["messages/qos0/sent"] += sent
    else:  # denied, or nobody to send it to
        counters["messages/dropped"] += 1
    channel.recv_pkt += 1
    counters["packets/received"] += 1
    counters["packets/publish/received"] += 1
    return True


def _count_received(channel: Connection, n: int) -> None:
    """The read (`Channel.data_received`) and the message (`handle_publish_run`), counted."""
    broker = channel.broker
    counters = broker.metrics.counters
    channel.recv_oct += n
    channel.recv_cnt += 1
    counters["bytes/received"] += n
    channel.last_received = broker.clock()
    counters["messages/received"] += 1
    counters["messages/qos0/received"] += 1
    channel.recv_msg += 1
